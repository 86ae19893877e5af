//! A real server on 127.0.0.1:0 in this process, and a real HTTP client.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use failsmall_server::auth::Role;
use failsmall_server::{ServerConfig, ServerError, run};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct TestServer {
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

/// A fresh directory under the system's temporary directory, removed when the test drops it.
pub fn fresh_dir(name: &str) -> tempfile::TempDir {
    failsmall_testkit::scratch_dir(&format!("failsmall-server-test-{name}-"))
}

/// With `FAILSMALL_TEST_POSTGRES` set (a PostgreSQL URL, as `scripts/test` sets for its second
/// run of these tests), each data dir's state is kept in a database of its own there instead
/// of SQLite: the database is named after the data dir's path, so a restart finds it again.
pub fn postgres_store(data_dir: &Path) -> Option<String> {
    let admin_url = std::env::var("FAILSMALL_TEST_POSTGRES").ok()?;
    let name: String = data_dir
        .to_str()?
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    // PostgreSQL's names are at most 63 bytes; the scratch dir's random part is at its end.
    let name = format!("t{}", &name[name.len().saturating_sub(60)..]);
    let (base, _) = admin_url.rsplit_once('/')?;
    let url = format!("{base}/{name}");
    // The `postgres` client runs its own runtime: not on this test's runtime thread.
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap();
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .unwrap()
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .unwrap();
        }
    })
    .join()
    .unwrap();
    Some(url)
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, |_| {}).await
    }

    /// Starts a server whose configuration `adjust` changes first.
    pub async fn start_with(data_dir: &Path, adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut config = ServerConfig::new(data_dir, address);
        config.store_url = postgres_store(data_dir);
        config.max_body_bytes = MAX_BODY_BYTES;
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config.clone(), listener, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let base = format!("http://{address}");
        // The listener is bound: this request waits in the backlog until the server serves.
        let health = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let admin = std::fs::read_to_string(config.admin_token_path())
            .unwrap()
            .trim()
            .to_owned();
        Self {
            base,
            admin,
            client,
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

    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut builder = self.request(method.clone(), path, token);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_documented(&method, path, status, &body);
        (status, body)
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.admin.clone()), body)
            .await
    }

    pub async fn token(&self, name: &str, role: Role) -> String {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/tokens",
                // Each such token is its own person (the default owner is its creator).
                Some(json!({"name": name, "role": role, "owner": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// An agent token bound to `node`.
    pub async fn agent_token(&self, name: &str, node: &str) -> String {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": name, "role": "agent", "node": node})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["record"]["node"], node, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn push(
        &self,
        unit: &str,
        token: &str,
        query: &str,
        content: &[u8],
    ) -> (StatusCode, Value) {
        let response = self
            .request(
                Method::POST,
                &format!("/v1/units/{unit}/versions?{query}"),
                Some(token),
            )
            .body(content.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.json().await.unwrap();
        assert_documented(
            &Method::POST,
            &format!("/v1/units/{unit}/versions"),
            status,
            &body,
        );
        (status, body)
    }

    pub async fn create_features_unit(&self, name: &str) {
        let spec = json!({
            "format": "json",
            "max_bytes": 4096,
            "max_entries": [{"path": "/features", "max": 3}],
            "unique_entries": [{"path": "/features", "key": "name"}],
            "schema": {"type": "object", "required": ["features"]}
        });
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/units",
                Some(json!({"name": name, "spec": spec, "owner": "bots"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

pub fn features(count: usize) -> Vec<u8> {
    let list: Vec<Value> = (0..count)
        .map(|i| json!({"name": format!("f{i}")}))
        .collect();
    serde_json::to_vec(&json!({ "features": list })).unwrap()
}

/// The OpenAPI document's route for `path` (its query cut off): the template whose segments
/// match, literal segments preferred over `{parameters}`.
fn route_of(method: &Method, path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    failsmall_server::api::route_table()
        .into_iter()
        .filter(|route| route.method.as_str() == method.as_str())
        .filter_map(|route| {
            let template: Vec<&str> = route.path.split('/').collect();
            if template.len() != segments.len() {
                return None;
            }
            let mut literal = 0;
            for (want, got) in template.iter().zip(&segments) {
                if want.starts_with('{') {
                    if got.is_empty() {
                        return None;
                    }
                } else if want == got {
                    literal += 1;
                } else {
                    return None;
                }
            }
            Some((literal, route.path))
        })
        .max_by_key(|(literal, _)| *literal)
        .map(|(_, path)| path)
}

/// Compiled answer schemas, by method, route and status.
type Validators =
    std::collections::HashMap<(String, String, u16), std::sync::Arc<jsonschema::Validator>>;

fn validators() -> &'static std::sync::Mutex<Validators> {
    static VALIDATORS: std::sync::OnceLock<std::sync::Mutex<Validators>> =
        std::sync::OnceLock::new();
    VALIDATORS.get_or_init(Default::default)
}

fn document() -> &'static Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(failsmall_server::api::openapi_document)
}

/// Every JSON success answer a test reads must be what the OpenAPI document says it is: the
/// schema of its route and status (the wire type the server serializes it from).
pub fn assert_documented(method: &Method, path: &str, status: StatusCode, body: &Value) {
    if !status.is_success() || body.is_string() {
        return;
    }
    let Some(route) = route_of(method, path) else {
        return;
    };
    let key = (
        method.as_str().to_owned(),
        route.to_owned(),
        status.as_u16(),
    );
    let validator = {
        let mut cache = validators().lock().unwrap();
        let found = cache.get(&key).cloned();
        match found {
            Some(validator) => validator,
            None => {
                let document = document();
                let operation = &document["paths"][route][method.as_str().to_ascii_lowercase()];
                let schema = &operation["responses"][status.as_str()]["content"]["application/json"]
                    ["schema"];
                assert!(
                    schema.is_object(),
                    "{method} {route} answered {status} with JSON the document does not describe: {body}"
                );
                let mut schema = schema.clone();
                schema["components"] = document["components"].clone();
                let validator = std::sync::Arc::new(jsonschema::validator_for(&schema).unwrap());
                cache.insert(key, std::sync::Arc::clone(&validator));
                validator
            }
        }
    };
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} ({route}) answered {status} unlike its schema: {errors:?}\n{body}"
    );
}

pub fn assert_error_shape(body: &Value) {
    let error = &body["error"];
    assert!(error["code"].is_string(), "{body}");
    assert!(error["message"].is_string(), "{body}");
    assert!(error.get("detail").is_some(), "{body}");
}
