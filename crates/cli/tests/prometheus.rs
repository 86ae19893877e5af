//! Health from a real Prometheus server (Debian's `prometheus`, started here on 127.0.0.1)
//! scraping real demo consumers: a plan with `health_source: prometheus` is judged on what
//! Prometheus says, with agents that report no health of their own (no `--metrics-url`), so
//! every number the gates read came through Prometheus. A good version completes; the 5 Dec
//! killswitch fails the fl1 consumer's requests and is rolled back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{BIN, Server};

/// Every process the test started, killed when it ends however it ends.
#[derive(Default)]
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Debian keeps `prometheus` in /usr/bin; `scripts/test` installs it.
fn prometheus_binary() -> PathBuf {
    for candidate in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("prometheus is not installed; scripts/test installs it (apt-get install prometheus)");
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port the OS chose, free again for Prometheus, which cannot report the one it took.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The four nodes of the walkthrough's plan (two employees, one free, one enterprise; fl1 and
/// fl2 consumers), each a demo consumer with its agent reporting no health of its own. The
/// scrape targets (labelled with their node) and the load generator's targets.
fn start_nodes(server: &Server, processes: &mut Processes) -> (String, Vec<String>) {
    let dir = server.dir.path().to_owned();
    let nodes = [
        ("emp-1", "employee", "fl1"),
        ("emp-2", "employee", "fl2"),
        ("free-1", "free", "fl1"),
        ("ent-1", "enterprise", "fl2"),
    ];
    let mut scrape_targets = String::new();
    let mut load_targets = Vec::new();
    for (id, cohort, generation) in nodes {
        let node_dir = dir.join(id);
        std::fs::create_dir_all(&node_dir).unwrap();
        let url_file = dir.join(format!("{id}.url"));
        processes.0.push(
            Command::new(BIN)
                .args(["demo-consumer", "--generation", generation, "--units-dir"])
                .arg(&node_dir)
                .arg("--addr-file")
                .arg(&url_file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = wait_for_file(&url_file);
        let token = server.ok(&["token", "create", id, "--role", "agent", "--node", id]);
        processes.0.push(
            Command::new(BIN)
                .args(["agent", "--addr", &server.addr, "--node-id", id])
                .args([
                    "--labels",
                    &format!("cohort={cohort},generation={generation}"),
                ])
                .arg("--data-dir")
                .arg(&node_dir)
                .env("FAILSMALL_TOKEN", token.trim())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let host = url.trim_start_matches("http://");
        scrape_targets.push_str(&format!(
            "      - targets: ['{host}']\n        labels: {{ node: '{id}' }}\n"
        ));
        load_targets.push("--target".to_owned());
        load_targets.push(format!("{url}/"));
    }
    (scrape_targets, load_targets)
}

#[test]
fn a_plan_judged_on_prometheus_completes_a_good_version_and_rolls_back_the_killswitch() {
    let server = Server::start("prometheus");
    let dir = server.dir.path().to_owned();
    let mut processes = Processes::default();
    let (scrape_targets, load_targets) = start_nodes(&server, &mut processes);
    let prometheus = start_prometheus(&dir, &scrape_targets, &mut processes);
    start_loadgen(&load_targets, "200", "10m", &mut processes);
    let plan = std::fs::read_to_string(repo().join("examples/plans/walkthrough.yaml"))
        .unwrap()
        .replace(
            "stages:\n",
            &format!(
                "health_source:\n  prometheus:\n    url: {prometheus}\n    node_label: node\n    requests: sum by (node) (http_requests_total{{job=\"edge\"}})\n    errors: sum by (node) (http_errors_total{{job=\"edge\"}})\n    latency: sum by (node, le) (http_request_duration_seconds_bucket{{job=\"edge\"}})\n    interval: 1s\nstages:\n"
            ),
        );
    let plan_file = server.file("prometheus-plan.yaml", &plan);
    let spec = repo().join("examples/units/rules.spec.yaml");
    // The gates pass on numbers: requests counted from Prometheus, not from agents.
    good_completes_then_the_killswitch_rolls_back(
        &server,
        &spec,
        &plan_file,
        "error_rate 0%",
        "error_rate",
    );
}

/// Creates the `rules` unit with `plan_file`, waits for the 4 nodes, then pushes the good rules
/// (completed; its log shows a gate verdict containing `passed`) and the 5 Dec killswitch
/// (rolled back at the employees stage on `gate`, and quarantined).
fn good_completes_then_the_killswitch_rolls_back(
    server: &Server,
    spec: &Path,
    plan_file: &str,
    passed: &str,
    gate: &str,
) {
    server.ok(&[
        "unit",
        "create",
        "rules",
        "--spec",
        spec.to_str().unwrap(),
        "--plan",
        plan_file,
    ]);
    server.ok(&["nodes", "--wait-for", "4", "--timeout", "30s"]);
    let rules = repo().join("examples/units/rules.json");
    let watched = server.ok(&[
        "push",
        "rules",
        rules.to_str().unwrap(),
        "-m",
        "managed rules",
        "--watch",
    ]);
    assert!(watched.contains("rollout 1 completed"), "{watched}");
    let story = server.ok(&["log", "--rollout", "1", "-o", "json"]);
    assert!(
        story.contains("\"gate_verdict\"") && story.contains(passed),
        "{story}"
    );
    let killswitch = repo().join("examples/units/rules-killswitch.json");
    let output = server.run(&[
        "push",
        "rules",
        killswitch.to_str().unwrap(),
        "-m",
        "kill r-300",
        "--watch",
    ]);
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(3), "{said}");
    assert!(
        said.contains("rollout 2 rolled_back at stage 1/3 employees") && said.contains(gate),
        "{said}"
    );
    let quarantined = server.ok(&["quarantine", "list"]);
    assert!(quarantined.contains("kill r-300"), "{quarantined}");
}

/// A Prometheus that cannot be read gives no data, never made-up health: the agents' own
/// (healthy) reports do not count for the plan, the gate stays inconclusive, and the stage
/// holds at its timeout without blaming the version.
#[test]
fn an_unreadable_prometheus_holds_the_stage_and_blames_nothing() {
    let server = Server::start("prometheus-down");
    let closed = free_port();
    let plan = format!(
        "name: watched\nsoak: 0s\non_inconclusive: hold\nhealth_source:\n  prometheus:\n    url: http://127.0.0.1:{closed}\n    node_label: node\n    requests: sum by (node) (http_requests_total)\n    errors: sum by (node) (http_errors_total)\n    interval: 1s\nstages:\n  - name: everywhere\n    bake: 0s\n    timeout: 3s\n    min_requests: 10\n    gates: [error_rate > 1%]\n"
    );
    let plan_file = server.file("watched.yaml", &plan);
    let spec = server.file(
        "spec.yaml",
        "format: json\nmax_bytes: 1024\nfail_mode: closed\n",
    );
    server.ok(&[
        "unit", "create", "flags", "--spec", &spec, "--plan", &plan_file,
    ]);
    let mut agent = support::Agent::new(&server);
    agent.register("n1", serde_json::json!({"cohort": "free"}));
    let file = server.file("flags.json", "{\"on\": true}");
    let pushed = server.json(&["push", "flags", &file, "-m", "first"]);
    let version = pushed["version"]["hash"].as_str().unwrap().to_owned();
    // Healthy by the agent's own report, which this plan does not count.
    agent.apply_healthy("n1", "flags", &version);
    let deadline = Instant::now() + Duration::from_secs(30);
    let story = loop {
        let story = server.ok(&["log", "--rollout", "1", "-o", "json"]);
        if story.contains("inconclusive after") {
            break story;
        }
        assert!(Instant::now() < deadline, "the stage never held: {story}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(story.contains("canary has 0 requests"), "{story}");
    assert!(
        !story.contains("rolled_back") && !story.contains("quarantined"),
        "{story}"
    );
    let status = server.json(&["rollout", "status", "1"]);
    assert_eq!(status["status"], "running", "{status}");
}

/// Starts Prometheus on 127.0.0.1 scraping `scrape_targets` (job `edge`) every second; its
/// base URL once ready.
/// Traffic on the nodes' consumers (`failsmall loadgen`), stopped with `processes`.
fn start_loadgen(load_targets: &[String], rps: &str, duration: &str, processes: &mut Processes) {
    processes.0.push(
        Command::new(BIN)
            .arg("loadgen")
            .args(load_targets)
            .args(["--rps", rps, "--duration", duration])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
}

fn start_prometheus(dir: &Path, scrape_targets: &str, processes: &mut Processes) -> String {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: edge\n    static_configs:\n{scrape_targets}"
        ),
    )
    .unwrap();
    processes.0.push(
        Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prometheus = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{prometheus}/-/ready"))
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "Prometheus never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    prometheus
}

/// An SLO whose good and total events are PromQL queries: two consumers behind the real
/// Prometheus, the fl1 one running the 5 Dec killswitch rules (every request fails), the fl2
/// one healthy, the load split evenly. The server reads the two counters every 5 s and counts
/// their increase: about half the requests are bad, so against 99.9% the service burns its
/// budget about 500 times too fast, and the SLO says so from Prometheus alone (no agent runs).
#[test]
fn an_slo_defined_by_promql_gets_its_burn_rate_from_prometheus() {
    let server = Server::start("prometheus-slo");
    let dir = server.dir.path().to_owned();
    let mut processes = Processes::default();
    let killswitch = std::fs::read(repo().join("examples/units/rules-killswitch.json")).unwrap();
    let mut scrape_targets = String::new();
    let mut load_targets = Vec::new();
    for (id, generation) in [("edge-1", "fl1"), ("edge-2", "fl2")] {
        let node_dir = dir.join(id);
        // The rules file where an agent would have put it.
        let rules_dir = node_dir.join("units").join("rules");
        std::fs::create_dir_all(&rules_dir).unwrap();
        std::fs::write(rules_dir.join("current"), &killswitch).unwrap();
        let url_file = dir.join(format!("{id}.url"));
        processes.0.push(
            Command::new(BIN)
                .args(["demo-consumer", "--generation", generation, "--units-dir"])
                .arg(&node_dir)
                .arg("--addr-file")
                .arg(&url_file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = wait_for_file(&url_file);
        let host = url.trim_start_matches("http://");
        scrape_targets.push_str(&format!(
            "      - targets: ['{host}']\n        labels: {{ node: '{id}' }}\n"
        ));
        load_targets.push("--target".to_owned());
        load_targets.push(format!("{url}/"));
    }
    let prometheus = start_prometheus(&dir, &scrape_targets, &mut processes);
    start_loadgen(&load_targets, "100", "5m", &mut processes);
    let spec = repo().join("examples/units/rules.spec.yaml");
    server.ok(&["unit", "create", "rules", "--spec", spec.to_str().unwrap()]);
    let created = server.ok(&[
        "slo",
        "create",
        "edge-availability",
        "--unit",
        "rules",
        "--target",
        "99.9",
        "--window",
        "30d",
        "--no-block",
        "--prometheus",
        &prometheus,
        "--good-query",
        "sum(http_requests_total{job=\"edge\"}) - sum(http_errors_total{job=\"edge\"})",
        "--total-query",
        "sum(http_requests_total{job=\"edge\"})",
    ]);
    assert!(created.contains("edge-availability"), "{created}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let view = loop {
        let view = server.json(&["slo", "show", "edge-availability"]);
        let events = view["events_total"].as_u64().unwrap_or(0);
        if events >= 200 && view["burn_rates"]["5m"].as_f64().is_some() {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "the SLO never counted Prometheus' events: {view}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(view["prometheus"]["url"], prometheus.as_str(), "{view}");
    let total = view["events_total"].as_u64().unwrap();
    let bad = view["events_bad"].as_u64().unwrap();
    // The fl1 consumer fails its half of the load.
    let share = bad as f64 / total as f64;
    assert!((0.3..0.7).contains(&share), "{bad} bad of {total}: {view}");
    let burn = view["burn_rates"]["5m"].as_f64().unwrap();
    assert!((300.0..700.0).contains(&burn), "burn rate {burn}: {view}");
    assert_eq!(view["exhausted"], true, "{view}");
    // Bad queries are refused, naming the field.
    let refused = server.fails(
        &[
            "slo",
            "create",
            "broken",
            "--unit",
            "rules",
            "--target",
            "99.9",
            "--prometheus",
            "ftp://nowhere",
            "--good-query",
            "up",
            "--total-query",
            "up",
        ],
        1,
    );
    assert!(refused.contains("prometheus.url"), "{refused}");
}

/// A gate on a custom metric the plan's Prometheus source declares: each node's 5xx per
/// second (`rate()` of the consumer's error counter, as Prometheus computes it). The plan has
/// no other gate. A good version completes on it; the 5 Dec killswitch makes the fl1 employee
/// fail its requests while the nodes without it stay at zero, and the custom gate rolls it
/// back at the first stage.
#[test]
fn a_custom_metric_gate_on_prometheus_completes_a_good_version_and_rolls_back_the_killswitch() {
    let server = Server::start("prometheus-custom");
    let dir = server.dir.path().to_owned();
    let mut processes = Processes::default();
    let (scrape_targets, load_targets) = start_nodes(&server, &mut processes);
    let prometheus = start_prometheus(&dir, &scrape_targets, &mut processes);
    start_loadgen(&load_targets, "200", "10m", &mut processes);
    let plan = std::fs::read_to_string(repo().join("examples/plans/walkthrough.yaml"))
        .unwrap()
        .replace(
            "    - p99_latency > 500ms OR error_rate > 1%\n",
            "    - custom.errors_per_second > 1\n",
        )
        .replace(
            "stages:\n",
            &format!(
                "health_source:\n  prometheus:\n    url: {prometheus}\n    node_label: node\n    requests: sum by (node) (http_requests_total{{job=\"edge\"}})\n    errors: sum by (node) (http_errors_total{{job=\"edge\"}})\n    interval: 1s\n    metrics:\n      errors_per_second: sum by (node) (rate(http_errors_total{{job=\"edge\"}}[5s]))\nstages:\n"
            ),
        );
    assert!(plan.contains("custom.errors_per_second"), "{plan}");
    let plan_file = server.file("custom-plan.yaml", &plan);
    // A gate naming an undeclared metric is refused before anything is stored.
    let typo = server.file(
        "typo-plan.yaml",
        &plan.replace(
            "custom.errors_per_second > 1",
            "custom.error_per_second > 1",
        ),
    );
    let spec = repo().join("examples/units/rules.spec.yaml");
    let refused = server.fails(
        &[
            "unit",
            "create",
            "rules",
            "--spec",
            spec.to_str().unwrap(),
            "--plan",
            &typo,
        ],
        1,
    );
    assert!(
        refused.contains("custom.error_per_second") && refused.contains("errors_per_second"),
        "{refused}"
    );
    good_completes_then_the_killswitch_rolls_back(
        &server,
        &spec,
        &plan_file,
        "custom.errors_per_second 0 <= 1",
        "custom.errors_per_second",
    );
}
