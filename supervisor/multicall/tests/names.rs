//! The built multi-call executable under each of its names, as the image installs them (symlinks):
//! each is its own program (`--help` and `--version` name it, the license commands keep their
//! spellings and exit codes), and an unknown name is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory with a symlink per name to the built executable.
fn links() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_privitty"));
    for name in [
        "privitty-init",
        "privitty-edged",
        "privitty-edge",
        "licensectl",
        "tini",
    ] {
        std::os::unix::fs::symlink(&exe, dir.path().join(name)).expect("symlink");
    }
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn run(dir: &Path, name: &str, args: &[&str]) -> Output {
    Command::new(dir.join(name))
        .args(args)
        .env_remove("PRIVITTY_ACCOUNTS")
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn each_name_is_its_own_program() {
    let (_keep, dir) = links();
    for (name, needle) in [
        ("privitty-init", "PID 1 of the Privitty Edge container"),
        ("privitty-edged", "PRIVITTY_ENGINE"),
        ("privitty-edge", "license"),
        ("licensectl", "licensectl status|activate|sync|deactivate"),
    ] {
        let out = run(&dir, name, &["--help"]);
        assert_eq!(out.status.code(), Some(0), "{name} --help: {}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(needle),
            "{name} --help lacks {needle:?}:\n{help}"
        );
        assert!(
            help.contains(&format!("Usage: {name}")),
            "{name} --help names another program:\n{help}"
        );
        let out = run(&dir, name, &["--version"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(name),
            "{name} --version: {}",
            text(&out)
        );
    }
}

#[test]
fn the_license_commands_keep_their_spellings_and_exit_codes() {
    let (_keep, dir) = links();
    let accounts = tempfile::tempdir().expect("accounts");
    let acc = accounts.path().to_str().expect("utf-8");
    let edge = run(
        &dir,
        "privitty-edge",
        &["--accounts", acc, "license", "status"],
    );
    let ctl = run(&dir, "licensectl", &["--accounts", acc, "status"]);
    assert_eq!(edge.status.code(), Some(3), "{}", text(&edge));
    assert_eq!(edge.status.code(), ctl.status.code());
    assert_eq!(edge.stdout, ctl.stdout);
    let bare = run(&dir, "privitty-edge", &["--accounts", acc, "status"]);
    assert_eq!(bare.status.code(), Some(2), "{}", text(&bare));
}

#[test]
fn run_as_tini_it_is_privitty_init_in_plain_mode() {
    let (_keep, dir) = links();
    let out = run(&dir, "tini", &["-e", "3", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn an_unknown_name_is_refused_with_the_names() {
    let out = Command::new(env!("CARGO_BIN_EXE_privitty"))
        .output()
        .expect("run privitty");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("privitty-edged"), "{}", text(&out));
}
