//! The README's walkthrough, run against `tests/scripts/run-local.sh --demo` exactly as written:
//! the demo is started headless, the block between `<!-- demo-walkthrough:start -->` and
//! `<!-- demo-walkthrough:end -->` runs in bash, every `# prints: X` must appear in its output in
//! order; then Ctrl-C (SIGINT to the demo's process group) must stop everything it started.
//!
//! Skipped (with `SKIPPED:` on stderr) where the mail server cannot run; a failure instead under
//! `PRIVITTY_REQUIRE_ALL_TESTS=1`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use privitty_tests::mail_server::Skip;
use privitty_tests::support;

/// Start-up includes `cargo build` (a no-op when the test binaries are built) and, on a fresh
/// machine, installing the mail server packages.
const READY_DEADLINE: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The walkthrough block and the outputs it promises, in order.
fn walkthrough() -> (String, Vec<String>) {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let start = readme
        .find("<!-- demo-walkthrough:start -->")
        .expect("the README marks the walkthrough's start");
    let end = readme
        .find("<!-- demo-walkthrough:end -->")
        .expect("the README marks the walkthrough's end");
    let block: String = readme[start..end]
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect();
    let prints = block
        .lines()
        .filter_map(|l| l.split_once("# prints: ").map(|(_, p)| p.trim().to_owned()))
        .collect();
    (block, prints)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Processes whose command line or environment names one of `roots`.
fn leftovers(roots: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        for file in ["cmdline", "environ"] {
            let Ok(bytes) = std::fs::read(entry.path().join(file)) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
            if roots.iter().any(|r| text.contains(r.as_str())) {
                found.push(format!("pid {}: {}", name.to_string_lossy(), text));
                break;
            }
        }
    }
    found
}

#[test]
fn the_readme_walkthrough_runs_against_the_demo() {
    let demo_dir = tempfile::Builder::new()
        .prefix("privitty-demo-")
        .tempdir()
        .unwrap();
    let ports = format!("{} {}", free_port(), free_port());
    let mut child = Command::new(repo().join("tests/scripts/run-local.sh"))
        .arg("--demo")
        .current_dir(repo())
        .env("PRIVITTY_DEMO_DIR", demo_dir.path())
        .env("PRIVITTY_DEMO_PORTS", &ports)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start run-local.sh --demo");
    let pgid = Pid::from_raw(child.id() as i32);
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(format!("out: {line}"));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(format!("err: {line}"));
        }
    });
    let mut seen = Vec::new();
    let end = Instant::now() + READY_DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let ready = line.starts_with("out: ready");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                if status.and_then(|s| s.code()) == Some(3) {
                    let why = seen.join("\n");
                    return Skip(format!("the demo's mail server cannot run here:\n{why}"))
                        .report("the_readme_walkthrough_runs_against_the_demo");
                }
                let _ = killpg(pgid, Signal::SIGKILL);
                panic!(
                    "the demo did not print ready ({status:?}):\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    let env = std::fs::read_to_string(demo_dir.path().join("env.sh")).expect("env.sh");
    let roots: Vec<String> = env
        .lines()
        .find_map(|l| l.strip_prefix("export DEMO_ROOTS=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("DEMO_ROOTS in env.sh")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(roots.len(), 3, "{roots:?}");

    let (script, prints) = walkthrough();
    assert!(
        prints.len() >= 4,
        "the walkthrough promises outputs: {prints:?}"
    );
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(repo())
        .env("PRIVITTY_DEMO_DIR", demo_dir.path())
        .output()
        .expect("run the walkthrough");
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    let ok = run.status.success();
    // Each promised output, in order.
    let mut rest = out.as_str();
    let mut missing = None;
    for p in &prints {
        match rest.find(p.as_str()) {
            Some(i) => rest = &rest[i + p.len()..],
            None => {
                missing = Some(p.clone());
                break;
            }
        }
    }

    // Ctrl-C, as in a terminal: SIGINT to the foreground process group.
    killpg(pgid, Signal::SIGINT).expect("SIGINT the demo");
    let status = support::eventually(Duration::from_secs(60), "the demo to stop", || {
        child.try_wait().ok().flatten()
    });
    assert!(
        ok && missing.is_none(),
        "the walkthrough failed ({:?}, missing {missing:?}):\n--- stdout\n{out}\n--- stderr\n{err}",
        run.status
    );
    assert!(status.success(), "the demo stopped with {status:?}");
    let left = support::eventually(
        Duration::from_secs(30),
        "every process of the demo to be gone",
        || {
            let l = leftovers(&roots);
            l.is_empty().then_some(l)
        },
    );
    assert!(left.is_empty());
}
