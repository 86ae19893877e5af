//! The demo's fleet: which nodes exist (pure), and starting each one as an agent task plus a
//! demo consumer task in this process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use failsmall_agent::scrape::MetricNames;
use failsmall_agent::{AgentConfig, ConsumerMetrics};
use failsmall_core::domain::VersionHash;
use failsmall_demo::{ConsumerConfig, Generation, Mode};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::api::Api;

/// The regions of the demo fleet.
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// The cohorts, in the order the plan reaches them.
pub const COHORTS: [&str; 5] = ["employee", "free", "pro", "business", "enterprise"];
/// Nodes per region and cohort: one of each proxy generation.
pub const NODES_PER_CELL: usize = 2;
/// The region whose consumers read the feature file through the client library; the others
/// read it naively, as the 18 Nov proxy did.
pub const SAFE_REGION: &str = "us";
/// How often an agent scrapes its consumer's metrics, in milliseconds.
pub const SCRAPE_INTERVAL_MS: u64 = 500;
/// How long one agent's watch request waits for news, in milliseconds: short, so a stage's
/// new desired state reaches its nodes within a couple of seconds even when no long poll is
/// woken early.
pub const WATCH_WAIT_MS: u64 = 2_000;
/// How often a consumer looks at its unit files, in milliseconds.
pub const CONSUMER_POLL_MS: u64 = 100;

/// One node of the demo fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: String,
    pub region: &'static str,
    pub cohort: &'static str,
    pub generation: Generation,
    pub mode: Mode,
}

impl NodeSpec {
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("region".to_owned(), self.region.to_owned()),
            ("pop".to_owned(), format!("{}-1", self.region)),
            ("cohort".to_owned(), self.cohort.to_owned()),
            ("generation".to_owned(), self.generation.as_str().to_owned()),
            ("consumer".to_owned(), self.mode.as_str().to_owned()),
        ])
    }
}

/// Every node: regions × cohorts × [`NODES_PER_CELL`], the first of each cell `fl1`, the
/// second `fl2`; consumers naive except in [`SAFE_REGION`].
pub fn node_specs() -> Vec<NodeSpec> {
    let mut nodes = Vec::with_capacity(REGIONS.len() * COHORTS.len() * NODES_PER_CELL);
    for cohort in COHORTS {
        for region in REGIONS {
            for index in 0..NODES_PER_CELL {
                let generation = if index % 2 == 0 {
                    Generation::Fl1
                } else {
                    Generation::Fl2
                };
                let mode = if region == SAFE_REGION {
                    Mode::Safe
                } else {
                    Mode::Naive
                };
                nodes.push(NodeSpec {
                    id: format!("{region}-{cohort}-{}", index + 1),
                    region,
                    cohort,
                    generation,
                    mode,
                });
            }
        }
    }
    nodes
}

/// A started node.
#[derive(Debug, Clone)]
pub struct RunningNode {
    pub spec: NodeSpec,
    /// The agent's data dir (the consumer reads `units/<unit>/current` there).
    pub data_dir: PathBuf,
    /// The consumer's base URL, e.g. `http://127.0.0.1:40123`.
    pub consumer_url: String,
}

impl RunningNode {
    /// The hash of the version of `unit` this node serves, if any.
    pub fn serving(&self, unit: &str) -> Option<String> {
        let path = self.data_dir.join("units").join(unit).join("current");
        std::fs::read(path)
            .ok()
            .map(|bytes| VersionHash::of(&bytes).to_string())
    }
}

/// What every task of the demo returns.
pub type TaskResult = Result<(), String>;

/// A future that completes once `stop` turns true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Starts `spec`'s consumer and agent under `root`; both stop when `stop` turns true. The
/// agent trusts `server_key` (hex) from the start.
pub async fn start_node(
    api: &Api,
    server_key: &str,
    spec: NodeSpec,
    root: &Path,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<TaskResult>,
) -> anyhow::Result<RunningNode> {
    let answer = api
        .post_json(
            "/v1/tokens",
            &json!({"name": format!("demo-agent-{}", spec.id), "role": "agent", "node": spec.id}),
        )
        .await?;
    let Some(token) = answer.get("token").and_then(|t| t.as_str()) else {
        bail!(
            "the server made no agent token for node {}: {answer}",
            spec.id
        );
    };
    let data_dir = root.join("nodes").join(&spec.id);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding a consumer's port on 127.0.0.1")?;
    let address = listener
        .local_addr()
        .context("reading a consumer's address")?;
    let consumer_url = format!("http://{address}");
    let mut consumer = ConsumerConfig::new(&data_dir, spec.mode, spec.generation);
    consumer.poll_interval_ms = CONSUMER_POLL_MS;
    let node = spec.id.clone();
    let consumer_stop = stopped(stop.clone());
    tasks.spawn(async move {
        failsmall_demo::consumer::run(consumer, listener, consumer_stop)
            .await
            .map_err(|e| format!("node {node}: {e}"))
    });

    let mut agent = AgentConfig::new(&api.base, token, &data_dir);
    agent.node_id = Some(spec.id.clone());
    agent.labels = spec.labels();
    agent.consumer_url = Some(consumer_url.clone());
    agent.metrics = Some(ConsumerMetrics {
        url: format!("{consumer_url}/metrics"),
        names: MetricNames::default(),
        interval_ms: SCRAPE_INTERVAL_MS,
    });
    agent.backoff_max_ms = 1_000;
    agent.server_key = Some(server_key.to_owned());
    agent.watch_wait_ms = WATCH_WAIT_MS;
    agent
        .validate()
        .with_context(|| format!("agent of node {}", spec.id))?;
    let node = spec.id.clone();
    let agent_stop = stopped(stop.clone());
    tasks.spawn(async move {
        failsmall_agent::run(agent, agent_stop)
            .await
            .map_err(|e| format!("agent of node {node}: {e}"))
    });
    Ok(RunningNode {
        spec,
        data_dir,
        consumer_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_nodes_with_unique_ids() {
        let nodes = node_specs();
        assert_eq!(nodes.len(), 30);
        let ids: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids.len(), 30);
        for id in ids {
            failsmall_core::domain::NodeId::new(id.to_owned()).unwrap();
        }
    }

    #[test]
    fn every_cohort_has_both_generations_in_every_region() {
        let nodes = node_specs();
        for cohort in COHORTS {
            for region in REGIONS {
                let cell: Vec<&NodeSpec> = nodes
                    .iter()
                    .filter(|n| n.cohort == cohort && n.region == region)
                    .collect();
                assert_eq!(cell.len(), NODES_PER_CELL);
                assert!(cell.iter().any(|n| n.generation == Generation::Fl1));
                assert!(cell.iter().any(|n| n.generation == Generation::Fl2));
            }
        }
    }

    #[test]
    fn the_first_stage_mixes_naive_and_safe_consumers() {
        let employees: Vec<NodeSpec> = node_specs()
            .into_iter()
            .filter(|n| n.cohort == "employee")
            .collect();
        assert_eq!(employees.len(), 6);
        assert!(employees.iter().any(|n| n.mode == Mode::Naive));
        assert!(employees.iter().any(|n| n.mode == Mode::Safe));
        let labels = employees[0].labels();
        assert_eq!(labels["cohort"], "employee");
        assert_eq!(labels["generation"], "fl1");
    }
}
