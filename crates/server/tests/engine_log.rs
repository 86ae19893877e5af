//! The engine's state is persisted as a log of steps plus snapshots: replaying the log from
//! the start, or from a snapshot, gives exactly the live engine after a realistic run
//! (registrations, rollouts through stages, ACKs, health, a crash that rolls back).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{Command, Engine, Event, RolloutStatus};
use failsmall_core::health::HealthSample;
use failsmall_core::plan::Plan;
use failsmall_server::rollouts::{Cause, EngineHost};
use failsmall_server::store::{EngineLogRow, Store};

const NODES: usize = 40;

const PLAN: &str = "name: staged
soak: 2m
stages:
  - name: employees
    select: { cohort: employee }
    bake: 1m
    gates: []
  - name: free-half
    select: { cohort: free }
    percent: 50%
    bake: 1m
    gates: []
  - name: everyone
    bake: 1m
    gates: []
";

fn node(i: usize) -> NodeId {
    NodeId::new(format!("n{i:03}")).unwrap()
}

fn labels(i: usize) -> Labels {
    let cohort = if i.is_multiple_of(4) {
        "employee"
    } else {
        "free"
    };
    [
        ("cohort".to_owned(), cohort.to_owned()),
        ("region".to_owned(), format!("r{}", i % 3)),
    ]
    .into()
}

fn sample(errors: u64) -> HealthSample {
    let mut sample = HealthSample {
        requests: 200,
        errors,
        ..HealthSample::default()
    };
    sample.latency.record(12.5, 200);
    sample
}

struct Run {
    store: Arc<Store>,
    host: EngineHost,
    now: u64,
    acked: std::collections::HashSet<(usize, VersionHash)>,
}

impl Run {
    async fn step(&mut self, event: Event) {
        self.host
            .apply(&self.store, self.now, event, Cause::Nothing, None)
            .await
            .unwrap();
    }

    /// For a minute, every 10 s: every node that should run `version` ACKs it (once) and
    /// reports health, then a tick.
    async fn minute(&mut self, unit: &UnitName, version: VersionHash, errors: u64) {
        for _ in 0..6 {
            for i in 0..NODES {
                let desired = self
                    .host
                    .read(|engine, _| engine.desired(&node(i), unit))
                    .await;
                if desired != Some(version) {
                    continue;
                }
                let mut events = Vec::new();
                if self.acked.insert((i, version)) {
                    let applied = Event::Applied {
                        node: node(i),
                        unit: unit.clone(),
                        version,
                    };
                    events.push((applied, None));
                }
                let health = Event::Health {
                    node: node(i),
                    unit: unit.clone(),
                    version,
                    sample: sample(errors),
                };
                events.push((health, None));
                // Several events in one step, as the batcher commits them.
                self.host
                    .apply_many(&self.store, self.now, events, Cause::Nothing)
                    .await
                    .unwrap();
            }
            self.now += 10_000;
            self.step(Event::Tick).await;
        }
    }

    async fn live(&self) -> Engine {
        self.host.read(|engine, _| engine.clone()).await
    }
}

fn request(unit: &UnitName, version: VersionHash) -> Event {
    Event::RolloutRequested {
        unit: unit.clone(),
        version,
        plan: Plan::parse("plan", PLAN).unwrap(),
        actor: "alice".to_owned(),
        reason: "test".to_owned(),
        override_quarantine: false,
        override_freeze: false,
    }
}

fn assert_same(live: &Engine, replayed: &Engine, what: &str) {
    assert!(live == replayed, "{what}: the replayed engine differs");
    assert_eq!(
        serde_json::to_value(live).unwrap(),
        serde_json::to_value(replayed).unwrap(),
        "{what}"
    );
}

/// Replays every logged step from revision 1 on a new engine.
fn replay_from_start(rows: &[EngineLogRow]) -> (Engine, u64) {
    let mut engine = Engine::new();
    let mut revision = 0;
    for row in rows {
        assert_eq!(row.revision, revision + 1, "the log has no gap");
        let events: Vec<Event> = serde_json::from_str(&row.events).unwrap();
        for event in &events {
            engine.step(row.now_ms, event).unwrap();
        }
        revision = row.revision;
    }
    (engine, revision)
}

#[tokio::test]
async fn replaying_the_log_from_the_start_or_a_snapshot_gives_the_live_engine() {
    let dir = tempfile::Builder::new()
        .prefix("failsmall-engine-log-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("failsmall.db");
    let store = Arc::new(Store::open(&path).unwrap());
    let host = EngineHost::load(&store).unwrap();
    let mut run = Run {
        store: Arc::clone(&store),
        host,
        now: 1_000,
        acked: std::collections::HashSet::new(),
    };
    for i in 0..NODES {
        run.step(Event::NodeRegistered {
            node: node(i),
            labels: labels(i),
        })
        .await;
    }
    // A good version goes through its three stages and completes.
    let unit = UnitName::new("flags").unwrap();
    let good = VersionHash::of(b"good");
    run.step(request(&unit, good)).await;
    for _ in 0..8 {
        run.minute(&unit, good, 0).await;
    }
    let first = run
        .host
        .read(|engine, _| engine.rollouts().next().unwrap())
        .await;
    assert_eq!(first.status, RolloutStatus::Completed, "{first:?}");
    // A snapshot in the middle of the run; it compacts the log to its tail, so the log so far
    // is read first.
    let mut log = store.engine_log_after(0).unwrap();
    run.host.snapshot_now(&store).await.unwrap();
    let (_, snapshot_revision) = store.engine_snapshot().unwrap().unwrap();
    // A bad version crashes on its first nodes and is rolled back.
    let bad = VersionHash::of(b"bad");
    run.step(request(&unit, bad)).await;
    run.minute(&unit, bad, 3).await;
    let engine = run.live().await;
    let crashed = match (0..NODES).find(|i| engine.desired(&node(*i), &unit) == Some(bad)) {
        Some(i) => i,
        None => panic!("the bad version reached no node"),
    };
    run.step(Event::Crashed {
        node: node(crashed),
        unit: unit.clone(),
        version: bad,
        reason: "segfault".to_owned(),
    })
    .await;
    run.minute(&unit, good, 0).await;
    let statuses: Vec<RolloutStatus> = run
        .host
        .read(|engine, _| engine.rollouts().map(|view| view.status).collect())
        .await;
    assert_eq!(
        statuses,
        [RolloutStatus::Completed, RolloutStatus::RolledBack]
    );
    // A step whose second event is refused changes neither memory nor the log, though its
    // first event was applied in place.
    let head = store.engine_revision().unwrap();
    let before = run.live().await;
    let refused = run
        .host
        .apply_many(
            &store,
            run.now + 60_000,
            vec![
                (Event::Tick, None),
                (
                    Event::Command {
                        rollout: RolloutId(999),
                        command: Command::Pause,
                        actor: "alice".to_owned(),
                        reason: "no such rollout".to_owned(),
                    },
                    None,
                ),
            ],
            Cause::Nothing,
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(store.engine_revision().unwrap(), head);
    assert_same(&before, &run.live().await, "after a refused step");

    let live = run.live().await;
    let head = store.engine_revision().unwrap();
    assert_eq!(run.host.read(|_, revision| revision).await, head);
    let logged = log.last().unwrap().revision;
    log.extend(store.engine_log_after(logged).unwrap());
    let (from_start, revision) = replay_from_start(&log);
    assert_eq!(revision, head);
    assert_same(&live, &from_start, "replayed from the start");
    let (from_snapshot, revision) = store.load_engine().unwrap();
    assert_eq!(revision, head);
    assert!(snapshot_revision < head);
    assert_same(&live, &from_snapshot, "replayed from the snapshot");
    // A restart continues exactly where the live engine was.
    drop(run);
    let store = Arc::new(Store::open(&path).unwrap());
    let host = EngineHost::load(&store).unwrap();
    let restarted = host.read(|engine, _| engine.clone()).await;
    assert_same(&live, &restarted, "after a restart");
}

#[tokio::test]
async fn a_snapshot_compacts_the_log_to_a_bounded_tail() {
    let dir = tempfile::Builder::new()
        .prefix("failsmall-engine-compact-")
        .tempdir()
        .unwrap();
    let store = Arc::new(Store::open(&dir.path().join("failsmall.db")).unwrap());
    let host = EngineHost::load(&store).unwrap();
    let steps = failsmall_server::store::ENGINE_LOG_TAIL_STEPS + 200;
    for i in 0..steps {
        host.apply(&store, 1_000 + i, Event::Tick, Cause::Nothing, None)
            .await
            .unwrap();
    }
    assert_eq!(store.engine_log_after(0).unwrap().len() as u64, steps);
    host.snapshot_now(&store).await.unwrap();
    let kept = store.engine_log_after(0).unwrap();
    assert_eq!(
        kept.len() as u64,
        failsmall_server::store::ENGINE_LOG_TAIL_STEPS
    );
    assert_eq!(kept.last().unwrap().revision, steps);
    let (loaded, revision) = store.load_engine().unwrap();
    assert_eq!(revision, steps);
    let live = host.read(|engine, _| engine.clone()).await;
    assert!(loaded == live);
}

/// A snapshot that dies after its steps are logged (fail point `SNAPSHOT_BEFORE`) loses
/// nothing: the log still holds every step, and the next snapshot succeeds.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_snapshot_that_dies_loses_nothing() {
    use failsmall_server::store::fail_points;
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::Builder::new()
        .prefix("failsmall-engine-snapfail-")
        .tempdir()
        .unwrap();
    let store = Arc::new(Store::open(&dir.path().join("failsmall.db")).unwrap());
    let host = EngineHost::load(&store).unwrap();
    for i in 0..NODES {
        host.apply(
            &store,
            1_000,
            Event::NodeRegistered {
                node: node(i),
                labels: labels(i),
            },
            Cause::Nothing,
            None,
        )
        .await
        .unwrap();
    }
    for action in ["return", "panic"] {
        fail::cfg(fail_points::SNAPSHOT_BEFORE, action).unwrap();
        assert!(host.snapshot_now(&store).await.is_err(), "{action}");
        fail::remove(fail_points::SNAPSHOT_BEFORE);
        assert!(store.engine_snapshot().unwrap().is_none(), "{action}");
        assert_eq!(store.engine_log_after(0).unwrap().len(), NODES, "{action}");
        let (loaded, revision) = store.load_engine().unwrap();
        assert_eq!(revision, NODES as u64);
        assert!(loaded == host.read(|engine, _| engine.clone()).await);
    }
    host.snapshot_now(&store).await.unwrap();
    assert_eq!(store.engine_snapshot().unwrap().unwrap().1, NODES as u64);
    scenario.teardown();
}
