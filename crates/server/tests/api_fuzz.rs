//! Invariant 8 at the HTTP boundary, by generated requests: no request makes the control plane
//! answer 5xx or drop the connection (a handler panic), every 4xx carries the error shape
//! `{"error": {"code", "message", "detail"}}`, and `/healthz` still answers 200 afterwards.
//!
//! One real server serves every case. It holds a unit with a plan, two pushed versions (so a
//! rollout runs and one waits), a registered node with an agent token, and a unit without a
//! plan, so that generated requests reach handlers' deep code and not only "not found".
//!
//! Each case is one request to a route of [`route_table`]: its path parameters drawn from valid
//! values and hostile ones, its query from the route's parameters, its body a mutated valid
//! body, a JSON document biased towards the API's field names, or raw bytes; sent as the admin
//! mostly, sometimes as the agent, a deployer, an approver, a bad token or nobody. Most cases
//! generate one part (path, query or body) freely and keep the others valid, so a hostile part
//! gets past the checks of the others. Requests are written on a raw TCP connection, so dot
//! segments and malformed percent-encoding reach the server as they are, and a connection
//! closed without an answer is seen as such.
//!
//! The seed is fixed, so CI checks the same requests every run; `FAILSMALL_FUZZ_SEED=N`
//! replays or explores a run (the seed is printed at the start and in a failure) and
//! `FAILSMALL_FUZZ_SEED=clock` picks a new one;
//! `FAILSMALL_FUZZ_CASES` changes the number of cases (default 1000).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use common::{TestServer, features, fresh_dir};
use failsmall_server::api::{RouteSpec, route_table};
use failsmall_server::auth::Role;
use failsmall_testkit::fuzz::{cases, runner, seed};
use failsmall_testkit::wire::{Answer, Wire, exchange};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long one raw exchange waits for the server to answer and close.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A plan whose first stage waits for approval and bakes for an hour: its rollout stays
/// running (until a generated command ends it), and the next version's rollout waits.
const PLAN: &str = "name: fuzz\nstages:\n  - name: canary\n    select: { cohort: canary }\n    bake: 1h\n    min_requests: 10\n    gates:\n      - error_rate > 0.5%\n    approval: true\n  - name: rest\n    bake: 1h\n";

const SPEC: &str = r#"{"format": "json", "max_bytes": 4096, "max_entries": [{"path": "/features", "max": 3}], "unique_entries": [{"path": "/features", "key": "name"}], "schema": {"type": "object", "required": ["features"]}}"#;

/// Plan texts: valid ones (one that promotes at once, so rollouts complete and queued ones
/// start) and ones at or past every limit of the plan format.
const PLANS: &[&str] = &[
    PLAN,
    "name: instant\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 0\n    gates: []\n",
    "name: gated\nstages:\n  - bake: 0s\n    min_requests: 0\n    gates: []\n    approval: true\n",
    "name: p\nstages: []\n",
    "name: p\nstages:\n  - percent: 0.001%\n",
    "name: p\nstages:\n  - percent: 0.01%\n    select: { cohort: canary }\n",
    "name: p\nstages:\n  - bake: 99999999999999999999d\n",
    "name: p\nstages:\n  - bake: 7d\n    timeout: 1ms\n",
    "name: p\nqueue_limit: 18446744073709551615\nstages:\n  - {}\n",
    "name: p\nqueue_limit: 0\nsupersede_queued: true\nstages:\n  - {}\n",
    "name: p\nconcurrency: train\nsupersede_queued: true\nstages:\n  - select: { cohort: [canary, canary] }\n    gates: ['p99_latency > 1e15ms OR error_rate > 100%', 'significant(error_rate > baseline.error_rate)']\n",
    "name: p\nhealth_check: { path: /health, expect_status: 99999, timeout: 5m }\nstages:\n  - approval: true\n",
    "name: p\nstages:\n  - gates: ['((((((((((((((((((((((((((((((((((error_rate > 1))))))))))))))))))))))))))))))))))']\n",
    "name: p\nstages:\n  - min_requests: 1000000000\n    hard_signals: { rejections: 0, crashes: 0, health_check_failures: 0, silent_nodes: 0 }\n",
    "name: p\ndefaults: { bake: 0s, silence: 0s, min_requests: 0 }\nstages:\n  - name: a\n  - name: a\n",
    "{\"name\": \"p\", \"stages\": [{\"bake\": \"0s\", \"min_requests\": 0, \"gates\": []}]}",
    "&a name: *a",
    "name: p\n---\nname: q\n",
    "name: p\nstages:\n  - select: { \"\": \"\" }\n    percent: -1\n",
    "name: p\nstages:\n  - - - - - - - - - - - - - - - - - - - - 1\n",
];

/// Field names the API knows, for generated JSON objects.
const FIELD_NAMES: &[&str] = &[
    "name",
    "spec",
    "format",
    "max_bytes",
    "max_entries",
    "unique_entries",
    "path",
    "max",
    "key",
    "schema",
    "fail_mode",
    "safe_default",
    "labels",
    "kind",
    "unit",
    "version",
    "reports",
    "plan",
    "plan_file",
    "command",
    "reason",
    "revision",
    "role",
    "node",
    "sample",
    "requests",
    "errors",
    "latency",
    "counts",
    "since_ms",
    "stale_ms",
    "seq",
    "override_quarantine",
    "validator",
    "timeout_ms",
    "owner",
    "description",
    "features",
    "type",
    "required",
];

/// Words the API gives meaning to, for generated JSON strings. `@unit`, `@hash1`, `@hash2`
/// and `@node` become the fixture's values when a body is written.
const VALUE_WORDS: &[&str] = &[
    "@unit",
    "@hash1",
    "@hash2",
    "@node",
    "fuzz",
    "plain",
    "fuzz-node",
    "json",
    "yaml",
    "toml",
    "raw",
    "open",
    "closed",
    "viewer",
    "deployer",
    "approver",
    "admin",
    "agent",
    "pause",
    "resume",
    "promote",
    "abort",
    "rollback",
    "approve",
    "applied",
    "rejected",
    "crashed",
    "health",
    "health_check_failed",
    "stale",
    "fresh",
    "removed",
    "fetch_failed",
    "untrusted",
    "repaired",
    "/features",
    "object",
    "array",
    "0000000000000000000000000000000000000000000000000000000000000000",
];

/// Numbers as JSON text, including ones no Rust integer or float holds.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "8",
    "-1",
    "100",
    "4096",
    "60000",
    "65536",
    "65537",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "1.5",
    "-0.0",
    "1e3",
    "1E-7",
    "1e308",
    "1e400",
    "-1e400",
];

/// Path segments and query values that should be refused or found absent, never crash.
const HOSTILE: &[&str] = &[
    "",
    ".",
    "..",
    "%2e%2e",
    "%2E%2E%2F%2E%2E",
    "../../../etc/passwd",
    "%00",
    "%ff",
    "%fe%ff%00",
    "%",
    "%zz",
    "%2F",
    "a%2Fb",
    "a%20b",
    "%C3%A9",
    "%F0%9F%98%80",
    "%E2%80%AE",
    "%ED%A0%80",
    "-1",
    "0",
    "+1",
    "r1",
    "r",
    "r-1",
    "1e3",
    "0x10",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "-9223372036854775809",
    "=",
    "a=b=c",
    "cohort=",
    "=canary",
    "true",
    "null",
    "[]",
    "{}",
    "%7B%7D",
    "é",
    "😀",
    "\u{202e}",
    "\u{0}",
    " ",
    "\t",
];

/// Query parameter names for every route, beyond the route's own.
const EXTRA_QUERY_NAMES: &[&str] = &["", "x", "message", "unit", "limit", "after", "%00", "é"];

/// The query parameters a route takes (the changelog's are those of the OpenAPI document).
fn query_names(route: &RouteSpec) -> &'static [&'static str] {
    match (route.method.as_str(), route.path) {
        ("GET", "/v1/changelog" | "/v1/changelog.atom") => &[
            "unit", "rollout", "since_ms", "limit", "cursor", "order", "label",
        ],
        ("POST", "/v1/units/{unit}/versions") => &["message", "parent", "skip_validation"],
        ("GET", "/v1/units/{unit}/diff") => &["from", "to"],
        ("GET", "/v1/nodes/{node}/desired") => &["after", "wait_ms"],
        _ => &[],
    }
}

// --- the generated case --------------------------------------------------------------------

/// A JSON document as text to be written, so numbers beyond `f64` and duplicate keys are
/// expressible.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(&'static str),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

#[derive(Debug, Clone)]
enum Op {
    Replace(J),
    Remove,
    Insert(String, J),
}

/// A change to a valid body: walk `path` (indices modulo each container's length), then
/// apply `op` there.
#[derive(Debug, Clone)]
struct Mutation {
    path: Vec<usize>,
    op: Op,
}

#[derive(Debug, Clone, Copy)]
enum Nesting {
    /// `[[[...]]]`: JSON, and YAML flow style.
    Arrays,
    /// `{"reports":{"reports":...}}`.
    Objects,
    /// `- - - ...`: YAML block style, up to [`YAML_BLOCK_DEPTH_MAX`] levels (see the regression
    /// test at the end of this file).
    YamlBlock,
}

/// The deepest YAML block nesting generated (see [`Nesting::YamlBlock`]).
const YAML_BLOCK_DEPTH_MAX: usize = 20_000;

#[derive(Debug, Clone)]
enum Body {
    Empty,
    /// One of the route's valid bodies, changed by the mutations.
    Template(usize, Vec<Mutation>),
    Json(J),
    Raw(Vec<u8>),
    /// `depth` levels of one way of nesting.
    Nested(usize, Nesting),
    /// `{"reports": [...]}` with `count` health reports.
    Batch(usize),
}

/// A value for a path parameter or query value.
#[derive(Debug, Clone)]
enum Piece {
    /// The n-th valid value of its kind (modulo how many there are).
    Valid(usize),
    Hostile(&'static str),
    Generated(String),
    Long(usize, char),
}

#[derive(Debug, Clone)]
enum QueryName {
    /// The n-th parameter of the route (or of the extras when it has none).
    Known(usize),
    Extra(&'static str),
}

#[derive(Debug, Clone)]
enum Who {
    Admin,
    Agent,
    Deployer,
    Approver,
    Nobody,
    BadToken(&'static str),
}

#[derive(Debug, Clone)]
enum MethodChoice {
    Route,
    Head,
    Other(&'static str),
}

/// Which part of a request is generated freely; the others are valid, so that a hostile
/// part reaches the code behind the checks of the other parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Focus {
    Path,
    Query,
    Body,
    Everything,
}

#[derive(Debug, Clone)]
struct Case {
    focus: Focus,
    route: usize,
    method: MethodChoice,
    params: Vec<Piece>,
    query: Vec<(QueryName, Piece)>,
    body: Body,
    who: Who,
    content_type: Option<&'static str>,
}

fn json_strategy() -> impl Strategy<Value = J> {
    let string = prop_oneof![
        6 => select(VALUE_WORDS).prop_map(|s| J::Str(s.to_owned())),
        2 => select(HOSTILE).prop_map(|s| J::Str(s.to_owned())),
        2 => "\\PC{0,24}".prop_map(J::Str),
        1 => (1usize..6000).prop_map(|n| J::Str("a".repeat(n))),
        2 => select(PLANS).prop_map(|s| J::Str(s.to_owned())),
    ];
    let leaf = prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        3 => select(NUMBERS).prop_map(J::Num),
        4 => string,
    ];
    let key = prop_oneof![
        8 => select(FIELD_NAMES).prop_map(str::to_owned),
        1 => select(HOSTILE).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    let key = prop_oneof![
        4 => select(FIELD_NAMES).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ];
    let op = prop_oneof![
        5 => json_strategy().prop_map(Op::Replace),
        2 => Just(Op::Remove),
        2 => (key, json_strategy()).prop_map(|(k, v)| Op::Insert(k, v)),
    ];
    (prop::collection::vec(0usize..8, 0..4), op).prop_map(|(path, op)| Mutation { path, op })
}

fn body_strategy() -> impl Strategy<Value = Body> {
    prop_oneof![
        2 => Just(Body::Empty),
        3 => (0usize..16).prop_map(|t| Body::Template(t, Vec::new())),
        6 => (0usize..16, prop::collection::vec(mutation_strategy(), 1..4))
            .prop_map(|(t, m)| Body::Template(t, m)),
        3 => json_strategy().prop_map(Body::Json),
        2 => prop::collection::vec(any::<u8>(), 0..96).prop_map(Body::Raw),
        1 => (
            select(&[2usize, 64, 127, 128, 129, 1000, 20_000][..]),
            select(&[Nesting::Arrays, Nesting::Objects, Nesting::YamlBlock][..])
        )
            .prop_map(|(d, n)| Body::Nested(d, n)),
        1 => select(&[0usize, 1, 2, 400, 1001][..]).prop_map(Body::Batch),
    ]
}

fn piece_strategy() -> impl Strategy<Value = Piece> {
    prop_oneof![
        5 => (0usize..8).prop_map(Piece::Valid),
        4 => select(HOSTILE).prop_map(Piece::Hostile),
        2 => "\\PC{0,24}".prop_map(Piece::Generated),
        1 => "[a-zA-Z0-9._~%=+-]{0,40}".prop_map(Piece::Generated),
        1 => (select(&[64usize, 65, 129, 257, 4097, 8000][..]), select(&['a', '9', 'é', '%'][..]))
            .prop_map(|(n, c)| Piece::Long(n, c)),
    ]
}

fn case_strategy(routes: usize) -> impl Strategy<Value = Case> {
    let method = prop_oneof![
        12 => Just(MethodChoice::Route),
        1 => Just(MethodChoice::Head),
        1 => select(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"][..])
            .prop_map(MethodChoice::Other),
    ];
    let query_name = prop_oneof![
        6 => (0usize..8).prop_map(QueryName::Known),
        1 => select(EXTRA_QUERY_NAMES).prop_map(QueryName::Extra),
    ];
    let who = prop_oneof![
        14 => Just(Who::Admin),
        3 => Just(Who::Agent),
        1 => Just(Who::Deployer),
        1 => Just(Who::Approver),
        1 => Just(Who::Nobody),
        1 => select(&["fs_wrong", "", "Basic abc", "Bearer", "Bearer \u{1}"][..])
            .prop_map(Who::BadToken),
    ];
    let content_type = prop_oneof![
        4 => Just(Some("application/json")),
        2 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/x-www-form-urlencoded")),
    ];
    let focus = prop_oneof![
        2 => Just(Focus::Path),
        2 => Just(Focus::Query),
        4 => Just(Focus::Body),
        2 => Just(Focus::Everything),
    ];
    (
        focus,
        0..routes,
        method,
        prop::collection::vec(piece_strategy(), 2),
        prop::collection::vec((query_name, piece_strategy()), 0..5),
        body_strategy(),
        who,
        content_type,
    )
        .prop_map(
            |(focus, route, method, params, query, body, who, content_type)| Case {
                focus,
                route,
                method,
                params,
                query,
                body,
                who,
                content_type,
            },
        )
}

// --- writing a case as a request -----------------------------------------------------------

/// What the server holds before the first case.
struct Fixture {
    address: SocketAddr,
    admin: String,
    agent: String,
    deployer: String,
    approver: String,
    hash1: String,
    hash2: String,
    rollouts: Vec<u64>,
    /// Tokens a generated request may revoke; every other token is kept alive.
    revocable: Vec<u64>,
    protected: Vec<u64>,
}

impl Fixture {
    fn valid(&self, kind: &str, n: usize) -> String {
        let zeros = "0".repeat(64);
        let choices: Vec<String> = match kind {
            "unit" => vec!["fuzz".into(), "plain".into()],
            "hash" | "sha256" | "parent" | "from" | "to" => {
                vec![self.hash1.clone(), self.hash2.clone(), zeros]
            }
            "node" => vec!["fuzz-node".into(), "other-node".into()],
            // Rollouts started by earlier cases have the next ids.
            "id" => self
                .rollouts
                .iter()
                .chain(&self.revocable)
                .copied()
                .chain(1..=12)
                .map(|id| id.to_string())
                .chain(["999999".to_owned()])
                .collect(),
            "rollout" => self
                .rollouts
                .iter()
                .flat_map(|id| [format!("r{id}"), id.to_string()])
                .collect(),
            "since_ms" | "cursor" | "after" => vec!["0".into(), "1".into(), "3".into()],
            "limit" => vec!["1".into(), "100".into(), "1000".into()],
            // Short: a valid wait holds the request that long.
            "wait_ms" => vec!["0".into(), "10".into(), "50".into()],
            "skip_validation" => vec!["true".into(), "false".into()],
            "order" => vec!["newest".into(), "oldest".into()],
            "label" => vec!["cohort=canary".into(), "cohort=".into(), "x=y".into()],
            "message" => vec!["fuzz".into(), "a%20message".into()],
            _ => vec!["fuzz".into()],
        };
        choices[n % choices.len()].clone()
    }

    /// A query the route takes as valid.
    fn valid_query(&self, route: &RouteSpec) -> Vec<String> {
        match (route.method.as_str(), route.path) {
            ("GET", "/v1/changelog" | "/v1/changelog.atom") => {
                vec!["unit=fuzz".to_owned(), "limit=100".to_owned()]
            }
            ("POST", "/v1/units/{unit}/versions") => vec!["message=fuzz".to_owned()],
            ("GET", "/v1/units/{unit}/diff") => {
                vec![format!("from={}", self.hash1), format!("to={}", self.hash2)]
            }
            ("GET", "/v1/nodes/{node}/desired") => {
                vec!["after=0".to_owned(), "wait_ms=10".to_owned()]
            }
            _ => Vec::new(),
        }
    }

    fn piece(&self, kind: &str, piece: &Piece) -> String {
        match piece {
            Piece::Valid(n) => self.valid(kind, *n),
            Piece::Hostile(text) => (*text).to_owned(),
            Piece::Generated(text) => text.clone(),
            Piece::Long(n, c) => c.to_string().repeat(*n),
        }
    }

    fn word(&self, word: &str) -> String {
        match word {
            "@unit" => "fuzz".to_owned(),
            "@hash1" => self.hash1.clone(),
            "@hash2" => self.hash2.clone(),
            "@node" => "fuzz-node".to_owned(),
            other => other.to_owned(),
        }
    }

    /// The route's valid bodies (none for a route without one).
    fn templates(&self, method: &str, path: &str) -> Vec<J> {
        let s = |text: &str| J::Str(text.to_owned());
        let obj = |fields: Vec<(&str, J)>| {
            J::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        };
        let spec = parse_template(SPEC);
        let (h1, h2) = (s(&self.hash1), s(&self.hash2));
        let counts = J::Arr(vec![J::Num("0"); failsmall_core::health::LATENCY_BUCKETS]);
        let sample = obj(vec![
            ("requests", J::Num("100")),
            ("errors", J::Num("0")),
            ("latency", obj(vec![("counts", counts)])),
        ]);
        let health = obj(vec![
            ("kind", s("health")),
            ("unit", s("fuzz")),
            ("version", h1.clone()),
            ("sample", sample),
        ]);
        match (method, path) {
            ("POST", "/v1/units") => vec![
                obj(vec![
                    ("name", s("fz-new")),
                    ("spec", spec.clone()),
                    ("owner", s("bots")),
                    ("description", s("d")),
                    ("plan", s(PLAN)),
                ]),
                obj(vec![
                    ("name", s("fz-raw")),
                    (
                        "spec",
                        parse_template(r#"{"format": "raw", "max_bytes": 8}"#),
                    ),
                ]),
                obj(vec![
                    ("name", s("fz-validated")),
                    ("spec", spec),
                    (
                        "validator",
                        obj(vec![
                            ("command", J::Arr(vec![s("x"), s("--check"), s("{path}")])),
                            ("timeout_ms", J::Num("1000")),
                        ]),
                    ),
                ]),
            ],
            ("PUT", "/v1/units/{unit}") => vec![
                obj(vec![
                    ("revision", J::Num("1")),
                    ("spec", spec.clone()),
                    ("owner", s("bots")),
                    ("plan", s(PLAN)),
                ]),
                obj(vec![
                    ("revision", J::Num("2")),
                    ("spec", spec),
                    ("plan", J::Null),
                    ("validator", J::Null),
                ]),
            ],
            ("PUT", "/v1/nodes/{node}") => vec![
                obj(vec![("labels", obj(vec![("cohort", s("canary"))]))]),
                obj(vec![]),
            ],
            ("POST", "/v1/nodes/{node}/reports") => vec![
                health.clone(),
                obj(vec![
                    ("kind", s("applied")),
                    ("unit", s("fuzz")),
                    ("version", h1.clone()),
                ]),
                obj(vec![
                    ("kind", s("rejected")),
                    ("unit", s("fuzz")),
                    ("version", h2.clone()),
                    ("reason", s("does not parse")),
                ]),
                obj(vec![
                    ("kind", s("crashed")),
                    ("unit", s("plain")),
                    ("version", h1.clone()),
                    ("reason", s("exit 1")),
                ]),
                obj(vec![
                    ("kind", s("health_check_failed")),
                    ("unit", s("fuzz")),
                    ("version", h1.clone()),
                    ("reason", s("503")),
                ]),
                obj(vec![
                    ("kind", s("stale")),
                    ("since_ms", J::Num("1")),
                    ("seq", J::Num("1")),
                ]),
                obj(vec![("kind", s("fresh")), ("stale_ms", J::Num("1000"))]),
                obj(vec![
                    ("kind", s("removed")),
                    ("unit", s("fuzz")),
                    ("version", h1.clone()),
                ]),
                obj(vec![
                    ("kind", s("fetch_failed")),
                    ("unit", s("fuzz")),
                    ("version", h2.clone()),
                    ("reason", s("hash mismatch")),
                ]),
                obj(vec![
                    ("kind", s("untrusted")),
                    ("seq", J::Num("3")),
                    ("reason", s("signature")),
                ]),
                obj(vec![
                    ("kind", s("repaired")),
                    ("unit", s("fuzz")),
                    ("version", h1.clone()),
                    ("reason", s("bytes changed")),
                ]),
                obj(vec![("reports", J::Arr(vec![health.clone(), health]))]),
            ],
            ("POST", "/v1/rollouts") => vec![obj(vec![
                ("unit", s("fuzz")),
                ("version", h1),
                ("plan", s(PLAN)),
                ("plan_file", s("fuzz.plan")),
                ("reason", s("again")),
                ("override_quarantine", J::Bool(false)),
            ])],
            ("POST", "/v1/rollouts/{id}/commands") => {
                ["pause", "resume", "promote", "abort", "rollback", "approve"]
                    .iter()
                    .map(|c| obj(vec![("command", s(c)), ("reason", s("fuzz"))]))
                    .collect()
            }
            ("POST", "/v1/rollouts/{id}/approve") => vec![obj(vec![("reason", s("ok"))])],
            ("POST", "/v1/tokens") => vec![
                obj(vec![("name", s("fz")), ("role", s("viewer"))]),
                obj(vec![
                    ("name", s("fz-agent")),
                    ("role", s("agent")),
                    ("node", s("fuzz-node")),
                ]),
            ],
            ("POST", "/v1/units/{unit}/versions") => [1usize, 2, 3, 4]
                .iter()
                .map(|&n| parse_template(&String::from_utf8(features(n)).unwrap()))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn write_json(&self, value: &J, out: &mut String) {
        match value {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(text) => out.push_str(&Value::String(self.word(text)).to_string()),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.write_json(item, out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (key, item)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    // A validator names a program the server runs: never one that exists.
                    if key == "command"
                        && let J::Arr(argv) = item
                    {
                        let mut argv = argv.clone();
                        if let Some(first) = argv.first_mut() {
                            let program = match first {
                                J::Str(text) => text.clone(),
                                _ => String::new(),
                            };
                            *first =
                                J::Str(format!("/nonexistent/failsmall-fuzz-validator/{program}"));
                        }
                        self.write_json(&J::Arr(argv), out);
                        continue;
                    }
                    self.write_json(item, out);
                }
                out.push('}');
            }
        }
    }

    fn body(&self, route: &RouteSpec, body: &Body) -> Vec<u8> {
        let json = |value: &J| {
            let mut out = String::new();
            self.write_json(value, &mut out);
            out.into_bytes()
        };
        match body {
            Body::Empty => Vec::new(),
            Body::Template(n, mutations) => {
                let templates = self.templates(route.method.as_str(), route.path);
                let Some(template) = templates.get(n % templates.len().max(1)) else {
                    return b"{}".to_vec();
                };
                let mut value = template.clone();
                for mutation in mutations {
                    mutate(&mut value, &mutation.path, mutation.op.clone());
                }
                json(&value)
            }
            Body::Json(value) => json(value),
            Body::Raw(bytes) => bytes.clone(),
            Body::Nested(depth, nesting) => {
                let (open, close, depth) = match nesting {
                    Nesting::Arrays => ("[", "]", *depth),
                    Nesting::Objects => ("{\"reports\":", "}", *depth),
                    Nesting::YamlBlock => ("- ", "", (*depth).min(YAML_BLOCK_DEPTH_MAX)),
                };
                let mut text = open.repeat(depth);
                text.push_str("null");
                text.push_str(&close.repeat(depth));
                text.into_bytes()
            }
            Body::Batch(count) => {
                let health = &self.templates("POST", "/v1/nodes/{node}/reports")[0];
                json(&J::Obj(vec![(
                    "reports".to_owned(),
                    J::Arr(vec![health.clone(); *count]),
                )]))
            }
        }
    }
}

/// A JSON text as a [`J`] (for the valid bodies written above).
fn parse_template(text: &str) -> J {
    fn convert(value: Value) -> J {
        match value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(b),
            Value::Number(n) => J::Num(
                NUMBERS
                    .iter()
                    .find(|s| **s == n.to_string())
                    .map_or("0", |s| s),
            ),
            Value::String(s) => J::Str(s),
            Value::Array(items) => J::Arr(items.into_iter().map(convert).collect()),
            Value::Object(fields) => {
                J::Obj(fields.into_iter().map(|(k, v)| (k, convert(v))).collect())
            }
        }
    }
    convert(serde_json::from_str(text).unwrap())
}

fn mutate(value: &mut J, path: &[usize], op: Op) {
    let remove_here = path.len() == 1 && matches!(op, Op::Remove);
    match (path.split_first(), &mut *value) {
        (Some((&i, rest)), J::Obj(fields)) if !fields.is_empty() => {
            let index = i % fields.len();
            if remove_here {
                fields.remove(index);
            } else {
                mutate(&mut fields[index].1, rest, op);
            }
        }
        (Some((&i, rest)), J::Arr(items)) if !items.is_empty() => {
            let index = i % items.len();
            if remove_here {
                items.remove(index);
            } else {
                mutate(&mut items[index], rest, op);
            }
        }
        _ => match op {
            Op::Replace(new) => *value = new,
            Op::Remove => *value = J::Null,
            Op::Insert(key, new) => match value {
                J::Obj(fields) => fields.push((key, new)),
                J::Arr(items) => items.push(new),
                _ => *value = new,
            },
        },
    }
}

/// Percent-encodes what may not stand in a request target (RFC 3986: anything but unreserved
/// characters, sub-delimiters, `:`, `@`, `/` and `%`), as any HTTP client does; `%` is sent as
/// generated, so malformed escapes reach the server. A target with other bytes is refused by
/// the HTTP parser before the API sees it.
fn target_text(text: &str, keep: &[u8]) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        let plain = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&byte);
        if plain || keep.contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn wire(case: &Case, table: &[RouteSpec], fixture: &Fixture) -> Wire {
    let route = &table[case.route];
    let method = match case.method {
        MethodChoice::Route => route.method.as_str().to_owned(),
        MethodChoice::Head => "HEAD".to_owned(),
        MethodChoice::Other(m) => m.to_owned(),
    };
    let free = |part: Focus| case.focus == part || case.focus == Focus::Everything;
    let mut path = String::new();
    let mut params = case.params.iter();
    for segment in route.path.split('/').skip(1) {
        path.push('/');
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(kind) => {
                let piece = match params.next() {
                    Some(piece) if free(Focus::Path) => piece.clone(),
                    Some(Piece::Valid(n)) => Piece::Valid(*n),
                    _ => Piece::Valid(0),
                };
                let mut value = target_text(&fixture.piece(kind, &piece), &[]);
                if (method == "DELETE" && route.path == "/v1/tokens/{id}")
                    || route.path == "/v1/tokens/{id}/rotate"
                {
                    value = keep_protected_tokens(value, fixture);
                }
                path.push_str(&value);
            }
            None => path.push_str(segment),
        }
    }
    let names = query_names(route);
    let pairs: Vec<String> = case
        .query
        .iter()
        .map(|(name, piece)| {
            let name = match name {
                QueryName::Known(n) if !names.is_empty() => names[n % names.len()],
                QueryName::Known(n) => EXTRA_QUERY_NAMES[n % EXTRA_QUERY_NAMES.len()],
                QueryName::Extra(name) => name,
            };
            let value = target_text(&fixture.piece(name, piece), &[]);
            let value = value.replace('&', "%26");
            format!("{}={value}", target_text(name, &[]))
        })
        .collect();
    let pairs = if free(Focus::Query) {
        pairs
    } else {
        fixture.valid_query(route)
    };
    let target = if pairs.is_empty() {
        path
    } else {
        format!("{path}?{}", pairs.join("&"))
    };
    let mut headers = Vec::new();
    let token = match &case.who {
        Who::Admin => Some(format!("Bearer {}", fixture.admin)),
        Who::Agent => Some(format!("Bearer {}", fixture.agent)),
        Who::Deployer => Some(format!("Bearer {}", fixture.deployer)),
        Who::Approver => Some(format!("Bearer {}", fixture.approver)),
        Who::Nobody => None,
        Who::BadToken(value) => Some(target_text(value, b" ")),
    };
    if let Some(token) = token {
        headers.push(("authorization".to_owned(), token));
    }
    if let Some(content_type) = case.content_type {
        headers.push(("content-type".to_owned(), content_type.to_owned()));
    }
    Wire {
        method,
        target,
        headers,
        body: if free(Focus::Body) {
            fixture.body(route, &case.body)
        } else {
            // The generated template, unchanged.
            let template = match case.body {
                Body::Template(n, _) => n,
                _ => 0,
            };
            fixture.body(route, &Body::Template(template, Vec::new()))
        },
    }
}

/// A DELETE of a token other than the revocable ones revokes one of those instead, so the
/// admin and agent tokens stay usable for later cases.
fn keep_protected_tokens(segment: String, fixture: &Fixture) -> String {
    let decoded = percent_decode(&segment);
    let protected = std::str::from_utf8(&decoded)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .is_some_and(|id| fixture.protected.contains(&id));
    if protected {
        fixture.revocable[0].to_string()
    } else {
        segment
    }
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The property for one answer; `Err` names what broke.
fn judge(route: &RouteSpec, request: &Wire, answer: &Answer) -> Result<(), String> {
    let status = StatusCode::from_u16(answer.status).map_err(|e| e.to_string())?;
    let body: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let code = body
        .as_ref()
        .and_then(|b| b["error"]["code"].as_str())
        .unwrap_or("");
    if status.is_server_error() {
        // The one documented 5xx reachable here: the report batcher is busy or closed.
        let busy = status == StatusCode::SERVICE_UNAVAILABLE
            && route.path == "/v1/nodes/{node}/reports"
            && code == "unavailable";
        if !busy {
            return Err(format!("answered {status}"));
        }
    }
    // The HTTP layer itself (hyper) refuses a URI or headers too long to parse before any
    // route sees the request, with an empty body: not an API answer.
    let protocol = matches!(
        status,
        StatusCode::URI_TOO_LONG | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    ) && answer.body.is_empty();
    if status.is_client_error() && request.method != "HEAD" && !protocol {
        let shaped = body.as_ref().is_some_and(|b| {
            let error = &b["error"];
            error["code"].is_string()
                && error["message"].is_string()
                && error.get("detail").is_some()
        });
        if !shaped {
            return Err(format!("answered {status} without the error shape"));
        }
        let json = answer
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json"));
        if !json {
            return Err(format!(
                "answered {status} with a body that is not JSON-typed"
            ));
        }
    }
    Ok(())
}

// --- the fixture ---------------------------------------------------------------------------

async fn fixture(server: &TestServer) -> Fixture {
    let spec: Value = serde_json::from_str(SPEC).unwrap();
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "fuzz", "spec": spec, "owner": "bots", "plan": PLAN})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "plain", "spec": {"format": "yaml", "max_bytes": 1024}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let agent = server.agent_token("fuzz-agent", "fuzz-node").await;
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/nodes/fuzz-node",
            Some(&agent),
            Some(json!({"labels": {"cohort": "canary"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deployer = server.token("fuzz-ci", Role::Deployer).await;
    let approver = server.token("fuzz-approver", Role::Approver).await;

    let admin = server.admin.clone();
    let mut hashes = Vec::new();
    for (count, message) in [(2, "message=one"), (1, "message=two")] {
        let (status, version) = server.push("fuzz", &admin, message, &features(count)).await;
        assert_eq!(status, StatusCode::CREATED, "{version}");
        hashes.push(version["hash"].as_str().unwrap().to_owned());
    }
    let (status, pushed) = server
        .push("plain", &admin, "message=plain", b"a: 1\n")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pushed}");

    let (status, listed) = server.admin(Method::GET, "/v1/rollouts", None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let rollouts: Vec<u64> = listed["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|view| view["id"].as_u64())
        .collect();
    assert_eq!(rollouts.len(), 2, "{listed}");

    let (_, tokens) = server.admin(Method::GET, "/v1/tokens", None).await;
    let protected: Vec<u64> = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let mut revocable = Vec::new();
    for name in ["fuzz-spare-1", "fuzz-spare-2"] {
        let (status, created) = server
            .admin(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": name, "role": "viewer"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        revocable.push(created["record"]["id"].as_u64().unwrap());
    }
    let address = server
        .base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    Fixture {
        address,
        admin,
        agent,
        deployer,
        approver,
        hash1: hashes[0].clone(),
        hash2: hashes[1].clone(),
        rollouts,
        revocable,
        protected,
    }
}

/// Sends `request` and checks the property and that `/healthz` still answers 200; returns the
/// answer's status.
async fn check(fixture: &Fixture, route: &RouteSpec, request: &Wire) -> Result<u16, String> {
    let answer = exchange(fixture.address, request, READ_TIMEOUT).await?;
    let status = answer.status;
    judge(route, request, &answer).map_err(|why| {
        format!(
            "{why}: {}",
            String::from_utf8_lossy(&answer.body)
                .chars()
                .take(1000)
                .collect::<String>()
        )
    })?;
    let health = Wire::new("GET", "/healthz");
    let answer = exchange(fixture.address, &health, READ_TIMEOUT).await?;
    if answer.status != 200 {
        return Err(format!("/healthz answered {} afterwards", answer.status));
    }
    Ok(status)
}

#[test]
fn no_generated_request_gets_a_5xx_or_a_dropped_connection() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let scratch = fresh_dir("api-fuzz");
    // The Codex in warn mode judges every unit, plan, push and rollout the cases make (and
    // refuses none, so the fixture's units stand): no rule may turn an input into a 5xx.
    let server = runtime.block_on(TestServer::start_with(scratch.path(), |config| {
        config.codex.mode = failsmall_server::codex::CodexMode::Warn;
    }));
    let fixture = runtime.block_on(fixture(&server));
    let table = route_table();
    let seed = seed();
    eprintln!("api_fuzz: seed {seed} (replay with FAILSMALL_FUZZ_SEED={seed})");
    let mut runner = runner(cases(1000), seed, 300, 30_000);
    let started = std::time::Instant::now();
    // Per route, how many answers of each class (1xx..5xx): printed, to show what was reached.
    let classes = std::sync::Mutex::new(vec![[0u32; 5]; table.len()]);
    let result = runner.run(&case_strategy(table.len()), |case| {
        let route = &table[case.route];
        let request = wire(&case, &table, &fixture);
        runtime
            .block_on(check(&fixture, route, &request))
            .map(|status| {
                let class = usize::from(status / 100).clamp(1, 5) - 1;
                classes.lock().unwrap()[case.route][class] += 1;
            })
            .map_err(|why| {
                TestCaseError::fail(format!(
                    "{} {}: {why}\n  request: {}",
                    route.method,
                    route.path,
                    request.describe()
                ))
            })
    });
    eprintln!("api_fuzz: {:?} for the run", started.elapsed());
    for (route, counts) in table.iter().zip(classes.lock().unwrap().iter()) {
        eprintln!(
            "api_fuzz: {:>6} {:<34} 2xx {:>3}  3xx {:>3}  4xx {:>3}  5xx {:>3}",
            route.method.as_str(),
            route.path,
            counts[1],
            counts[2],
            counts[3],
            counts[4]
        );
    }
    if let Err(error) = result {
        panic!("seed {seed}: {error}");
    }
    runtime.block_on(server.stop());
}

/// Regression: a push of `- ` repeated 1000 times then `1` to a YAML unit used to abort the
/// server with a stack overflow (yaml-rust2's `Parser::load` recursed once per nesting level
/// before `MAX_DEPTH` was checked; an agent validating such a version would have crashed too).
/// A version nested too deep is a 422, and the server keeps answering.
#[tokio::test]
async fn a_yaml_version_nested_too_deep_is_refused_not_a_crash() {
    let scratch = fresh_dir("api-fuzz-deep-yaml");
    let server = TestServer::start(scratch.path()).await;
    let admin = server.admin.clone();
    let spec = json!({"format": "yaml", "max_bytes": common::MAX_BODY_BYTES});
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "deep", "spec": spec})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (open, close) in [
        ("- ", ""),
        ("? ", ""),
        ("- [", "]"),
        ("[", "]"),
        ("{a: ", "}"),
    ] {
        let depth = common::MAX_BODY_BYTES / 8;
        let content = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let (status, body) = server
            .push("deep", &admin, "message=deep", content.as_bytes())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{open:?}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
    }
    let (status, _) = server.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
