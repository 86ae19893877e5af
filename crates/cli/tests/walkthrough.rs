//! The README's walkthrough, run as written: the shell block between
//! `<!-- walkthrough:begin -->` and `<!-- walkthrough:end -->` goes to `bash -euo pipefail`
//! from the repository's root, with this build's `failsmall` first on the `PATH`. It starts a
//! real server, four real agents with demo consumers and a load generator on 127.0.0.1 (every
//! port chosen by the OS), creates a unit, pushes, watches, sees the killswitch roll back by
//! itself, undoes, and goes back to an older version. Then its output must say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_failsmall");
/// The walkthrough takes under a minute alone; a loaded CI machine gets five.
const LIMIT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The block between the markers, without its code fence.
fn walkthrough(readme: &str) -> String {
    let begin = readme
        .find("<!-- walkthrough:begin -->")
        .expect("README.md has no <!-- walkthrough:begin --> marker");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("README.md has no <!-- walkthrough:end --> marker");
    let block = &readme[begin..end];
    let body = block
        .split_once("```sh\n")
        .expect("the walkthrough is a ```sh block")
        .1;
    body.rsplit_once("```")
        .expect("the walkthrough's block is closed")
        .0
        .to_owned()
}

/// Kills the script and everything it started (its own process group) if the test ends
/// before the script was reaped. Once it is reaped its pid is free, and with a small
/// `pid_max` the number may already lead another process group (a test of another binary, the
/// shell that runs the suite): it is disarmed then, and the script's own EXIT trap has ended
/// its jobs.
struct Group(Option<u32>);

impl Group {
    /// Kills the group now, while its leader is not reaped (its pid cannot be reused).
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let script = walkthrough(&readme);
    let scratch = failsmall_testkit::scratch_dir("failsmall-walkthrough-");
    let script_path = scratch.path().join("walkthrough.sh");
    std::fs::write(&script_path, &script).unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg(&script_path)
        .current_dir(repo())
        .env("PATH", path)
        // mktemp -d makes $WORK under the scratch dir: whatever happens, nothing is left.
        .env("TMPDIR", scratch.path())
        .env_remove("FAILSMALL_ADDR")
        .env_remove("FAILSMALL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut group = Group(Some(child.id()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Reaped: the pid is free for reuse, so the group is never killed by number now.
            group.0 = None;
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if status.is_none() {
        group.kill();
        let _ = child.wait();
    }
    let out = out_reader.join().unwrap();
    let err = err_reader.join().unwrap();
    let story = format!("--- stdout\n{out}\n--- stderr\n{err}");
    let status = status.unwrap_or_else(|| panic!("the walkthrough ran past {LIMIT:?}\n{story}"));
    assert!(
        status.success(),
        "the walkthrough failed: {status}\n{story}"
    );

    let hash_of = |file: &str| {
        let bytes = std::fs::read(repo().join("examples/units").join(file)).unwrap();
        failsmall_core::domain::VersionHash::of(&bytes).to_string()
    };
    let (v1, v2, killswitch) = (
        hash_of("rules.json"),
        hash_of("rules-v2.json"),
        hash_of("rules-killswitch.json"),
    );
    let short = |hash: &str| hash[..12].to_owned();
    for expected in [
        format!("version  {v1} (new)"),
        // `--watch` says how each stage ended, with its gates' numbers.
        "stage employees passed: bake over; gates: ".to_owned(),
        "rollout 1 completed".to_owned(),
        format!("version  {v2} (new)"),
        "rollout 2 completed".to_owned(),
        format!("version  {killswitch} (new)"),
        "rollout 3 rolled_back at stage 1/3 employees".to_owned(),
        "push --watch exited 3 (3: rolled back)".to_owned(),
        format!("undo: rollout 4 of rules {}", short(&v1)),
        "rollout 4 completed".to_owned(),
        format!("rollout 5 of rules {}", short(&v2)),
        "rollout 5 completed".to_owned(),
    ] {
        assert!(out.contains(&expected), "no {expected:?} in\n{story}");
    }
    // The rollback blamed the gate on the employees' stage, in the changelog's story.
    assert!(
        out.lines()
            .any(|line| line.contains("rolled_back") && line.contains("r3 stage employees")),
        "`log --rollout 3` shows no rollback\n{story}"
    );
    // `versions rules`, at the end: the second version stable everywhere, the first was
    // stable, the killswitch quarantined and live nowhere.
    let versions: Vec<&str> = out
        .lines()
        .skip_while(|line| !line.starts_with("SEQ"))
        .take(4)
        .collect();
    let row = |hash: &str| {
        versions
            .iter()
            .find(|line| line.contains(&short(hash)))
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("`versions rules` has no {hash}\n{story}"))
    };
    assert!(row(&v2).contains("stable 4 nodes"), "{story}");
    assert!(row(&v1).contains("was stable 0 nodes"), "{story}");
    assert!(row(&killswitch).contains("quarantined 0 nodes"), "{story}");
    // `nodes`, at the end: every node alive, running the second version.
    let nodes: Vec<&str> = out
        .lines()
        .rev()
        .take_while(|line| !line.starts_with("NODE"))
        .collect();
    assert_eq!(nodes.len(), 4, "{story}");
    for line in nodes {
        assert!(
            line.contains(&format!("rules={}", short(&v2))) && line.contains("alive"),
            "{line}\n{story}"
        );
    }
}

#[test]
fn the_walkthrough_block_is_found_without_its_fence() {
    let readme = "x\n<!-- walkthrough:begin -->\n```sh\necho hi\n```\n<!-- walkthrough:end -->\n";
    assert_eq!(walkthrough(readme), "echo hi\n");
}
