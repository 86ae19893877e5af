//! The web dashboard in a real browser: Chromium and chromedriver from Debian's packages,
//! driven over WebDriver (its HTTP protocol, spoken here with reqwest), against a real
//! `failsmall server` and two real `failsmall agent` processes. An approver signs in with a
//! token, watches a rollout advance on screen (its first wave, then the wait for approval),
//! approves it in the browser, and sees it complete; an admin rolls the next one back from the
//! browser and sees the rollback on its timeline; a viewer sees no write button, and the
//! API refuses the viewer's forged approval. The page logs no console error. Screenshots of
//! the main views are written to `target/dashboard-screenshots/` for review.
//!
//! Needs `chromium` and `chromium-driver` (`scripts/test` installs them). Skipped, with a
//! message, only when they are missing and the test does not run as root; as root without
//! them it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{BIN, Server};

const WAIT: Duration = Duration::from_secs(30);
/// Tries of an action whose element the page redrew under it.
const STALE_RETRIES: usize = 20;

/// Two waves: employees, then everyone after an approval.
const PLAN: &str = "name: two-waves\nsoak: 0s\nstages:\n  - name: employees\n    select: { cohort: employee }\n    bake: 0s\n    min_requests: 0\n    gates: []\n  - name: everyone\n    approval: true\n    bake: 0s\n    min_requests: 0\n    gates: []\n";

fn program(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A chromedriver and one headless Chromium session.
struct Browser {
    _driver: Proc,
    base: String,
    http: reqwest::blocking::Client,
}

impl Browser {
    fn start(chromedriver: &Path, chromium: &Path, profile: &Path) -> Self {
        let port = free_port();
        // Chromium's own scratch files go under the test's directory, removed with it.
        let scratch = profile.with_extension("tmp");
        std::fs::create_dir_all(&scratch).unwrap();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .env("TMPDIR", &scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Proc(driver);
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while !http
            .get(format!("{root}/status"))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .is_some_and(|status| status["value"]["ready"] == true)
        {
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1280,1100", format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let session: Value = http
            .post(format!("{root}/session"))
            .json(&capabilities)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        Self {
            _driver: driver,
            base: format!("{root}/session/{id}"),
            http,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|error| panic!("WebDriver {path}: {error}"))
    }

    /// A WebDriver call; its error (`{"error", "message"}`) when it fails.
    fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().unwrap().json().unwrap();
        if answer["value"]["error"].is_string() {
            return Err(answer["value"].clone());
        }
        Ok(answer["value"].clone())
    }

    fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Waits until `script` returns something other than null or false; returns it.
    fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.js(script);
            if !value.is_null() && value != false {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}; it shows: {}",
                self.js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    /// Clicks `css`. The page redraws its views whenever the server's store changes, so the
    /// element found may be replaced (by an identical one) before the click lands: it is found
    /// again then, as a person's click would land on whatever is drawn there.
    fn click(&self, css: &str) {
        for _ in 0..STALE_RETRIES {
            let id = self.element(css);
            match self.try_call(
                reqwest::Method::POST,
                &format!("/element/{id}/click"),
                Some(json!({})),
            ) {
                Ok(_) => return,
                Err(error) if error["error"] == "stale element reference" => continue,
                Err(error) => panic!("WebDriver click on {css}: {error}"),
            }
        }
        panic!("{css} was redrawn under every one of {STALE_RETRIES} clicks");
    }

    fn type_into(&self, css: &str, text: &str) {
        for _ in 0..STALE_RETRIES {
            let id = self.element(css);
            match self.try_call(
                reqwest::Method::POST,
                &format!("/element/{id}/value"),
                Some(json!({"text": text})),
            ) {
                Ok(_) => return,
                Err(error) if error["error"] == "stale element reference" => continue,
                Err(error) => panic!("WebDriver typing into {css}: {error}"),
            }
        }
        panic!("{css} was redrawn under every one of {STALE_RETRIES} tries to type");
    }

    fn screenshot(&self, path: &Path) {
        let data = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The browser's console and network errors since the last call.
    fn severe_log(&self) -> Vec<Value> {
        let log = self.call(
            reqwest::Method::POST,
            "/se/log",
            Some(json!({"type": "browser"})),
        );
        log.as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .cloned()
            .collect()
    }

    fn sign_in(&self, token: &str) {
        self.wait_for(
            "the sign-in form",
            "return !document.querySelector('#signin').hidden",
        );
        self.type_into("#token", token);
        self.click("#signin-button");
        self.wait_for(
            "the signed-in header",
            "return document.body.dataset.role || null",
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
    }
}

fn start_agent(server: &Server, dir: &Path, node: &str, cohort: &str) -> Proc {
    let token = server.http(
        reqwest::Method::POST,
        "/v1/tokens",
        &server.admin,
        &json!({"name": format!("agent-{node}"), "role": "agent", "node": node}),
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = std::fs::File::create(dir.join(format!("agent-{node}.log"))).unwrap();
    let child = Command::new(BIN)
        .args(["agent", "--server", &server.addr, "--node-id", node])
        .args(["--labels", &format!("cohort={cohort}")])
        .arg("--data-dir")
        .arg(dir.join(format!("agent-{node}")))
        .args(["--health-interval-ms", "250", "--watch-wait-ms", "2000"])
        .env("FAILSMALL_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_dashboard_shows_a_rollout_advance_takes_an_approval_and_hides_writes_from_viewers() {
    let (Some(chromedriver), Some(chromium)) = (program("chromedriver"), program("chromium"))
    else {
        if is_root() {
            panic!(
                "chromium and chromedriver are not installed; scripts/test installs them (apt-get install -y chromium chromium-driver)"
            );
        }
        println!(
            "SKIPPED: chromium and chromedriver are not installed and this is not root; scripts/test installs them"
        );
        return;
    };
    let server = Server::start("dashboard");
    let dir = server.dir.path().to_owned();
    let shots = screenshots_dir();
    let approver = server.token("ann", "approver");
    let viewer = server.token("vic", "viewer");
    server.http(
        reqwest::Method::POST,
        "/v1/units",
        &server.admin,
        &json!({"name": "checkout-flags", "owner": "payments", "description": "checkout's feature flags",
                "spec": {"format": "json", "max_bytes": 65536, "shape": "flag_set"}, "plan": PLAN}),
    );
    let _agents = [
        start_agent(&server, &dir, "emp-1", "employee"),
        start_agent(&server, &dir, "free-1", "free"),
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let nodes = server.http(reqwest::Method::GET, "/v1/nodes", &server.admin, &json!({}));
        if nodes["nodes"].as_array().is_some_and(|n| n.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the agents never registered");
        std::thread::sleep(Duration::from_millis(50));
    }

    let browser = Browser::start(&chromedriver, &chromium, &dir.join("chromium-profile"));
    browser.goto(&format!("{}/", server.addr));
    browser.screenshot(&shots.join("01-sign-in.png"));
    browser.sign_in(&approver);
    assert_eq!(browser.js("return document.body.dataset.role"), "approver");
    assert_eq!(
        browser.js("return location.href"),
        format!("{}/", server.addr),
        "the token never goes in the URL"
    );

    // A push starts a rollout of the unit's plan: the page shows it advance.
    let flags = br#"{"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}}"#;
    let pushed: Value = server
        .http
        .post(format!(
            "{}/v1/units/checkout-flags/versions?message=new+checkout",
            server.addr
        ))
        .bearer_auth(&server.admin)
        .body(flags.to_vec())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(pushed["hash"].is_string(), "{pushed}");
    browser.wait_for(
        "the rollout in flight",
        "return document.querySelector('#rollouts-active tr[data-rollout]') !== null",
    );
    browser.wait_for(
        "the first wave passed, waiting for an approval",
        "const d = document.querySelector('#rollout-detail'); return d && d.dataset.phase === 'awaiting_approval' && document.querySelector('button[data-action=approve]') !== null",
    );
    let stage = browser.js("return document.querySelector('#detail-stage').textContent");
    assert!(stage.as_str().unwrap().contains("employees"), "{stage}");
    browser.wait_for(
        "the first wave on the timeline",
        "return document.querySelector('#timeline rect[data-stage=employees]') !== null",
    );
    browser.screenshot(&shots.join("02-rollout-awaiting-approval.png"));

    // The approval, given in the browser, with its confirmation.
    browser.click("button[data-action=approve]");
    browser.wait_for(
        "the confirmation",
        "return document.querySelector('#confirm').classList.contains('open')",
    );
    browser.type_into("#confirm-reason", "checked the employee wave");
    browser.screenshot(&shots.join("03-confirm-approval.png"));
    browser.click("#confirm-yes");
    browser.wait_for(
        "the rollout completed",
        "const d = document.querySelector('#rollout-detail'); return d && d.dataset.status === 'completed'",
    );
    browser.wait_for(
        "the approval on the timeline",
        "return document.querySelector('#timeline line[data-mark=approved]') !== null",
    );
    browser.screenshot(&shots.join("04-rollout-completed.png"));
    let log = server.http(
        reqwest::Method::GET,
        "/v1/changelog?rollout=1",
        &server.admin,
        &json!({}),
    );
    let approved = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "approved")
        .cloned()
        .unwrap_or_else(|| panic!("no approval in {log}"));
    assert_eq!(approved["actor"], "ann", "{approved}");

    // The other views.
    browser.click("#tabs button[data-tab=changelog]");
    browser.wait_for(
        "the changelog",
        "return document.querySelector('#changelog tr[data-kind=approved]') !== null",
    );
    browser.type_into("#filter-kind", "stage_");
    browser.click("#changelog-filters button");
    browser.wait_for(
        "the changelog filtered by kind",
        "const rows = [...document.querySelectorAll('#changelog tr[data-kind]')]; return rows.length > 0 && rows.every((r) => r.dataset.kind.startsWith('stage_'))",
    );
    browser.screenshot(&shots.join("05-changelog.png"));
    browser.click("#tabs button[data-tab=nodes]");
    browser.wait_for(
        "both nodes up, with the version",
        "const rows = [...document.querySelectorAll('#nodes tr[data-node]')]; return rows.length === 2 && rows.every((r) => r.textContent.includes('up') && r.textContent.includes('checkout-flags @'))",
    );
    browser.screenshot(&shots.join("06-nodes.png"));
    browser.click("#tabs button[data-tab=units]");
    browser.click_when_present("#units tr[data-unit=checkout-flags]");
    browser.wait_for(
        "the unit's versions",
        "const box = document.querySelector('#unit-versions'); return !box.hidden && box.textContent.includes('new checkout')",
    );
    browser.screenshot(&shots.join("07-units.png"));
    // A change elsewhere shows without a click, well before the page's slow fallback refresh
    // (15 s): the page waits on GET /v1/changes and reads its views again when the store moves.
    let created = Instant::now();
    server.http(
        reqwest::Method::POST,
        "/v1/units",
        &server.admin,
        &json!({"name": "search-flags", "owner": "search", "spec": {"format": "json", "max_bytes": 4096}}),
    );
    browser.wait_for(
        "a unit created elsewhere, without a click",
        "return document.querySelector('#units tr[data-unit=search-flags]') !== null",
    );
    assert!(
        created.elapsed() < Duration::from_secs(8),
        "the new unit showed only after {:?}",
        created.elapsed()
    );
    let errors = browser.severe_log();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // An admin rolls the next version back from the browser: the moment of the rollback is
    // on its timeline.
    browser.click("#signout");
    browser.sign_in(&server.admin);
    browser.click("#tabs button[data-tab=rollouts]");
    let second = br#"{"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}}"#;
    let response = server
        .http
        .post(format!(
            "{}/v1/units/checkout-flags/versions?message=checkout+for+everyone",
            server.addr
        ))
        .bearer_auth(&server.admin)
        .body(second.to_vec())
        .send()
        .unwrap();
    assert!(response.status().is_success());
    browser.click_when_present("#rollouts-active tr[data-rollout='2']");
    browser.wait_for(
        "the second rollout's first wave, awaiting approval",
        "const d = document.querySelector('#rollout-detail'); return d && d.dataset.rollout === '2' && d.dataset.phase === 'awaiting_approval' && document.querySelector('button[data-action=rollback]') !== null",
    );
    browser.click("button[data-action=rollback]");
    browser.confirm(Some("holding this back"));
    browser.wait_for(
        "the rollback on the timeline",
        "const d = document.querySelector('#rollout-detail'); return d && d.dataset.status === 'rolled_back' && document.querySelector('#timeline line[data-mark=rolled_back]') !== null",
    );
    browser.screenshot(&shots.join("08-rolled-back.png"));
    let errors = browser.severe_log();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // The rollback opened an incident: the admin publishes an update from the browser, and
    // the public status page carries it.
    browser.click("#tabs button[data-tab=incidents]");
    browser.wait_for(
        "the rollback's incident, open",
        "const d = document.querySelector('#incident-detail'); return d && !d.hidden && d.dataset.status !== 'resolved' && document.querySelector('button[data-action=update]') !== null",
    );
    browser.type_into("#incident-update-text", "we rolled the checkout flag back");
    // A redraw while the update is being written (something changed elsewhere) keeps it.
    let drawn = browser.js("return document.body.dataset.refreshed");
    server.http(
        reqwest::Method::POST,
        "/v1/units",
        &server.admin,
        &json!({"name": "ads-flags", "owner": "ads", "spec": {"format": "json", "max_bytes": 4096}}),
    );
    browser.wait_for(
        "a redraw after a change elsewhere",
        &format!("return document.body.dataset.refreshed !== {drawn}"),
    );
    assert_eq!(
        browser.js("return document.querySelector('#incident-update-text').value"),
        "we rolled the checkout flag back"
    );
    browser.click("button[data-action=update]");
    browser.confirm(None);
    browser.wait_for(
        "the update in the incident",
        "return [...document.querySelectorAll('#incident-detail tr[data-update=written]')].some((r) => r.textContent.includes('we rolled the checkout flag back'))",
    );
    browser.screenshot(&shots.join("09-incident.png"));
    let status: Value = server
        .http
        .get(format!("{}/status.json", server.addr))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        status
            .to_string()
            .contains("we rolled the checkout flag back"),
        "{status}"
    );

    // Stop the line from the browser, then lift the freeze.
    browser.click("#tabs button[data-tab=freezes]");
    browser.click_when_present("#stop-the-line:not([hidden])");
    browser.confirm(Some("checkout incident"));
    browser.wait_for(
        "the freeze, active",
        "return [...document.querySelectorAll('#freezes tr[data-freeze]')].some((r) => r.textContent.includes('checkout incident') && r.textContent.includes('active'))",
    );
    let freezes = server.http(
        reqwest::Method::GET,
        "/v1/freezes",
        &server.admin,
        &json!({}),
    );
    assert_eq!(freezes["freezes"][0]["active"], true, "{freezes}");
    browser.screenshot(&shots.join("10-freezes.png"));
    browser.click("#freezes button[data-action=lift]");
    browser.confirm(Some("incident over"));
    browser.wait_for(
        "the freeze lifted",
        "return document.querySelector('#freezes button[data-action=lift]') === null",
    );
    let errors = browser.severe_log();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // A viewer: the same rollouts, no write button; the API refuses a forged approval.
    browser.click("#signout");
    browser.sign_in(&viewer);
    browser.click("#tabs button[data-tab=rollouts]");
    browser.wait_for(
        "the rollout, for the viewer",
        "const d = document.querySelector('#rollout-detail'); return d && !d.hidden && d.dataset.status === 'rolled_back'",
    );
    assert_eq!(
        browser.js("return document.querySelectorAll('button[data-action]').length"),
        0
    );
    browser.screenshot(&shots.join("11-viewer.png"));
    browser.click("#tabs button[data-tab=incidents]");
    browser.wait_for(
        "the incident, for the viewer",
        "const d = document.querySelector('#incident-detail'); return d && !d.hidden",
    );
    assert_eq!(
        browser.js("return document.querySelectorAll('button[data-action]').length === 0 && document.querySelector('#incident-open').hidden"),
        true
    );
    browser.click("#tabs button[data-tab=freezes]");
    browser.wait_for(
        "the freezes, for the viewer",
        "return document.querySelector('#freezes tbody') !== null && !document.querySelector('#view-freezes').hidden",
    );
    assert_eq!(
        browser.js("return document.querySelectorAll('button[data-action]').length === 0 && document.querySelector('#stop-the-line').hidden"),
        true
    );
    let errors = browser.severe_log();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let forged = server
        .http
        .post(format!("{}/v1/rollouts/1/approve", server.addr))
        .bearer_auth(&viewer)
        .json(&json!({"reason": "forged"}))
        .send()
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        browser.js("return sessionStorage.getItem('failsmall.token') !== null && !document.cookie.includes('fs_')"),
        true
    );
}

impl Browser {
    /// Answers the open confirmation: a reason typed in (when given), then Confirm.
    fn confirm(&self, reason: Option<&str>) {
        self.wait_for(
            "the confirmation",
            "return document.querySelector('#confirm').classList.contains('open')",
        );
        if let Some(reason) = reason {
            self.type_into("#confirm-reason", reason);
        }
        self.click("#confirm-yes");
    }

    /// Clicks `css` once it is on the page.
    fn click_when_present(&self, css: &str) {
        self.wait_for(
            css,
            &format!("return document.querySelector({css:?}) !== null"),
        );
        self.click(css);
    }
}
