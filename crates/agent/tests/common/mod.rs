//! A real control plane on 127.0.0.1:0 in this process, a proxy in front of it that can
//! corrupt, tamper with or replay what it forwards, and an agent driven against both.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use failsmall_server::{ServerConfig, ServerError};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const UNIT: &str = "features";
/// One stage over every node, no bake, no health needed: an ACK completes it, a NACK
/// rolls it back.
pub const INSTANT_PLAN: &str = "name: instant\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 0\n    gates: []\n";

/// A fresh directory under the system's temporary directory, removed when the test drops it.
pub fn fresh_dir(name: &str) -> tempfile::TempDir {
    failsmall_testkit::scratch_dir(&format!("failsmall-agent-test-{name}-"))
}

/// The control plane, stoppable and restartable on the same data dir.
pub struct Server {
    pub data_dir: PathBuf,
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Server {
    pub async fn start(data_dir: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = ServerConfig::new(data_dir, address);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(failsmall_server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let base = format!("http://{address}");
        let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        Self {
            data_dir: data_dir.to_owned(),
            base,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// What the proxy does to what it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Flips a byte of every blob.
    CorruptBlobs,
    /// Changes the signed document's text (a unit's version) and keeps the signature.
    TamperDocuments,
    /// Answers every desired-state request with a recorded, genuine one that named this
    /// version of the unit.
    Replay(String),
}

#[derive(Debug)]
struct ProxyState {
    upstream: Mutex<Option<String>>,
    mode: Mutex<Mode>,
    /// Every desired-state answer so far (the first 1000).
    recorded: Mutex<Vec<Bytes>>,
    /// Requests received, answered or not.
    requests: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
}

/// A proxy between agents and the control plane.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub base: String,
    state: Arc<ProxyState>,
}

impl Proxy {
    pub async fn start(upstream: Option<&str>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(ProxyState {
            upstream: Mutex::new(upstream.map(str::to_owned)),
            mode: Mutex::new(Mode::Pass),
            recorded: Mutex::new(Vec::new()),
            requests: std::sync::atomic::AtomicUsize::new(0),
            http: reqwest::Client::new(),
        });
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&state));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { base, state }
    }

    pub fn set_upstream(&self, upstream: Option<&str>) {
        *self.state.upstream.lock().unwrap() = upstream.map(str::to_owned);
    }

    /// How many requests it received.
    pub fn requests(&self) -> usize {
        self.state
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }
}

async fn forward(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    state
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let upstream = state.upstream.lock().unwrap().clone();
    let Some(upstream) = upstream else {
        return (StatusCode::BAD_GATEWAY, "control plane down").into_response();
    };
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let is_desired = path.contains("/desired");
    let replay = match &*state.mode.lock().unwrap() {
        Mode::Replay(version) if is_desired => Some(version.clone()),
        _ => None,
    };
    if let Some(version) = replay {
        let recorded = state.recorded.lock().unwrap().clone();
        let old = recorded.into_iter().find(|answer| {
            let envelope: Value = serde_json::from_slice(answer).unwrap();
            let document: Value =
                serde_json::from_str(envelope["document"].as_str().unwrap()).unwrap();
            document["units"][UNIT] == version.as_str()
        });
        return (
            StatusCode::OK,
            old.expect("no recorded document names that version"),
        )
            .into_response();
    }
    let (status, mut bytes) = match pass_on(&state.http, &upstream, &path, request).await {
        Ok(answer) => answer,
        Err(unreachable) => return unreachable,
    };
    // The mode as of the answer: a long poll sent before a change is tampered with too.
    let mode = state.mode.lock().unwrap().clone();
    if status.is_success() {
        if mode == Mode::CorruptBlobs
            && path.starts_with("/v1/blobs/")
            && let Some(first) = bytes.first_mut()
        {
            *first ^= 0x20;
        }
        if mode == Mode::TamperDocuments && is_desired {
            let mut envelope: Value = serde_json::from_slice(&bytes).unwrap();
            let document = envelope["document"].as_str().unwrap().to_owned();
            let mut parsed: Value = serde_json::from_str(&document).unwrap();
            let forged = failsmall_core::domain::VersionHash::of(b"forged").to_string();
            parsed["units"][UNIT] = json!(forged);
            envelope["document"] = json!(parsed.to_string());
            bytes = serde_json::to_vec(&envelope).unwrap();
        }
        if is_desired && mode == Mode::Pass {
            let mut recorded = state.recorded.lock().unwrap();
            if recorded.len() < 1000 {
                recorded.push(Bytes::from(bytes.clone()));
            }
        }
    }
    (status, bytes).into_response()
}

/// Calls to the control plane as an operator.
pub struct Operator {
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    /// Agent tokens made so far, by node.
    tokens: Mutex<std::collections::BTreeMap<String, String>>,
}

impl Operator {
    pub fn new(server: &Server) -> Self {
        let admin = std::fs::read_to_string(server.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            base: server.base.clone(),
            admin,
            http: reqwest::Client::new(),
            tokens: Mutex::new(Default::default()),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn agent_token(&self, node: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": format!("agent-{node}"), "role": "agent", "node": node})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = body["token"].as_str().unwrap().to_owned();
        self.tokens
            .lock()
            .unwrap()
            .insert(node.to_owned(), token.clone());
        token
    }

    /// The token made earlier for the only node, without asking the server.
    pub fn agent_token_offline(&self) -> String {
        self.tokens.lock().unwrap().values().next().unwrap().clone()
    }

    /// The features unit: JSON, at most 3 features, 16 MiB.
    pub async fn create_unit(&self) {
        let spec = json!({
            "format": "json",
            "max_bytes": 16 * 1024 * 1024,
            "max_entries": [{"path": "/features", "max": 3}],
        });
        self.create_unit_with(spec).await;
    }

    /// The unit [`UNIT`] with `spec`.
    pub async fn create_unit_with(&self, spec: Value) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/units",
                Some(json!({"name": UNIT, "spec": spec, "owner": "bots"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Pushes `content` (skipping the server's validation when `skip`) and returns its hash.
    pub async fn push(&self, content: &[u8], skip: bool) -> String {
        let query = if skip {
            "message=m&skip_validation=true"
        } else {
            "message=m"
        };
        let response = self
            .http
            .post(format!("{}/v1/units/{UNIT}/versions?{query}", self.base))
            .bearer_auth(&self.admin)
            .body(content.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{status} {body}");
        body["hash"].as_str().unwrap().to_owned()
    }

    /// Starts a rollout of `version` through the instant plan; returns its id.
    pub async fn rollout(&self, version: &str) -> u64 {
        self.rollout_with(version, INSTANT_PLAN).await
    }

    /// Starts a rollout of `version` through `plan`; returns its id.
    pub async fn rollout_with(&self, version: &str, plan: &str) -> u64 {
        let body = json!({"unit": UNIT, "version": version, "plan": plan, "reason": "test"});
        self.start_rollout(body).await
    }

    /// Rolls a quarantined `version` out again, deliberately; returns the rollout's id.
    pub async fn rollout_again(&self, version: &str, plan: &str) -> u64 {
        let body = json!({
            "unit": UNIT, "version": version, "plan": plan, "reason": "fixed the consumer",
            "override_quarantine": true,
        });
        self.start_rollout(body).await
    }

    async fn start_rollout(&self, body: Value) -> u64 {
        let (status, view) = self.call(Method::POST, "/v1/rollouts", Some(body)).await;
        assert!(status.is_success(), "{status} {view}");
        view["id"].as_u64().unwrap()
    }

    pub async fn rollout_status(&self, id: u64) -> Value {
        self.call(Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await
            .1
    }

    /// Waits until rollout `id` has `status`; panics with the view after `timeout_ms`.
    pub async fn wait_rollout(&self, id: u64, status: &str, timeout_ms: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let view = self.rollout_status(id).await;
            if view["status"] == status {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rollout never {status}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until rollout `id`'s view satisfies `check`; panics with the view after
    /// `timeout_ms`.
    pub async fn wait_rollout_where(
        &self,
        id: u64,
        timeout_ms: u64,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let view = self.rollout_status(id).await;
            if check(&view) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rollout never got there: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The signed desired-state document of `node`, as its agent (with `token`) reads it.
    pub async fn desired_as(&self, token: &str, node: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/v1/nodes/{node}/desired", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let envelope: Value = response.json().await.unwrap();
        serde_json::from_str(envelope["document"].as_str().unwrap()).unwrap()
    }

    /// Whether `node` has registered.
    pub async fn node_known(&self, node: &str) -> bool {
        let (_, body) = self.call(Method::GET, "/v1/nodes", None).await;
        body["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().any(|n| n["id"] == node))
    }

    /// Waits until a changelog entry of `kind` mentions `text`.
    pub async fn wait_changelog(&self, kind: &str, text: &str, timeout_ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let reasons = self.changelog_reasons().await;
            if reasons
                .iter()
                .any(|r| r.starts_with(kind) && r.contains(text))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} with {text:?} in {reasons:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The changelog's reasons, oldest first.
    pub async fn changelog_reasons(&self) -> Vec<String> {
        let (_, body) = self
            .call(Method::GET, "/v1/changelog?limit=1000", None)
            .await;
        body["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["kind"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                )
            })
            .collect()
    }
}

pub fn features(count: usize) -> Vec<u8> {
    let list: Vec<Value> = (0..count)
        .map(|i| json!({"name": format!("f{i}")}))
        .collect();
    serde_json::to_vec(&json!({ "features": list })).unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    failsmall_core::domain::VersionHash::of(bytes).to_string()
}

/// An agent running in this process until stopped.
pub struct Agent {
    pub data_dir: PathBuf,
    pub local_api: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), failsmall_agent::AgentError>>>,
}

impl Agent {
    pub async fn start(config: failsmall_agent::AgentConfig) -> Self {
        // Bind a port for the local API, free it, and give it to the agent.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = probe.local_addr().unwrap();
        drop(probe);
        let mut config = config;
        config.local_api = Some(address);
        let data_dir = config.data_dir.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(failsmall_agent::run(config, async {
            let _ = stopped.await;
        }));
        Self {
            data_dir,
            local_api: format!("http://{address}"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// The active file's bytes, if any.
    pub fn current(&self) -> Option<Vec<u8>> {
        std::fs::read(self.data_dir.join("units").join(UNIT).join("current")).ok()
    }

    pub async fn status(&self) -> Value {
        reqwest::get(format!("{}/v1/status", self.local_api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until the local API's status satisfies `check`.
    pub async fn wait_status(&self, timeout_ms: u64, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/v1/status", self.local_api)).await
                && let Ok(status) = response.json::<Value>().await
                && check(&status)
            {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status never matched"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn agent_config(
    server: &str,
    token: &str,
    node: &str,
    data_dir: &Path,
) -> failsmall_agent::AgentConfig {
    let mut config = failsmall_agent::AgentConfig::new(server, token, data_dir);
    config.node_id = Some(node.to_owned());
    config.labels = [("cohort".to_owned(), "employee".to_owned())].into();
    config.watch_wait_ms = 2_000;
    config.health_interval_ms = 100;
    config.backoff_min_ms = 20;
    config.backoff_max_ms = 200;
    // A plan-declared health check: a short window, and a deadline that a failing consumer
    // reaches within the tests' waits.
    config.health_window = failsmall_agent::check::HealthWindow {
        window_ms: 300,
        interval_ms: 25,
        deadline_ms: 3_000,
    };
    config
}

/// Sends `request` on to `upstream` (a test proxy's one honest step): the answer's status and
/// bytes, or a 502 when the control plane is unreachable.
pub async fn pass_on(
    http: &reqwest::Client,
    upstream: &str,
    path: &str,
    request: axum::extract::Request,
) -> Result<(StatusCode, Vec<u8>), axum::response::Response> {
    let method = request.method().clone();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap();
    let mut outgoing = http.request(method, format!("{upstream}{path}")).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(response) = outgoing.send().await else {
        return Err((StatusCode::BAD_GATEWAY, "control plane unreachable").into_response());
    };
    let status = response.status();
    Ok((status, response.bytes().await.unwrap_or_default().to_vec()))
}
