//! The rollout engine inside the server: each step's events are applied to the engine in
//! place, then the events (the engine's log row), the changes they produced and the events' own
//! mutation are committed in one transaction. The engine refuses an event before changing
//! anything, so a step of one event that is refused leaves memory as it was; when a later event
//! of a step is refused, or the commit fails, memory is restored from the store (newest
//! snapshot plus the log after it). A crash at any instant leaves the store before or after the
//! whole step. Every [`SNAPSHOT_EVERY_STEPS`] steps (or [`SNAPSHOT_EVERY_LOG_BYTES`] of log) a
//! copy of the engine is serialized and saved as a snapshot on a thread of its own, off the
//! request path; at shutdown one more is saved.
//!
//! Desired state is level-triggered: an agent asks for everything its node should run, with
//! the engine's revision as a sequence number that only grows, and may wait for a newer one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
/// A snapshot of the engine is saved after at most this many logged steps...
pub const SNAPSHOT_EVERY_STEPS: u64 = 10_000;
/// ...or this many bytes of logged events, whichever comes first.
pub const SNAPSHOT_EVERY_LOG_BYTES: u64 = 64 * 1024 * 1024;

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
    /// Memory may be ahead of the store (a restore failed): restore before the next step.
    stale: bool,
    /// Steps and log bytes since the last snapshot was taken.
    steps_unsnapshotted: u64,
    log_bytes_unsnapshotted: u64,
}

impl Current {
    fn new(engine: Engine, revision: u64) -> Self {
        Self {
            engine,
            revision,
            stale: false,
            steps_unsnapshotted: 0,
            log_bytes_unsnapshotted: 0,
        }
    }

    fn snapshot_due(&self) -> bool {
        self.steps_unsnapshotted >= SNAPSHOT_EVERY_STEPS
            || self.log_bytes_unsnapshotted >= SNAPSHOT_EVERY_LOG_BYTES
    }
}

/// The engine, its persisted revision, and a channel that announces each new revision.
#[derive(Debug)]
pub struct EngineHost {
    current: Arc<Mutex<Current>>,
    revisions: Arc<watch::Sender<u64>>,
    /// Set once when the server shuts down: long polls end at once instead of waiting.
    closing: watch::Sender<bool>,
    /// A snapshot is being written (at most one at a time).
    snapshotting: Arc<AtomicBool>,
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
    /// Requests the report batcher grouped into one step (see [`crate::batcher`]): the nodes
    /// they registered, in order, and their reports' node rows (as [`Cause::NodeReports`]).
    Grouped {
        nodes: Vec<(NodeId, Labels)>,
        rows: Vec<NodeRow>,
    },
    /// A version was pushed (and its rollout requested); its changes are recorded first.
    Push {
        version: Box<VersionRow>,
        changes: Vec<ChangeRow>,
    },
}

impl EngineHost {
    /// Restores the engine from the store: its newest snapshot and the logged steps after it
    /// (a new engine when none was saved).
    pub fn load(store: &Store) -> Result<Self, StepError> {
        let (engine, revision) = store.load_engine()?;
        let (revisions, _) = watch::channel(revision);
        let (closing, _) = watch::channel(false);
        Ok(Self {
            current: Arc::new(Mutex::new(Current::new(engine, revision))),
            revisions: Arc::new(revisions),
            closing,
            snapshotting: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Saves a snapshot of the engine now, on the calling task (clean shutdown: the next start
    /// replays nothing).
    pub async fn snapshot_now(&self, store: &Arc<Store>) -> Result<(), StepError> {
        let current = Arc::clone(&self.current).lock_owned().await;
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || {
            if current.stale || current.revision == 0 {
                return Ok(());
            }
            let text = serde_json::to_string(&current.engine)
                .map_err(|e| StepError::Serialize(e.to_string()))?;
            store.write_engine_snapshot(current.revision, &text)?;
            Ok(())
        })
        .await
        .map_err(|e| StepError::Task(e.to_string()))?
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
        self.apply_many_then(store, now_ms, events, cause, |_, _, _| ())
            .await
            .map(|(actions, ())| actions)
    }

    /// [`EngineHost::apply_many`], and then `then` on the engine, the store and the step's
    /// actions, still under the engine's lock, before the step is announced to the long
    /// polls: a request that changed what nodes run (a push) reads what it answers without
    /// waiting behind the fan-out it started. The announcement is made when this returns, or,
    /// if the caller went away meanwhile, when the step ends.
    pub async fn apply_many_then<T: Send + 'static>(
        &self,
        store: &Arc<Store>,
        now_ms: TimeMs,
        events: Vec<(Event, Option<ChangeRow>)>,
        cause: Cause,
        then: impl FnOnce(&Engine, &Store, &[Action]) -> T + Send + 'static,
    ) -> Result<(Vec<Action>, T), StepError> {
        let span = tracing::info_span!("engine_step", events = events.len(), now_ms);
        let mut current = Arc::clone(&self.current).lock_owned().await;
        let stepping = Arc::clone(store);
        let revisions = Arc::clone(&self.revisions);
        let snapshotting = Arc::clone(&self.snapshotting);
        let stepped = tokio::task::spawn_blocking(move || {
            let _step = span.entered();
            let store = stepping;
            let before = current.revision;
            if current.stale && !restore(&mut current, &store) {
                return Err(StepError::Store(StoreError::Corrupt {
                    what: "engine state".to_owned(),
                    reason: "memory could not be restored from the store".to_owned(),
                }));
            }
            let first =
                step_and_commit(&mut current, &store, now_ms, events.clone(), cause.clone());
            let result = match first {
                // Memory was behind the store (a step's outcome was lost between commit and
                // memory): now re-read, so the same events are applied to what is stored.
                Err(StepError::Store(StoreError::Conflict { .. })) if !current.stale => {
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
                    let announcement = Announcement {
                        revisions: Arc::clone(&revisions),
                        revision: actions.iter().any(changes_documents).then_some(revision),
                    };
                    let read = then(&current.engine, store.as_ref(), actions.as_slice());
                    if current.snapshot_due() {
                        snapshot_in_background(&mut current, &store, &snapshotting);
                    }
                    Ok((actions, read, announcement))
                }
                Err(error) => {
                    // The engine refusing an event is the caller's answer (4xx); anything
                    // else is the server's fault.
                    if matches!(error, StepError::Engine(_)) {
                        tracing::debug!(%error, "engine refused the step");
                    } else {
                        tracing::error!(%error, "engine step not committed; memory follows the store");
                    }
                    restore(&mut current, &store);
                    if current.revision != before {
                        announce(&revisions, current.revision);
                    }
                    Err(error)
                }
            }
        })
        .await;
        match stepped {
            // The announcement is made here, on this task (or, when the caller went away, where
            // the step's result is dropped): the long polls it wakes queue behind the caller.
            Ok(result) => result.map(|(actions, read, _announcement)| (actions, read)),
            Err(error) => {
                // The task died (with the lock, which is free again) at an unknown point, maybe
                // with the engine half stepped: memory is restored from the store.
                let mut current = Arc::clone(&self.current).lock_owned().await;
                let store = Arc::clone(store);
                let resynced = tokio::task::spawn_blocking(move || {
                    current.stale = true;
                    let changed = restore(&mut current, &store);
                    changed.then_some(current.revision)
                })
                .await;
                if let Ok(Some(revision)) = resynced {
                    announce(&self.revisions, revision);
                }
                Err(StepError::Task(error.to_string()))
            }
        }
    }

    /// Ends every long poll now and every later one at once (the server is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once the server is shutting down (at once if it is).
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|closed| *closed).await;
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

/// A committed revision that changed documents, announced to the long polls when dropped.
#[derive(Debug)]
struct Announcement {
    revisions: Arc<watch::Sender<u64>>,
    revision: Option<u64>,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if let Some(revision) = self.revision.take() {
            announce(&self.revisions, revision);
        }
    }
}

/// Announces `revision` unless a later one was: steps announce after they release the
/// engine's lock, so two of them may announce out of order, and the announced revision only
/// grows.
fn announce(revisions: &watch::Sender<u64>, revision: u64) {
    revisions.send_if_modified(|announced| {
        let later = revision > *announced;
        if later {
            *announced = revision;
        }
        later
    });
}

/// One step on the engine in place, committed with the step's events as its log row. Memory
/// and store agree when it returns: a refused first event changed nothing; a refused later
/// event or a failed commit restores memory from the store (or marks it stale when even that
/// fails). Returns the actions and the new revision.
fn step_and_commit(
    current: &mut Current,
    store: &Store,
    now_ms: TimeMs,
    events: Vec<(Event, Option<ChangeRow>)>,
    cause: Cause,
) -> Result<(Vec<Action>, u64), StepError> {
    let logged: Vec<&Event> = events.iter().map(|(event, _)| event).collect();
    let log = serde_json::to_string(&logged).map_err(|e| StepError::Serialize(e.to_string()))?;
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
    for (index, (event, change)) in events.into_iter().enumerate() {
        let produced = match current.engine.step(now_ms, &event) {
            Ok(produced) => produced,
            Err(error) => {
                if index > 0 {
                    // Earlier events of the step changed memory: back to what is stored.
                    current.stale = true;
                    restore(current, store);
                }
                return Err(error.into());
            }
        };
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
                .filter_map(|action| change_of(now_ms, action, &current.engine)),
        );
        actions.extend(produced);
    }
    let (nodes, version, staleness) = match &cause {
        Cause::Node { id, labels } => (vec![(id.as_str(), labels)], None, &[][..]),
        Cause::Grouped { nodes, rows } => (
            nodes
                .iter()
                .map(|(id, labels)| (id.as_str(), labels))
                .collect(),
            None,
            rows.as_slice(),
        ),
        Cause::Push { version, .. } => (Vec::new(), Some(version.as_new()), &[][..]),
        Cause::NodeReports(rows) => (Vec::new(), None, rows.as_slice()),
        Cause::Nothing => (Vec::new(), None, &[][..]),
    };
    let committed = store.commit_step_with(
        &EngineStep {
            expected_revision: current.revision,
            now_ms,
            events: &log,
            changes: &changes,
            nodes: &nodes,
            version: version.as_ref(),
        },
        staleness,
        &applied,
        &removals,
    );
    match committed {
        Ok(revision) => {
            current.revision = revision;
            current.steps_unsnapshotted = current.steps_unsnapshotted.saturating_add(1);
            current.log_bytes_unsnapshotted = current
                .log_bytes_unsnapshotted
                .saturating_add(u64::try_from(log.len()).unwrap_or(u64::MAX));
            Ok((actions, revision))
        }
        Err(error) => {
            // Memory holds the step; the store may or may not (an unknown outcome).
            current.stale = true;
            restore(current, store);
            Err(error.into())
        }
    }
}

/// Takes a copy of the engine and saves it as a snapshot on a thread of its own, unless one
/// is being saved already (then the next step tries again).
fn snapshot_in_background(current: &mut Current, store: &Arc<Store>, busy: &Arc<AtomicBool>) {
    if busy.swap(true, Ordering::AcqRel) {
        return;
    }
    let copy = current.engine.clone();
    let revision = current.revision;
    let store = Arc::clone(store);
    let done = Arc::clone(busy);
    let spawned = std::thread::Builder::new()
        .name("engine-snapshot".to_owned())
        .spawn(move || {
            let started = std::time::Instant::now();
            let saved = serde_json::to_string(&copy)
                .map_err(|e| StepError::Serialize(e.to_string()))
                .and_then(|text| {
                    store
                        .write_engine_snapshot(revision, &text)
                        .map(|()| text.len())
                        .map_err(StepError::from)
                });
            match saved {
                Ok(bytes) => tracing::info!(
                    revision,
                    bytes,
                    took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "engine snapshot saved"
                ),
                // The log still holds every step: the next snapshot covers them.
                Err(error) => tracing::warn!(revision, %error, "engine snapshot not saved"),
            }
            done.store(false, Ordering::Release);
        });
    match spawned {
        Ok(_) => {
            current.steps_unsnapshotted = 0;
            current.log_bytes_unsnapshotted = 0;
        }
        Err(error) => {
            tracing::warn!(%error, "engine snapshot thread not started");
            busy.store(false, Ordering::Release);
        }
    }
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

/// Makes memory the stored engine again (newest snapshot plus the log after it) when it is
/// marked stale; it stays marked when the store cannot be read. Returns whether the revision
/// in memory changed.
fn restore(current: &mut Current, store: &Store) -> bool {
    if !current.stale {
        return false;
    }
    match store.load_engine() {
        Ok((engine, revision)) => {
            let changed = revision != current.revision;
            current.engine = engine;
            current.revision = revision;
            current.stale = false;
            changed
        }
        Err(error) => {
            tracing::error!(%error, "engine not restored from the store; retried at the next step");
            false
        }
    }
}

/// Which nodes a rollout's change concerns: a stage's change, the nodes its selector admits;
/// a rollback or abort, those of every stage entered so far (every node the version may have
/// reached); any other change of the rollout, those of all its stages. None: every node.
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
