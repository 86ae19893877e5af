//! The rollout engine inside the server: each event is applied to a copy of the engine, the
//! copy's state and the changes it produced are committed in one transaction with the event's
//! own mutation, and only then does the copy replace the engine in memory. A crash at any
//! instant leaves the store before or after the whole step.
//!
//! Desired state is level-triggered: an agent asks for everything its node should run, with
//! the engine's revision as a sequence number that only grows, and may wait for a newer one.

use std::sync::Arc;
use std::time::Duration;

use failsmall_core::domain::{Labels, NodeId, TimeMs, UnitName};
use failsmall_core::engine::{Action, ChangeKind, ChangelogEntry, Engine, EngineError, Event};
use tokio::sync::{Mutex, watch};

use crate::store::{
    AppliedRow, ChangeRow, Concerns, EngineStep, NodeRow, RemovalRow, Store, StoreError, VersionRow,
};

/// The longest an agent may wait for a newer desired state in one request.
pub const MAX_WATCH_MS: u64 = 30_000;
/// The ticker looks at the engine's next deadline at least this often.
pub const TICK_CHECK_MS: u64 = 1_000;
/// Least time between two ticks, so a deadline that stays due cannot spin the ticker.
pub const TICK_PAUSE_MS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("engine state does not serialize: {0}")]
    Serialize(String),
    #[error("store task failed: {0}")]
    Task(String),
}

#[derive(Debug)]
struct Current {
    engine: Engine,
    revision: u64,
}

/// The engine, its persisted revision, and a channel that announces each new revision.
#[derive(Debug)]
pub struct EngineHost {
    current: Arc<Mutex<Current>>,
    revisions: Arc<watch::Sender<u64>>,
    /// Set once when the server shuts down: long polls end at once instead of waiting.
    closing: watch::Sender<bool>,
}

/// The mutation that caused an event, committed with the engine's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Nothing besides the step (commands, reports, ticks).
    Nothing,
    /// Reports of a batch that are not engine events (staleness, removals done, transport
    /// faults, refused documents, repairs): their node rows and changelog rows are written with
    /// the step of the batch's other reports (none: an empty step), so a batch is stored whole.
    NodeReports(Vec<NodeRow>),
    /// A node registered or changed its labels.
    Node { id: NodeId, labels: Labels },
    /// A version was pushed (and its rollout requested); its changes are recorded first.
    Push {
        version: Box<VersionRow>,
        changes: Vec<ChangeRow>,
    },
}

impl EngineHost {
    /// Restores the engine from the store (a new engine when none was saved).
    pub fn load(store: &Store) -> Result<Self, StepError> {
        let (engine, revision) = match store.engine_state()? {
            Some((text, revision)) => {
                let engine = serde_json::from_str(&text).map_err(|e| {
                    StepError::Store(StoreError::Corrupt {
                        what: "engine state".to_owned(),
                        reason: e.to_string(),
                    })
                })?;
                (engine, revision)
            }
            None => (Engine::new(), 0),
        };
        let (revisions, _) = watch::channel(revision);
        let (closing, _) = watch::channel(false);
        Ok(Self {
            current: Arc::new(Mutex::new(Current { engine, revision })),
            revisions: Arc::new(revisions),
            closing,
        })
    }

    /// Applies `event` at `now_ms`; on success it is durable and visible. `change` (the cause,
    /// as people read it) is recorded with the changes the engine produced.
    pub async fn apply(
        &self,
        store: &Arc<Store>,
        now_ms: TimeMs,
        event: Event,
        cause: Cause,
        change: Option<ChangeRow>,
    ) -> Result<Vec<Action>, StepError> {
        self.apply_many(store, now_ms, vec![(event, change)], cause)
            .await
    }

    /// Applies `events` in order at `now_ms` as one step, committed in one transaction: all of
    /// them, or (if the engine refuses any) none. Each event's change is recorded before the
    /// changes the engine produced for it.
    ///
    /// The step runs to its end on a blocking thread that owns the engine's lock, so a caller
    /// that goes away (an HTTP client that disconnects) cannot leave memory behind a commit.
    pub async fn apply_many(
        &self,
        store: &Arc<Store>,
        now_ms: TimeMs,
        events: Vec<(Event, Option<ChangeRow>)>,
        cause: Cause,
    ) -> Result<Vec<Action>, StepError> {
        let span = tracing::info_span!("engine_step", events = events.len(), now_ms);
        let mut current = Arc::clone(&self.current).lock_owned().await;
        let stepping = Arc::clone(store);
        let revisions = Arc::clone(&self.revisions);
        let stepped = tokio::task::spawn_blocking(move || {
            let _step = span.entered();
            let store = stepping;
            let first =
                step_and_commit(&mut current, &store, now_ms, events.clone(), cause.clone());
            let result = match first {
                // Memory was behind the store (a step's outcome was lost between commit and
                // memory): now re-read, so the same events are applied to what is stored.
                Err(StepError::Store(StoreError::Conflict { .. })) => {
                    resync(&mut current, &store);
                    step_and_commit(&mut current, &store, now_ms, events, cause)
                }
                other => other,
            };
            match result {
                Ok((actions, revision)) => {
                    // Watchers wake only when a node's document changed: what it should run,
                    // or a rollout that judged a version ended (its `trial` goes, a `stable`
                    // may come). A step that only merged health moves the sequence number
                    // without waking anyone.
                    if actions.iter().any(changes_documents) {
                        revisions.send_replace(revision);
                    }
                    Ok(actions)
                }
                Err(error) => {
                    // The engine refusing an event is the caller's answer (4xx); anything
                    // else is the server's fault.
                    if matches!(error, StepError::Engine(_)) {
                        tracing::debug!(%error, "engine refused the step");
                    } else {
                        tracing::error!(%error, "engine step not committed; memory follows the store");
                    }
                    if resync(&mut current, &store) {
                        revisions.send_replace(current.revision);
                    }
                    Err(error)
                }
            }
        })
        .await;
        match stepped {
            Ok(result) => result,
            Err(error) => {
                // The task died (with the lock, which is free again) at an unknown point.
                let mut current = Arc::clone(&self.current).lock_owned().await;
                let store = Arc::clone(store);
                let resynced = tokio::task::spawn_blocking(move || {
                    let changed = resync(&mut current, &store);
                    changed.then_some(current.revision)
                })
                .await;
                if let Ok(Some(revision)) = resynced {
                    self.revisions.send_replace(revision);
                }
                Err(StepError::Task(error.to_string()))
            }
        }
    }

    /// Ends every long poll now and every later one at once (the server is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Reads the engine and its revision.
    pub async fn read<T>(&self, f: impl FnOnce(&Engine, u64) -> T) -> T {
        let current = self.current.lock().await;
        f(&current.engine, current.revision)
    }

    /// Waits until the revision is above `after`, at most `wait`, and not past shutdown;
    /// returns the revision then.
    pub async fn wait_past(&self, after: u64, wait: Duration) -> u64 {
        let mut receiver = self.revisions.subscribe();
        let mut closing = self.closing.subscribe();
        let reached = async {
            loop {
                if *receiver.borrow_and_update() > after {
                    return;
                }
                if receiver.changed().await.is_err() {
                    return;
                }
            }
        };
        let closed = closing.wait_for(|closed| *closed);
        tokio::select! {
            _ = tokio::time::timeout(wait, reached) => {}
            _ = closed => {}
        }
        *self.revisions.borrow()
    }

    /// Sends `Tick` whenever the engine's next deadline has passed, until the task is dropped.
    pub async fn tick_forever(self: Arc<Self>, store: Arc<Store>, clock: fn() -> TimeMs) {
        loop {
            let now = clock();
            let deadline = self.read(|engine, _| engine.next_deadline_ms()).await;
            match deadline {
                Some(deadline) if deadline <= now => {
                    let ticked = self
                        .apply(&store, now, Event::Tick, Cause::Nothing, None)
                        .await;
                    // After a failure the engine is unchanged; try again at the next check.
                    let pause_ms = if ticked.is_ok() {
                        TICK_PAUSE_MS
                    } else {
                        TICK_CHECK_MS
                    };
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                }
                Some(deadline) => {
                    let wait_ms = deadline.saturating_sub(now).min(TICK_CHECK_MS);
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                }
                None => tokio::time::sleep(Duration::from_millis(TICK_CHECK_MS)).await,
            }
        }
    }
}

/// Which nodes a rollout's change concerns: a stage's change, the nodes its selector admits;
/// a rollback or abort, those of every stage entered so far (every node the version may have
/// reached); any other change of the rollout, those of all its stages. None: every node.
/// One step on a copy of the engine, committed; the copy replaces the engine only after the
/// commit. Returns the actions and the new revision.
fn step_and_commit(
    current: &mut Current,
    store: &Store,
    now_ms: TimeMs,
    events: Vec<(Event, Option<ChangeRow>)>,
    cause: Cause,
) -> Result<(Vec<Action>, u64), StepError> {
    let mut next = current.engine.clone();
    let mut actions = Vec::new();
    let (cause, mut changes) = match cause {
        Cause::Push { version, changes } => (
            Cause::Push {
                version,
                changes: Vec::new(),
            },
            changes,
        ),
        other => (other, Vec::new()),
    };
    let mut applied = Vec::new();
    let mut removals = Vec::new();
    for (event, change) in events {
        let produced = next.step(now_ms, &event)?;
        for action in &produced {
            if let Action::SetDesired {
                unit,
                version: None,
                nodes,
            } = action
            {
                removals.extend(nodes.iter().map(|node| RemovalRow {
                    node: node.to_string(),
                    unit: unit.to_string(),
                    at_ms: now_ms,
                }));
            }
        }
        if let Event::Applied {
            node,
            unit,
            version,
        } = &event
        {
            applied.push(AppliedRow {
                node: node.to_string(),
                unit: unit.to_string(),
                version: version.to_string(),
                at_ms: now_ms,
            });
        }
        changes.extend(change);
        changes.extend(
            produced
                .iter()
                .filter_map(|action| change_of(now_ms, action, &next)),
        );
        actions.extend(produced);
    }
    let state = serde_json::to_string(&next).map_err(|e| StepError::Serialize(e.to_string()))?;
    let (node, version, staleness) = match &cause {
        Cause::Node { id, labels } => (Some((id.as_str(), labels)), None, &[][..]),
        Cause::Push { version, .. } => (None, Some(version.as_new()), &[][..]),
        Cause::NodeReports(rows) => (None, None, rows.as_slice()),
        Cause::Nothing => (None, None, &[][..]),
    };
    let revision = store.commit_step_with(
        &EngineStep {
            expected_revision: current.revision,
            state: &state,
            changes: &changes,
            node,
            version: version.as_ref(),
        },
        staleness,
        &applied,
        &removals,
    )?;
    current.engine = next;
    current.revision = revision;
    Ok((actions, revision))
}

/// Whether `action` changes some node's desired-state document.
fn changes_documents(action: &Action) -> bool {
    match action {
        Action::SetDesired { .. } => true,
        Action::Changelog(entry) => matches!(
            entry.kind,
            ChangeKind::Completed
                | ChangeKind::Aborted
                | ChangeKind::RolledBack
                | ChangeKind::Superseded
        ),
        Action::Notify { .. } => false,
    }
}

/// After a failed commit, makes memory agree with the store again (a commit whose outcome is
/// unknown would otherwise leave the engine behind the store, and every later step would be
/// refused as a conflict). Returns whether memory changed.
fn resync(current: &mut Current, store: &Store) -> bool {
    if let Ok(Some((text, revision))) = store.engine_state()
        && revision != current.revision
        && let Ok(engine) = serde_json::from_str::<Engine>(&text)
    {
        current.engine = engine;
        current.revision = revision;
        return true;
    }
    false
}

fn concerns_of(engine: &Engine, entry: &ChangelogEntry) -> Option<Concerns> {
    let (stages, current) = engine.rollout_stages(entry.rollout)?;
    let named = entry
        .stage
        .as_deref()
        .and_then(|name| stages.iter().position(|stage| stage.name == name));
    let reached = match entry.kind {
        ChangeKind::RolledBack | ChangeKind::Aborted => {
            let last = named.unwrap_or(current).max(current);
            stages.get(..=last).unwrap_or(stages)
        }
        _ => match named {
            Some(index) => stages.get(index..=index).unwrap_or(stages),
            None => stages,
        },
    };
    Concerns::of_selectors(reached.iter().map(|stage| stage.selector.clone()).collect())
}

/// The changelog row for an engine action (desired-state changes are read from the engine).
fn change_of(now_ms: TimeMs, action: &Action, engine: &Engine) -> Option<ChangeRow> {
    match action {
        Action::SetDesired { .. } => None,
        Action::Notify { rollout, message } => Some(ChangeRow {
            at_ms: now_ms,
            actor: failsmall_core::engine::ENGINE_ACTOR.to_owned(),
            kind: "notification".to_owned(),
            unit: None,
            version: None,
            reason: format!("{rollout}: {message}"),
            concerns: None,
            rollout: Some(rollout.0),
            stage: None,
        }),
        Action::Changelog(entry) => {
            let kind = serde_json::to_value(entry.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", entry.kind));
            let stage = entry
                .stage
                .as_deref()
                .map(|s| format!(" stage {s}:"))
                .unwrap_or_default();
            Some(ChangeRow {
                at_ms: entry.at_ms,
                actor: entry.actor.clone(),
                kind,
                unit: Some(entry.unit.to_string()),
                version: Some(entry.version.to_string()),
                reason: format!("{}{stage} {}", entry.rollout, entry.reason),
                concerns: concerns_of(engine, entry),
                rollout: Some(entry.rollout.0),
                stage: entry.stage.clone(),
            })
        }
    }
}

/// Units' names as the engine knows them, for the desired-state document.
pub fn unit_names(names: impl IntoIterator<Item = String>) -> Vec<UnitName> {
    names
        .into_iter()
        .filter_map(|name| UnitName::new(name).ok())
        .collect()
}
