//! `failsmall demo -o json` runs the whole system in one process and its summary says what
//! happened: the good file completed, both incident files rolled back within the first stage,
//! each rollback's incident notified to the demo's own webhook receiver, all in under two
//! minutes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Nodes the demo plan's first stage selects: 3 regions × 2 employee nodes.
const FIRST_STAGE_NODES: u64 = 6;
const LIMIT: Duration = Duration::from_secs(120);

fn act(acts: &[Value], number: u64) -> &Value {
    acts.iter()
        .find(|act| act["act"] == number)
        .unwrap_or_else(|| panic!("no act {number} in {acts:#?}"))
}

#[test]
fn demo_json_summary_shows_the_good_file_completed_and_both_incidents_contained() {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_failsmall"))
        .args(["demo", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bound the wait: kill the demo if it runs past the limit (plus a margin for a busy CI).
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > LIMIT + Duration::from_secs(30) {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the demo ran past {LIMIT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(elapsed < LIMIT, "the demo took {elapsed:?}");

    // Only the summary is on stdout, as JSON.
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stdout}"));
    let acts = summary.as_array().expect("one object per act");
    assert_eq!(acts.len(), 3, "{summary:#}");
    for act in acts {
        for field in [
            "act",
            "outcome",
            "nodes_exposed",
            "nodes_total",
            "requests_failed",
            "detect_s",
            "revert_s",
        ] {
            assert!(act.get(field).is_some(), "{field} missing in {act}");
        }
        assert!(act["nodes_total"].as_u64().unwrap() >= 30, "{act}");
    }

    let good = act(acts, 1);
    assert_eq!(good["outcome"], "completed", "{good}");
    assert_eq!(good["nodes_exposed"], good["nodes_total"], "{good}");
    assert_eq!(good["requests_failed"], 0, "{good}");

    for number in [2, 3] {
        let bad = act(acts, number);
        assert_eq!(bad["outcome"], "rolled_back", "{bad}");
        let exposed = bad["nodes_exposed"].as_u64().unwrap();
        assert!(
            (1..=FIRST_STAGE_NODES).contains(&exposed),
            "act {number} reached {exposed} nodes, beyond the first stage: {bad}"
        );
        assert_eq!(bad["first_stage_nodes"], FIRST_STAGE_NODES, "{bad}");
        let detect_s = bad["detect_s"].as_f64().unwrap();
        let revert_s = bad["revert_s"].as_f64().unwrap();
        assert!((0.0..60.0).contains(&detect_s), "{bad}");
        assert!((0.0..60.0).contains(&revert_s), "{bad}");
        // The rollback opened an incident, shown on the public status page.
        assert_eq!(bad["incident"]["severity"], "sev2", "{bad}");
        let incident = bad["incident"]["id"].as_u64().unwrap();
        // ... and the control plane notified it: the demo's own receiver got the signed
        // generic JSON naming the incident, with its dedup key, and the Slack text.
        let notified = &bad["incident"]["notified"];
        assert_eq!(notified["event"], "incident_opened", "{bad}");
        assert_eq!(notified["incident"], incident, "{bad}");
        assert_eq!(
            notified["dedup_key"],
            format!("failsmall/incident/{incident}"),
            "{bad}"
        );
        assert_eq!(notified["signature_ok"], true, "{bad}");
        assert!(
            notified["delivery"]
                .as_str()
                .unwrap()
                .starts_with("failsmall-"),
            "{bad}"
        );
        let slack = notified["slack_text"].as_str().unwrap();
        assert!(
            slack.contains(&format!("incident opened: incident {incident} sev2")),
            "{slack}"
        );
    }
    assert!(good["incident"].is_null(), "{good}");
    // 18 Nov: the agents refuse the file before any consumer loads it.
    assert_eq!(act(acts, 2)["requests_failed"], 0);
    // 5 Dec: the fl1 consumers of the first stage fail until the rollback.
    assert!(act(acts, 3)["requests_failed"].as_u64().unwrap() > 0);
}
