//! Group commit of agents' reports and registrations: the requests that arrive while one
//! engine step commits are applied together in the next step, in one transaction, and every
//! request is answered after the commit that holds it.
//!
//! Why: a step's cost is mostly its transaction's commit (an fsync), whatever it holds; one
//! step per request would cap reports (and a fleet registering at once) at the fsync rate.
//! Grouping makes the step rate follow the commit time instead of the request rate: with
//! commits of 2 ms, ten thousand requests a second become some five hundred steps.
//! A registration's node row is written in its group's transaction before the group's
//! reports' node rows, so a node may register and report in the same step.
//!
//! Each request stays whole: its reports sit side by side in the group's step, and when the
//! engine refuses the group (one request's report names an unknown node, say), every request
//! of the group is applied again on its own, so each gets its own verdict and no request is
//! half applied. Durability is unchanged: nobody is answered before the commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use failsmall_core::domain::TimeMs;
use failsmall_core::engine::Event;
use tokio::sync::{mpsc, oneshot};

use crate::rollouts::{Cause, EngineHost, StepError};
use crate::store::{ChangeRow, Store};

/// Most requests waiting for a step; beyond it a request is refused at once (busy: retry).
pub const MAX_WAITING_REQUESTS: usize = 4096;
/// Most events in one grouped step; a request is never split, so a step may exceed it by one
/// request's reports.
pub const MAX_EVENTS_PER_STEP: usize = 10_000;

/// One request's reports, as engine events with their changelog rows.
pub type Events = Vec<(Event, Option<ChangeRow>)>;

/// Why a request was not applied.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the control plane has {MAX_WAITING_REQUESTS} report requests waiting; retry shortly")]
    Busy,
    #[error("the control plane is shutting down")]
    Closed,
    #[error(transparent)]
    Step(#[from] StepError),
}

struct Waiting {
    events: Events,
    cause: Cause,
    /// The number of actions of the step that applied the request.
    reply: oneshot::Sender<Result<usize, StepError>>,
}

/// The front of the group-commit queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct ReportBatcher {
    queue: mpsc::Sender<Waiting>,
    counts: Arc<BatcherCounts>,
}

/// What the batcher did, for `/metrics`.
#[derive(Debug, Default)]
pub struct BatcherCounts {
    /// Report requests answered (applied or refused).
    pub requests: AtomicU64,
    /// Engine steps the committer ran (a group, or one request on its own).
    pub steps: AtomicU64,
    /// Groups the engine refused whole, whose requests were then applied one by one.
    pub groups_split: AtomicU64,
    /// Requests refused at once because the queue was full.
    pub busy: AtomicU64,
}

impl BatcherCounts {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl ReportBatcher {
    /// Starts the committer task; it ends when every [`ReportBatcher`] is dropped.
    pub fn start(engine: Arc<EngineHost>, store: Arc<Store>, clock: fn() -> TimeMs) -> Self {
        let (queue, waiting) = mpsc::channel(MAX_WAITING_REQUESTS);
        let counts = Arc::new(BatcherCounts::default());
        tokio::spawn(commit_forever(
            engine,
            store,
            clock,
            waiting,
            Arc::clone(&counts),
        ));
        Self { queue, counts }
    }

    /// What the batcher did so far.
    pub fn counts(&self) -> &BatcherCounts {
        &self.counts
    }

    /// Applies `events` (and `cause`: nothing, or staleness rows) in the next step; returns
    /// the number of actions of that step once it is committed.
    pub async fn submit(&self, events: Events, cause: Cause) -> Result<usize, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Waiting {
                events,
                cause,
                reply,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => {
                    BatcherCounts::add(&self.counts.busy, 1);
                    SubmitError::Busy
                }
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        // The committer always answers; a dropped answer means it stopped.
        Ok(answer.await.map_err(|_| SubmitError::Closed)??)
    }
}

async fn commit_forever(
    engine: Arc<EngineHost>,
    store: Arc<Store>,
    clock: fn() -> TimeMs,
    mut waiting: mpsc::Receiver<Waiting>,
    counts: Arc<BatcherCounts>,
) {
    while let Some(first) = waiting.recv().await {
        let mut events = first.events.len();
        let mut group = vec![first];
        while events < MAX_EVENTS_PER_STEP {
            match waiting.try_recv() {
                Ok(next) => {
                    events = events.saturating_add(next.events.len());
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        commit_group(&engine, &store, clock(), group, &counts).await;
    }
}

/// Whether `cause` may share a step with other requests' (reports and registrations; a push
/// always has a step of its own).
fn groupable(cause: &Cause) -> bool {
    matches!(
        cause,
        Cause::Nothing | Cause::NodeReports(_) | Cause::Node { .. } | Cause::Grouped { .. }
    )
}

async fn commit_group(
    engine: &EngineHost,
    store: &Arc<Store>,
    now_ms: TimeMs,
    group: Vec<Waiting>,
    counts: &BatcherCounts,
) {
    BatcherCounts::add(&counts.requests, group.len() as u64);
    if group.len() == 1 || !group.iter().all(|w| groupable(&w.cause)) {
        BatcherCounts::add(&counts.steps, group.len() as u64);
        for one in group {
            commit_alone(engine, store, now_ms, one).await;
        }
        return;
    }
    BatcherCounts::add(&counts.steps, 1);
    let mut events = Vec::new();
    let mut nodes = Vec::new();
    let mut rows = Vec::new();
    for one in &group {
        events.extend(one.events.iter().cloned());
        match &one.cause {
            Cause::NodeReports(staleness) => rows.extend(staleness.iter().cloned()),
            Cause::Node { id, labels } => nodes.push((id.clone(), labels.clone())),
            Cause::Grouped {
                nodes: registered,
                rows: staleness,
            } => {
                nodes.extend(registered.iter().cloned());
                rows.extend(staleness.iter().cloned());
            }
            Cause::Nothing | Cause::Push { .. } => {}
        }
    }
    let cause = match (nodes.is_empty(), rows.is_empty()) {
        (true, true) => Cause::Nothing,
        (true, false) => Cause::NodeReports(rows),
        (false, _) => Cause::Grouped { nodes, rows },
    };
    match engine.apply_many(store, now_ms, events, cause).await {
        Ok(actions) => {
            for one in group {
                let _ = one.reply.send(Ok(actions.len()));
            }
        }
        // The group as a whole was refused (nothing of it is stored): each request on its
        // own, so each gets its own verdict.
        Err(_) => {
            BatcherCounts::add(&counts.groups_split, 1);
            BatcherCounts::add(&counts.steps, group.len() as u64);
            for one in group {
                commit_alone(engine, store, now_ms, one).await;
            }
        }
    }
}

async fn commit_alone(engine: &EngineHost, store: &Arc<Store>, now_ms: TimeMs, one: Waiting) {
    let result = engine
        .apply_many(store, now_ms, one.events, one.cause)
        .await
        .map(|actions| actions.len());
    let _ = one.reply.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsmall_core::domain::{Labels, NodeId, UnitName, VersionHash};
    use failsmall_core::health::HealthSample;
    use failsmall_core::plan::Plan;

    /// A store in a fresh temporary directory, removed when the guard is dropped.
    fn fresh_store(name: &str) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::Builder::new()
            .prefix(&format!("failsmall-batcher-{name}-"))
            .tempdir()
            .unwrap();
        let store = Arc::new(Store::open(&dir.path().join("failsmall.db")).unwrap());
        (dir, store)
    }

    fn clock() -> TimeMs {
        1_000_000
    }

    const NODES: usize = 200;

    /// An engine with `NODES` nodes that all run version `v` of unit `u` in a long bake.
    async fn fleet(store: &Arc<Store>) -> (Arc<EngineHost>, VersionHash) {
        let engine = Arc::new(EngineHost::load(store).unwrap());
        for i in 0..NODES {
            let id = NodeId::new(format!("n{i}")).unwrap();
            let labels: Labels = [("cohort".to_owned(), "free".to_owned())].into();
            let event = Event::NodeRegistered {
                node: id.clone(),
                labels: labels.clone(),
            };
            engine
                .apply(store, clock(), event, Cause::Node { id, labels }, None)
                .await
                .unwrap();
        }
        let version = VersionHash::of(b"v");
        let plan = Plan::parse(
            "long.yaml",
            "name: long\nstages:\n  - name: all\n    bake: 1h\n    min_requests: 1\n    gates: []\n",
        )
        .unwrap();
        let event = Event::RolloutRequested {
            unit: UnitName::new("u").unwrap(),
            version,
            plan,
            actor: "test".into(),
            reason: "test".into(),
            override_quarantine: false,
            override_freeze: false,
        };
        engine
            .apply(store, clock(), event, Cause::Nothing, None)
            .await
            .unwrap();
        let applied = (0..NODES)
            .map(|i| {
                let event = Event::Applied {
                    node: NodeId::new(format!("n{i}")).unwrap(),
                    unit: UnitName::new("u").unwrap(),
                    version,
                };
                (event, None)
            })
            .collect();
        engine
            .apply_many(store, clock(), applied, Cause::Nothing)
            .await
            .unwrap();
        (engine, version)
    }

    fn health(node: &str, version: VersionHash) -> Events {
        let sample = HealthSample {
            requests: 10,
            ..Default::default()
        };
        vec![(
            Event::Health {
                node: NodeId::new(node).unwrap(),
                unit: UnitName::new("u").unwrap(),
                version,
                sample,
            },
            None,
        )]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_steps_and_each_is_applied_once() {
        let (_dir, store) = fresh_store("group");
        let (engine, version) = fleet(&store).await;
        let before = engine.read(|_, revision| revision).await;
        let batcher = ReportBatcher::start(Arc::clone(&engine), Arc::clone(&store), clock);
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..NODES {
            let batcher = batcher.clone();
            let events = health(&format!("n{i}"), version);
            requests.spawn(async move { batcher.submit(events, Cause::Nothing).await });
        }
        while let Some(result) = requests.join_next().await {
            result.unwrap().unwrap();
        }
        let steps = engine.read(|_, revision| revision).await - before;
        assert!(
            steps < NODES as u64,
            "{NODES} requests took {steps} steps: nothing was grouped"
        );
        let counts = batcher.counts();
        assert_eq!(counts.requests.load(Ordering::Relaxed), NODES as u64);
        assert_eq!(counts.steps.load(Ordering::Relaxed), steps);
        let requests = engine
            .read(|engine, _| engine.rollouts().next().unwrap().canary.sample.requests)
            .await;
        assert_eq!(requests, 10 * NODES as u64, "every report counted once");
        // What memory holds is what is stored.
        let (stored, revision) = store.engine_state().unwrap().unwrap();
        let in_memory = engine
            .read(|engine, rev| (serde_json::to_string(engine).unwrap(), rev))
            .await;
        assert_eq!(in_memory, (stored, revision));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_registrations_share_steps_and_every_node_is_stored() {
        let (_dir, store) = fresh_store("register");
        let engine = Arc::new(EngineHost::load(&store).unwrap());
        let batcher = ReportBatcher::start(Arc::clone(&engine), Arc::clone(&store), clock);
        let labels_of =
            |i: usize| -> Labels { [("cohort".to_owned(), format!("c{}", i % 3))].into() };
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..NODES {
            let batcher = batcher.clone();
            let id = NodeId::new(format!("n{i}")).unwrap();
            let labels = labels_of(i);
            let event = Event::NodeRegistered {
                node: id.clone(),
                labels: labels.clone(),
            };
            requests.spawn(async move {
                batcher
                    .submit(vec![(event, None)], Cause::Node { id, labels })
                    .await
            });
        }
        while let Some(result) = requests.join_next().await {
            result.unwrap().unwrap();
        }
        let steps = engine.read(|_, revision| revision).await;
        assert!(
            steps < NODES as u64,
            "{NODES} registrations took {steps} steps: nothing was grouped"
        );
        for i in 0..NODES {
            let node = store.node(&format!("n{i}")).unwrap().unwrap();
            assert_eq!(node.labels, labels_of(i), "node n{i}");
        }
        assert_eq!(store.counts().unwrap().nodes, NODES as u64);
        // What memory holds is what is stored, and the engine knows every node.
        let (stored, revision) = store.engine_state().unwrap().unwrap();
        let in_memory = engine
            .read(|engine, rev| (serde_json::to_string(engine).unwrap(), rev))
            .await;
        assert_eq!(in_memory, (stored, revision));
        for i in 0..NODES {
            assert!(
                in_memory.0.contains(&format!("\"n{i}\"")),
                "engine lacks n{i}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_request_does_not_take_its_group_with_it() {
        let (_dir, store) = fresh_store("refused");
        let (engine, version) = fleet(&store).await;
        let batcher = ReportBatcher::start(Arc::clone(&engine), Arc::clone(&store), clock);
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..50 {
            let batcher = batcher.clone();
            // Every tenth request reports for a node nobody registered, against another
            // version (a baseline sample): the engine refuses it.
            let events = if i % 10 == 0 {
                health(&format!("ghost{i}"), VersionHash::of(b"other"))
            } else {
                health(&format!("n{i}"), version)
            };
            requests.spawn(async move { (i, batcher.submit(events, Cause::Nothing).await) });
        }
        let mut refused = 0;
        while let Some(joined) = requests.join_next().await {
            let (i, result) = joined.unwrap();
            match result {
                Ok(_) => assert_ne!(i % 10, 0, "request {i} should have been refused"),
                Err(SubmitError::Step(StepError::Engine(_))) => {
                    assert_eq!(i % 10, 0, "request {i} was refused");
                    refused += 1;
                }
                Err(other) => panic!("request {i}: {other}"),
            }
        }
        assert_eq!(refused, 5);
        let requests = engine
            .read(|engine, _| engine.rollouts().next().unwrap().canary.sample.requests)
            .await;
        assert_eq!(requests, 10 * 45, "each accepted report counted once");
    }
}
