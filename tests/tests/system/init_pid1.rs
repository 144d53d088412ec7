//! privitty-init's PID-1 duties with real processes: as PID 1 of a fresh PID namespace
//! (`unshare --pid --fork --mount-proc`, root only) and as a child subreaper; plain mode as a
//! drop-in for tini and dumb-init; privitty-init's own hardening.
//!
//! A test that cannot run here (not root, a tool missing) prints `SKIPPED: …` past the output
//! capture; with `PRIVITTY_REQUIRE_ALL_TESTS=1` it fails instead.
//!
//! Build first: `cargo build -p supervisor -p privitty-tests --bins`.

use std::ffi::OsString;
use std::path::Path;

use nix::sys::signal::Signal;
use privitty_tests::init_harness::{
    DEADLINE, Init, InitSpec, can_unshare, has_command, lines, skip, testproc, wait_line,
    wait_lines_starting,
};
use privitty_tests::support::{DumpDirOnFailure, eventually, poll_until};

/// The stop timeout of the tests that see a stop escalate to SIGKILL: short, yet long enough for
/// every recorder to log the signal before the SIGKILL on a busy machine.
const ESCALATING_STOP_TIMEOUT: &str = "1s";

/// Signals plain mode forwards to the child's process group.
const FORWARDED: [Signal; 16] = [
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
    Signal::SIGTSTP,
    Signal::SIGABRT,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGSTKFLT,
];

fn tempdir() -> (tempfile::TempDir, DumpDirOnFailure) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dump = DumpDirOnFailure(dir.path().to_path_buf());
    (dir, dump)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Starts `orphans N` under init and checks every orphan is reaped: once the orphans' parent has
/// exited, init's only child must be the testproc itself (an unreaped orphan stays a zombie child
/// of init for ever).
fn reap_orphans(spec_for: impl Fn(&[&str]) -> InitSpec, count: usize, name: &str) {
    let (dir, _dump) = tempdir();
    let file = dir.path().join("orphans.log");
    let n = count.to_string();
    let mut init = Init::start(
        name,
        spec_for(&["orphans", &n, path_str(&file)]),
        dir.path(),
    );
    wait_lines_starting(&file, &format!("orphans {count} "), 1);
    wait_lines_starting(&file, "main ready", 1);
    let left = eventually(DEADLINE, "every orphan to be reaped", || {
        let children = init.children();
        (children.len() == 1).then_some(children)
    });
    assert_ne!(left[0].1, 'Z', "the testproc itself is a zombie: {left:?}");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
}

#[test]
fn reaps_hundreds_of_orphans_as_pid1() {
    if !can_unshare("reaps_hundreds_of_orphans_as_pid1") {
        return;
    }
    reap_orphans(InitSpec::plain, 300, "init-orphans");
}

#[test]
fn reaps_orphans_as_a_subreaper_when_not_pid1() {
    reap_orphans(
        |args| InitSpec::plain(args).without_namespace(),
        100,
        "init-subreaper",
    );
}

#[test]
fn forwards_every_forwardable_signal_to_the_childs_group() {
    if !can_unshare("forwards_every_forwardable_signal_to_the_childs_group") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let mut init = Init::start(
        "init-forward",
        InitSpec::plain(&[
            "record-signals",
            path_str(&file),
            "--group",
            "2",
            "--exit-on",
            "SIGTERM",
        ]),
        dir.path(),
    );
    let ready = wait_lines_starting(&file, "", 3);
    assert!(
        ready.iter().all(|l| l.contains(" ready ")),
        "unexpected lines before any signal: {ready:?}"
    );
    // Every member reports the same process group: the child leads its own group.
    let pgids: Vec<&str> = ready
        .iter()
        .map(|l| l.rsplit_once("pgid=").expect("pgid").1)
        .collect();
    assert!(pgids.iter().all(|g| *g == pgids[0]), "{ready:?}");
    let main_pid = ready
        .iter()
        .find(|l| l.starts_with("main "))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .expect("main's pid");
    assert_eq!(
        pgids[0], main_pid,
        "the child is not its group's leader: {ready:?}"
    );

    for sig in FORWARDED {
        init.signal(sig);
        for role in ["main", "child-0", "child-1"] {
            wait_line(&file, &format!("{role} {}", sig.as_str()));
        }
    }
    // Not forwarded: TTIN/TTOU. Init handles its signals in order, and of signals pending
    // together the kernel hands out the lower numbers first: once a realtime signal (numbered
    // above every standard one) sent after them has arrived everywhere, they would have too.
    let before = lines(&file).len();
    init.signal(Signal::SIGTTIN);
    init.signal(Signal::SIGTTOU);
    init.signal_number(nix::libc::SIGRTMIN());
    wait_lines_starting(&file, "", before + 3);
    let after = lines(&file);
    assert!(
        !after
            .iter()
            .any(|l| l.ends_with("SIGTTIN") || l.ends_with("SIGTTOU")),
        "job-control input signals were forwarded: {after:?}"
    );
    // Not stopped by them ('T'): back to sleep once it handled the last signal ('R' meanwhile).
    eventually(
        std::time::Duration::from_secs(10),
        "init to sleep again, not stopped by SIGTTIN/SIGTTOU",
        || (init.state() == 'S').then_some(()),
    );

    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
    for role in ["main", "child-0", "child-1"] {
        assert!(
            lines(&file).contains(&format!("{role} SIGTERM")),
            "{role} did not get SIGTERM: {:?}",
            lines(&file)
        );
    }
}

#[test]
fn passes_every_exit_code_through() {
    if !can_unshare("passes_every_exit_code_through") {
        return;
    }
    let (dir, _dump) = tempdir();
    for code in 0..=255 {
        let c = code.to_string();
        let mut init = Init::start("init-exit", InitSpec::plain(&["exit", &c]), dir.path());
        assert_eq!(init.wait_exit(), code, "{}", init.proc.output());
    }
}

#[test]
fn death_by_signal_n_exits_128_plus_n() {
    if !can_unshare("death_by_signal_n_exits_128_plus_n") {
        return;
    }
    let (dir, _dump) = tempdir();
    let deadly = [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGILL,
        Signal::SIGTRAP,
        Signal::SIGABRT,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGKILL,
        Signal::SIGUSR1,
        Signal::SIGSEGV,
        Signal::SIGUSR2,
        Signal::SIGPIPE,
        Signal::SIGALRM,
        Signal::SIGTERM,
        Signal::SIGSTKFLT,
        Signal::SIGXCPU,
        Signal::SIGXFSZ,
        Signal::SIGVTALRM,
        Signal::SIGPROF,
        Signal::SIGIO,
        Signal::SIGPWR,
        Signal::SIGSYS,
    ];
    for sig in deadly {
        // A shell, not a Rust program: Rust would ignore SIGPIPE, so this also proves the child
        // starts with SIGPIPE at its default action.
        let script = format!("kill -{} $$", sig as i32);
        let spec = InitSpec {
            args: ["--plain", "--", "sh", "-c", &script]
                .map(Into::into)
                .to_vec(),
            ..InitSpec::plain(&[])
        };
        let mut init = Init::start("init-killself", spec, dir.path());
        assert_eq!(
            init.wait_exit(),
            128 + sig as i32,
            "child killed by {sig}\n{}",
            init.proc.output()
        );
    }
}

#[test]
fn exec_failures_exit_127_and_126_with_a_message() {
    if !can_unshare("exec_failures_exit_127_and_126_with_a_message") {
        return;
    }
    let (dir, _dump) = tempdir();
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\nexit 0\n").expect("write");
    let cases: [(&str, &str, i32, &str); 4] = [
        (
            "missing-on-path",
            "privitty-no-such-command",
            127,
            "not found",
        ),
        (
            "missing-path",
            "/nonexistent/privitty-cmd",
            127,
            "does not exist",
        ),
        ("not-executable", path_str(&not_exec), 126, "not executable"),
        ("directory", "/", 126, "not executable"),
    ];
    for (name, cmd, code, message) in cases {
        let spec = InitSpec {
            args: vec!["--plain".into(), "--".into(), cmd.into()],
            ..InitSpec::plain(&[])
        };
        let mut init = Init::start(name, spec, dir.path());
        assert_eq!(init.wait_exit(), code, "{cmd}\n{}", init.proc.output());
        let err = init.proc.stderr();
        assert!(
            err.contains(message) && err.contains(cmd),
            "{cmd}: stderr lacks {message:?} and the command:\n{err}"
        );
    }
}

#[test]
fn stop_escalates_to_sigkill_after_the_timeout() {
    if !can_unshare("stop_escalates_to_sigkill_after_the_timeout") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    // The child records SIGTERM but never exits on it.
    let mut init = Init::start(
        "init-escalate",
        InitSpec::plain(&["record-signals", path_str(&file)])
            .env("PRIVITTY_STOP_TIMEOUT", ESCALATING_STOP_TIMEOUT),
        dir.path(),
    );
    lines_ready(&file, 1);
    init.signal(Signal::SIGTERM);
    let code = init.wait_exit();
    assert_eq!(code, 128 + Signal::SIGKILL as i32, "{}", init.proc.output());
    assert!(
        lines(&file).contains(&"main SIGTERM".to_string()),
        "SIGTERM was not sent before SIGKILL: {:?}",
        lines(&file)
    );
    assert!(
        init.proc.stderr().contains("SIGKILL"),
        "init did not log the escalation:\n{}",
        init.proc.stderr()
    );
}

#[test]
fn stop_returns_as_soon_as_the_tree_has_exited() {
    if !can_unshare("stop_returns_as_soon_as_the_tree_has_exited") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    // A stop timeout longer than the test's deadline: only a prompt return can pass.
    let mut init = Init::start(
        "init-prompt",
        InitSpec::plain(&[
            "record-signals",
            path_str(&file),
            "--group",
            "2",
            "--exit-on",
            "SIGTERM",
        ])
        .env("PRIVITTY_STOP_TIMEOUT", "1h"),
        dir.path(),
    );
    lines_ready(&file, 3);
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
    let log = lines(&file);
    for role in ["main", "child-0", "child-1"] {
        assert!(
            log.contains(&format!("{role} SIGTERM")),
            "{role} was not asked to stop: {log:?}"
        );
    }
    assert!(
        !init.proc.stderr().contains("SIGKILL"),
        "init escalated although everything exited:\n{}",
        init.proc.stderr()
    );
}

#[test]
fn stop_waits_for_group_members_that_outlive_the_child_then_kills_them() {
    if !can_unshare("stop_waits_for_group_members_that_outlive_the_child_then_kills_them") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let mut init = Init::start(
        "init-group-stop",
        InitSpec::plain(&[
            "record-signals",
            path_str(&file),
            "--group",
            "2",
            "--exit-on",
            "SIGTERM",
            "--group-exit-on",
            "none",
        ])
        .env("PRIVITTY_STOP_TIMEOUT", ESCALATING_STOP_TIMEOUT),
        dir.path(),
    );
    lines_ready(&file, 3);
    let members: Vec<_> = eventually(DEADLINE, "the group members to start", || {
        let all = descendants(&init);
        (all.len() == 3).then_some(all)
    });
    init.signal(Signal::SIGTERM);
    // The child's own code, although its group members had to be killed.
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
    let log = lines(&file);
    for role in ["child-0", "child-1"] {
        assert!(log.contains(&format!("{role} SIGTERM")), "{log:?}");
    }
    assert!(
        init.proc.stderr().contains("SIGKILL"),
        "{}",
        init.proc.stderr()
    );
    for pid in members {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived the stop"
        );
    }
}

#[test]
fn child_exit_takes_its_leftover_group_with_it() {
    // Plain mode as a subreaper: when CMD exits, what it left behind is stopped too.
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let mut init = Init::start(
        "init-leftovers",
        InitSpec::plain(&[
            "record-signals",
            path_str(&file),
            "--group",
            "1",
            "--exit-on",
            "SIGUSR1",
            "--group-exit-on",
            "SIGTERM",
        ])
        .without_namespace(),
        dir.path(),
    );
    lines_ready(&file, 2);
    init.signal(Signal::SIGUSR1);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
    let log = lines(&file);
    let main_exit = log
        .iter()
        .position(|l| l == "main SIGUSR1")
        .expect("main got USR1");
    let child_term = log
        .iter()
        .position(|l| l == "child-0 SIGTERM")
        .unwrap_or_else(|| panic!("the leftover member was not stopped: {log:?}"));
    assert!(main_exit < child_term, "{log:?}");
}

#[test]
fn job_control_signals_never_stop_init() {
    // Run as an ordinary process (not PID 1), where an unhandled SIGTSTP would stop it.
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let mut init = Init::start(
        "init-tstp",
        InitSpec::plain(&["record-signals", path_str(&file), "--exit-on", "SIGTERM"])
            .without_namespace(),
        dir.path(),
    );
    lines_ready(&file, 1);
    for sig in [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU] {
        init.signal(sig);
    }
    // A realtime signal is handled after the three (sent after them, and numbered above them
    // should all be pending together): once the child has it, init went past them unstopped.
    init.signal_number(nix::libc::SIGRTMIN());
    wait_line(&file, "main SIGRTMIN+0");
    wait_line(&file, "main SIGTSTP");
    assert_ne!(init.state(), 'T', "init was stopped");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
}

#[test]
fn children_start_clean_no_fds_default_signals_own_group() {
    if !can_unshare("children_start_clean_no_fds_default_signals_own_group") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("report.log");
    let mut init = Init::start(
        "init-clean",
        InitSpec::plain(&["report", path_str(&file)]).with_extra_fds(),
        dir.path(),
    );
    // init itself did inherit the extra fds, so the check below is meaningful.
    let init_fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", init.pid))
        .expect("init's fds")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        init_fds.contains(&"7".to_string()) && init_fds.contains(&"9".to_string()),
        "init did not inherit fds 7 and 9: {init_fds:?}"
    );
    let report = wait_lines_starting(&file, "report ", 1).remove(0);
    let field = |k: &str| {
        report
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing in {report}"))
            .to_string()
    };
    assert_eq!(field("fds"), "0,1,2", "fds leaked into the child: {report}");
    assert_eq!(
        field("pid"),
        field("pgid"),
        "the child does not lead its own group: {report}"
    );
    assert_eq!(field("listen_fds"), "-", "{report}");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
}

#[test]
fn children_start_with_default_signal_mask_and_dispositions() {
    if !can_unshare("children_start_with_default_signal_mask_and_dispositions") {
        return;
    }
    // Rust ignores SIGPIPE in init, and init blocks every signal while it forks: neither may
    // reach the child. A C program reports its state as it was at exec (a Rust one would not).
    let (dir, _dump) = tempdir();
    let spec = InitSpec {
        args: [
            "--plain",
            "--",
            "grep",
            "-E",
            "^Sig(Blk|Ign)",
            "/proc/self/status",
        ]
        .map(Into::into)
        .to_vec(),
        ..InitSpec::plain(&[])
    };
    let mut init = Init::start("init-sigstate", spec, dir.path());
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
    let out = init.proc.stdout();
    let values: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(values.len(), 2, "{out}");
    assert!(
        values.iter().all(|v| v.chars().all(|c| c == '0')),
        "the child started with blocked or ignored signals:\n{out}"
    );
}

#[test]
fn testproc_is_built() {
    assert!(testproc().is_file());
}

/// Waits for `count` "ready" lines and returns them.
fn lines_ready(file: &Path, count: usize) -> Vec<String> {
    let found: Vec<String> = eventually(DEADLINE, "the testprocs to be ready", || {
        let ready: Vec<String> = lines(file)
            .into_iter()
            .filter(|l| l.contains(" ready "))
            .collect();
        (ready.len() >= count).then_some(ready)
    });
    found
}

/// All descendants of init (host pids).
fn descendants(init: &Init) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![init.pid];
    while let Some(p) = queue.pop() {
        for (c, _) in privitty_tests::init_harness::children_of(p) {
            out.push(c.as_raw());
            queue.push(c);
        }
    }
    out
}

#[test]
fn the_child_gets_the_terminals_foreground_group() {
    // `script` runs init on a fresh pseudo-terminal, as `docker run -t` does.
    if !has_command("script") {
        skip(
            "the_child_gets_the_terminals_foreground_group",
            "`script` (util-linux) is not installed",
        );
        return;
    }
    let (dir, _dump) = tempdir();
    let init = privitty_tests::support::bin("privitty-init");
    // Fields 5 and 8 of /proc/self/stat: the process group and the terminal's foreground group.
    let inner = format!(
        "{} --plain -- sh -c 'cut -d\" \" -f5,8 /proc/$$/stat'",
        init.display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &inner, "/dev/null"]);
    let mut proc = privitty_tests::support::Proc::spawn("script", cmd, dir.path());
    let child = &mut proc.child;
    let status = eventually(DEADLINE, "script to exit", || {
        child.try_wait().expect("try_wait")
    });
    assert!(status.success(), "{status}\n{}", proc.output());
    let out = proc.stdout().replace('\r', "");
    let groups: Vec<&str> = out
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 2 && f.iter().all(|x| x.parse::<i32>().is_ok())
        })
        .unwrap_or_else(|| panic!("no stat line in:\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        groups[0], groups[1],
        "the child's group is not the terminal's foreground group:\n{out}"
    );
}

#[test]
fn reaps_orphans_of_exec_sessions() {
    if !can_unshare("reaps_orphans_of_exec_sessions") {
        return;
    }
    // `docker exec` is a process entering the namespace from outside; its orphans are
    // re-parented to the namespace's PID 1. `nsenter` does the same here.
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let mut init = Init::start(
        "init-exec",
        InitSpec::plain(&["record-signals", path_str(&file), "--exit-on", "SIGTERM"]),
        dir.path(),
    );
    lines_ready(&file, 1);
    let target = init.pid.to_string();
    let status = std::process::Command::new("nsenter")
        .args(["-t", &target, "-p", "-m", "--"])
        .arg(testproc())
        .args(["orphan-parent", "50"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running nsenter");
    assert!(status.success(), "nsenter … orphan-parent: {status}");
    // The orphan-parent has been reaped by nsenter, so its 50 leaves now belong to init. Init
    // reports a reaped batch after reaping it, so the lines may trail `/proc` by a moment.
    let reported = || init.proc.stderr().matches("reaped orphan").count();
    let gone = poll_until(DEADLINE, || {
        (init.children().len() == 1 && reported() >= 50).then_some(())
    });
    assert!(
        gone.is_some(),
        "init did not reap and report the 50 orphans ({} children left, {} reported):\n{}",
        init.children().len(),
        reported(),
        init.proc.stderr()
    );
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
}

#[test]
fn signals_work_when_init_starts_with_them_blocked() {
    // A parent may start init with signals blocked (the mask survives exec); init must still
    // see TERM and forward USR1.
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let args: Vec<std::ffi::OsString> = [
        "blocked-exec",
        "--",
        privitty_tests::support::bin("privitty-init")
            .to_str()
            .expect("utf-8 path"),
        "--plain",
        "--",
        testproc().to_str().expect("utf-8 path"),
        "record-signals",
        path_str(&file),
        "--exit-on",
        "SIGTERM",
    ]
    .map(Into::into)
    .to_vec();
    let spec = InitSpec {
        args,
        init: Some(testproc()),
        ..InitSpec::plain(&[]).without_namespace()
    };
    let mut init = Init::start("init-blocked", spec, dir.path());
    lines_ready(&file, 1);
    let sigblk = std::fs::read_to_string(format!("/proc/{}/status", init.pid))
        .expect("init's status")
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:").map(|v| v.trim().to_string()))
        .expect("SigBlk");
    assert_ne!(
        sigblk, "0000000000000000",
        "init was not started with signals blocked"
    );
    init.signal(Signal::SIGUSR1);
    wait_line(&file, "main SIGUSR1");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
}

#[test]
fn a_stop_signal_sent_while_init_starts_up_is_not_lost() {
    if !can_unshare("a_stop_signal_sent_while_init_starts_up_is_not_lost") {
        return;
    }
    // The kernel drops a signal sent to a namespace's init that has no handler for it. Init reads
    // PRIVITTY_LICENSE_URL_FILE while it parses its configuration, before its handlers exist: a
    // FIFO holds it there for as long as the test needs.
    let (dir, _dump) = tempdir();
    let fifo = dir.path().join("license-url");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let file = dir.path().join("signals.log");
    let mut init = Init::start(
        "init-early-term",
        InitSpec::plain(&["record-signals", path_str(&file), "--exit-on", "SIGTERM"])
            .env("PRIVITTY_LICENSE_URL_FILE", path_str(&fifo)),
        dir.path(),
    );
    // A non-blocking open for writing succeeds only once init has the FIFO open for reading.
    let mut writer = eventually(DEADLINE, "init to open its license URL file", || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&fifo)
            .ok()
    });
    init.signal(Signal::SIGTERM);
    {
        use std::io::Write;
        writer
            .write_all(b"https://license.example.com/v1/license/early-stop\n")
            .expect("write the URL");
    }
    drop(writer);
    let code = init.wait_exit();
    // The command may or may not have set up its own handlers when the stop reaches it.
    assert!(
        code == 0 || code == 128 + Signal::SIGTERM as i32,
        "exit {code}\n{}",
        init.proc.output()
    );
    assert!(
        init.proc.stderr().contains("stopping"),
        "init did not act on the SIGTERM:\n{}",
        init.proc.stderr()
    );
}

#[test]
fn stop_kills_a_descendant_that_left_for_its_own_session() {
    // As a subreaper (no namespace-wide kill): a daemon that called setsid and ignores SIGTERM
    // is outside the child's group, so only the walk over our descendants can find it.
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let pid_file = dir.path().join("daemon.pid");
    let script = format!(
        "setsid sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 1000' & exec {} record-signals {} \
         --exit-on SIGTERM",
        path_str(&pid_file),
        path_str(&testproc()),
        path_str(&file)
    );
    let spec = InitSpec {
        args: ["--plain", "--", "sh", "-c", &script]
            .map(Into::into)
            .to_vec(),
        ..InitSpec::plain(&[]).without_namespace()
    }
    .env("PRIVITTY_STOP_TIMEOUT", ESCALATING_STOP_TIMEOUT);
    let mut init = Init::start("init-setsid", spec, dir.path());
    lines_ready(&file, 1);
    let daemon: i32 = eventually(DEADLINE, "the daemon's pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    let daemon = nix::unistd::Pid::from_raw(daemon);
    // Should the stop miss it, the test still does not leave it running.
    struct KillOnDrop(nix::unistd::Pid);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // Only on failure: after a pass the pid is gone and may belong to someone else.
            if std::thread::panicking() {
                let _ = nix::sys::signal::kill(self.0, Signal::SIGKILL);
            }
        }
    }
    let _cleanup = KillOnDrop(daemon);
    eventually(
        DEADLINE,
        "the daemon to run sleep in its own session",
        || {
            let comm = std::fs::read_to_string(format!("/proc/{daemon}/comm")).ok()?;
            (comm.trim() == "sleep" && nix::unistd::getsid(Some(daemon)).ok() == Some(daemon))
                .then_some(())
        },
    );
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
    assert!(
        init.proc.stderr().contains("SIGKILL"),
        "{}",
        init.proc.stderr()
    );
    eventually(DEADLINE, "the daemon to be gone", || {
        nix::sys::signal::kill(daemon, None).is_err().then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// Plain mode as a drop-in for tini and dumb-init.

/// `privitty-init --plain <init_args…> -- sh -c <script>`, as PID 1.
fn plain_sh(init_args: &[&str], script: &str) -> InitSpec {
    let mut args: Vec<OsString> = vec!["--plain".into()];
    args.extend(init_args.iter().map(OsString::from));
    args.extend(["--", "sh", "-c", script].map(OsString::from));
    InitSpec {
        args,
        ..InitSpec::plain(&[])
    }
}

/// A child that is a C program with every signal at its default action (and no core file).
const SLEEPER: &str = "ulimit -c 0; exec sleep 1000";

/// Waits until init's child runs `comm`; returns its host pid.
fn child_running(init: &Init, comm: &str) -> nix::unistd::Pid {
    eventually(DEADLINE, &format!("init's child to run {comm}"), || {
        init.children().into_iter().find_map(|(pid, _)| {
            let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (c.trim() == comm).then_some(pid)
        })
    })
}

#[test]
fn int_and_quit_reach_the_child_as_themselves() {
    if !can_unshare("int_and_quit_reach_the_child_as_themselves") {
        return;
    }
    // nginx, Python and `STOPSIGNAL SIGINT` images tell these apart from TERM: a child with
    // default dispositions dies of the very signal init was sent.
    let (dir, _dump) = tempdir();
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGQUIT, 131)] {
        let mut init = Init::start("init-int-quit", plain_sh(&[], SLEEPER), dir.path());
        child_running(&init, "sleep");
        init.signal(sig);
        assert_eq!(init.wait_exit(), code, "{sig}\n{}", init.proc.output());
    }
}

#[test]
fn a_stop_signal_goes_on_as_itself_and_the_stop_still_escalates() {
    if !can_unshare("a_stop_signal_goes_on_as_itself_and_the_stop_still_escalates") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    // The child records what it gets and never exits on it.
    let mut init = Init::start(
        "init-int-escalate",
        InitSpec::plain(&["record-signals", path_str(&file), "--group", "1"])
            .env("PRIVITTY_STOP_TIMEOUT", ESCALATING_STOP_TIMEOUT),
        dir.path(),
    );
    lines_ready(&file, 2);
    init.signal(Signal::SIGINT);
    assert_eq!(
        init.wait_exit(),
        128 + Signal::SIGKILL as i32,
        "{}",
        init.proc.output()
    );
    let log = lines(&file);
    for role in ["main", "child-0"] {
        assert!(
            log.contains(&format!("{role} SIGINT")),
            "{role} did not get SIGINT: {log:?}"
        );
        assert!(
            !log.contains(&format!("{role} SIGTERM")),
            "{role} got SIGTERM instead of the signal init was sent: {log:?}"
        );
    }
    assert!(
        init.proc.stderr().contains("SIGKILL"),
        "init did not escalate:\n{}",
        init.proc.stderr()
    );
}

#[test]
fn realtime_signals_reach_the_childs_group() {
    if !can_unshare("realtime_signals_reach_the_childs_group") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let mut init = Init::start(
        "init-realtime",
        InitSpec::plain(&[
            "record-signals",
            path_str(&file),
            "--group",
            "1",
            "--exit-on",
            "SIGTERM",
        ]),
        dir.path(),
    );
    lines_ready(&file, 2);
    let (min, max) = (nix::libc::SIGRTMIN(), nix::libc::SIGRTMAX());
    assert!(max - min >= 8, "SIGRTMIN {min}, SIGRTMAX {max}");
    for signo in min..=max {
        init.signal_number(signo);
        for role in ["main", "child-0"] {
            wait_line(&file, &format!("{role} SIGRTMIN+{}", signo - min));
        }
    }
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
}

#[test]
fn listed_exit_codes_become_zero() {
    if !can_unshare("listed_exit_codes_become_zero") {
        return;
    }
    let (dir, _dump) = tempdir();
    // A Java-like child that dies of the SIGTERM of `docker stop`: 143, unless -e 143.
    for (args, expected) in [
        (&[][..], 143),
        (&["-e", "143"][..], 0),
        (&["-e143", "-e", "7"], 0),
    ] {
        let mut init = Init::start("init-remap", plain_sh(args, SLEEPER), dir.path());
        child_running(&init, "sleep");
        init.signal(Signal::SIGTERM);
        assert_eq!(
            init.wait_exit(),
            expected,
            "{args:?}\n{}",
            init.proc.output()
        );
    }
    // Only the listed codes.
    let mut init = Init::start(
        "init-remap-other",
        plain_sh(&["-e", "143"], "exit 3"),
        dir.path(),
    );
    assert_eq!(init.wait_exit(), 3, "{}", init.proc.output());
}

#[test]
fn the_parent_death_signal_reaches_the_child_when_the_parent_dies() {
    if !can_unshare("the_parent_death_signal_reaches_the_child_when_the_parent_dies") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let mut args: Vec<OsString> = ["--plain", "-p", "SIGUSR1", "--"].map(Into::into).to_vec();
    args.push(testproc().into());
    args.extend(["record-signals", path_str(&file), "--exit-on", "SIGTERM"].map(Into::into));
    let mut init = Init::start(
        "init-pdeathsig",
        InitSpec {
            args,
            ..InitSpec::plain(&[])
        },
        dir.path(),
    );
    lines_ready(&file, 1);
    let pid = init.pid;
    // Once its parent is gone, init (and its namespace) outlives the test unless stopped here.
    struct StopOnDrop(nix::unistd::Pid);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            // Only on failure: after a pass the pid is gone and may belong to someone else.
            if std::thread::panicking() {
                let _ = nix::sys::signal::kill(self.0, Signal::SIGKILL);
            }
        }
    }
    // `unshare --kill-child` asked for SIGKILL on its death; init's -p replaced that with USR1.
    let _cleanup = StopOnDrop(pid);
    init.proc
        .child
        .kill()
        .expect("kill init's parent (unshare)");
    init.proc.child.wait().expect("reap unshare");
    wait_line(&file, "main SIGUSR1");
    // Init itself carried on: it still stops its child on request.
    init.signal(Signal::SIGTERM);
    wait_line(&file, "main SIGTERM");
    eventually(DEADLINE, "init to exit", || {
        matches!(init.state(), 'Z' | 'X' | '?').then_some(())
    });
}

#[test]
fn plain_mode_writes_nothing_of_its_own_on_a_terminal() {
    const TEST: &str = "plain_mode_writes_nothing_of_its_own_on_a_terminal";
    if !can_unshare(TEST) {
        return;
    }
    if !has_command("script") {
        skip(TEST, "`script` (util-linux) is not installed");
        return;
    }
    // `docker run -it`: init and its child share the terminal, and only the child may speak.
    let (dir, _dump) = tempdir();
    let init = privitty_tests::support::bin("privitty-init");
    let inner = format!(
        "unshare --pid --fork --mount-proc --kill-child {} --plain -- sh -c 'printf child-output'",
        init.display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &inner, "/dev/null"])
        .env_remove("PRIVITTY_LOG");
    let mut proc = privitty_tests::support::Proc::spawn("script-quiet", cmd, dir.path());
    let child = &mut proc.child;
    let status = eventually(DEADLINE, "script to exit", || {
        child.try_wait().expect("try_wait")
    });
    assert!(status.success(), "{status}\n{}", proc.output());
    let out = proc.stdout().replace('\r', "");
    assert_eq!(
        out,
        "child-output",
        "the terminal shows more than the child's output:\n{}",
        proc.output()
    );
}

#[test]
fn pid1_leaves_its_directory_and_the_child_keeps_it() {
    if !can_unshare("pid1_leaves_its_directory_and_the_child_keeps_it") {
        return;
    }
    let (dir, _dump) = tempdir();
    let file = dir.path().join("signals.log");
    let started_in = dir.path().canonicalize().expect("canonical temp dir");
    let mut init = Init::start(
        "init-cwd",
        InitSpec::plain(&["record-signals", path_str(&file), "--exit-on", "SIGTERM"])
            .in_dir(&started_in),
        dir.path(),
    );
    lines_ready(&file, 1);
    let cwd = |pid: nix::unistd::Pid| std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    eventually(DEADLINE, "init to move to /", || {
        (cwd(init.pid)? == Path::new("/")).then_some(())
    });
    let child = child_running(&init, "privitty-testpr");
    assert_eq!(cwd(child), Some(started_in), "the child lost its directory");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
}

#[test]
fn run_as_tini_or_dumb_init_it_is_plain_mode_with_their_options() {
    if !can_unshare("run_as_tini_or_dumb_init_it_is_plain_mode_with_their_options") {
        return;
    }
    // An image swaps it in by a symlink, keeping its ENTRYPOINT line as it was.
    let (dir, _dump) = tempdir();
    let real = privitty_tests::support::bin("privitty-init");
    let link = |name: &str| {
        let path = dir.path().join(name);
        std::os::unix::fs::symlink(&real, &path).expect("symlink");
        path
    };
    let (tini, dumb_init) = (link("tini"), link("dumb-init"));
    let as_named = |init: &Path, args: &[&str]| {
        let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
        all.extend(["sh", "-c", SLEEPER].map(OsString::from));
        InitSpec {
            args: all,
            init: Some(init.to_path_buf()),
            ..InitSpec::plain(&[])
        }
    };
    let cases: [(&Path, &[&str], Signal, i32); 3] = [
        (&tini, &["-s", "-g", "-e", "143", "--"], Signal::SIGTERM, 0),
        (&tini, &["-v"], Signal::SIGINT, 130),
        (&dumb_init, &["--"], Signal::SIGQUIT, 131),
    ];
    for (init_path, args, sig, code) in cases {
        let mut init = Init::start("init-as-named", as_named(init_path, args), dir.path());
        child_running(&init, "sleep");
        init.signal(sig);
        assert_eq!(
            init.wait_exit(),
            code,
            "{} {args:?}, {sig}\n{}",
            init_path.display(),
            init.proc.output()
        );
        assert!(
            !init.proc.stderr().contains("managed mode"),
            "{}",
            init.proc.stderr()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// privitty-init's own hardening.

#[test]
fn init_is_not_dumpable_so_its_own_uid_cannot_read_its_environment() {
    const TEST: &str = "init_is_not_dumpable_so_its_own_uid_cannot_read_its_environment";
    // Root reads any process's environment; the check is meaningful only for another uid.
    if !nix::unistd::geteuid().is_root() {
        skip(TEST, "needs root to start privitty-init under another uid");
        return;
    }
    if !has_command("setpriv") {
        skip(TEST, "`setpriv` (util-linux) is not installed");
        return;
    }
    let (dir, _dump) = tempdir();
    // The unprivileged init's child writes its report here.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod the temp dir");
    }
    let file = dir.path().join("signals.log");
    let token = "NOT-FOR-SAME-UID-EYES";
    let url = format!("https://license.example.com/v1/license/{token}");
    const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let mut args: Vec<OsString> = NOBODY.map(Into::into).to_vec();
    args.push(privitty_tests::support::bin("privitty-init").into());
    args.extend(["--plain", "--"].map(Into::into));
    args.push(testproc().into());
    args.extend(["record-signals", path_str(&file), "--exit-on", "SIGTERM"].map(Into::into));
    let mut init = Init::start(
        "init-undumpable",
        InitSpec {
            args,
            init: Some("setpriv".into()),
            ..InitSpec::plain(&[]).without_namespace()
        }
        .env("PRIVITTY_LICENSE_URL", &url),
        dir.path(),
    );
    lines_ready(&file, 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", init.pid)).expect("status");
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t65534\t")),
        "init does not run as uid 65534:\n{status}"
    );
    let read_as_nobody = |pid: nix::unistd::Pid| {
        std::process::Command::new("setpriv")
            .args(NOBODY)
            .arg("cat")
            .arg(format!("/proc/{pid}/environ"))
            .output()
            .expect("run setpriv cat")
    };
    let out = read_as_nobody(init.pid);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "a process of init's own uid read its environment ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).replace('\0', " ")
    );
    {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(format!("/proc/{}/environ", init.pid))
            .expect("stat environ")
            .uid();
        assert_eq!(owner, 0, "init's /proc entries still belong to its own uid");
    }
    // The same read of the child works: the check above fails for the right reason, and exec
    // gave the child (a program of its own) the ordinary setting back.
    let child = child_running(&init, "privitty-testpr");
    let out = read_as_nobody(child);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(token),
        "cannot read the child's environment as its own uid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(), 0, "{}", init.proc.output());
}
