//! Integrity: no file in the volume, no SIGKILL and no planted link revives a license or
//! leaves the device directory torn.

use super::*;

// ================================================================ integrity: no file in the volume revives a license

/// Whoever can write the data volume can delete, replace, roll back or edit any file in it; the
/// license signature is the only thing they cannot forge. These tests play that attacker against
/// the real CLI and the real server.
///
/// Asserts that `status` (text and `--json`) does not call the license usable, and returns the
/// `--json` report (`Null` when status failed with a local file error).
fn assert_not_usable(w: &World, dev: &Device, what: &str) -> Value {
    let (word, run) = status_text(w, dev);
    assert!(
        run.code != 0 && word != "active" && word != "grace_period",
        "{what}: status is usable: {run:?}"
    );
    let run = w.edge(dev, &["status", "--json"]);
    assert!(run.code == 3 || run.code == 4, "{what}: {run:?}");
    let st: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    assert!(
        st["status"] != "active" && st["status"] != "grace_period",
        "{what}: {st}"
    );
    st
}

/// A device activated on a fresh license, which the server then revokes and a `license sync`
/// learns; returns the device and its files as they were just before the revocation.
fn revoked_device(w: &World, name: &str) -> (Device, BTreeMap<String, (Vec<u8>, u32)>) {
    let url = w.license();
    let dev = w.device(name);
    w.activate(&dev, &url);
    assert_eq!(w.status(&dev)["status"], "active");
    let before = snapshot(&dev.dir);
    w.server.revoke(&url);
    let run = w.edge(&dev, &["sync"]);
    assert_eq!(run.code, 5, "the sync learns the revocation: {run:?}");
    let st = assert_not_usable(w, &dev, "after the sync");
    assert_eq!(st["reason"], "revoked", "{st}");
    (dev, before)
}

/// Issue 8: after `admin revoke` and a sync, moving activation.json out of the volume printed
/// `active` again.
#[test]
fn cli_a_revoked_license_stays_unusable_with_activation_json_moved_out() {
    let w = world();
    let (a, before) = revoked_device(&w, "a");
    let aside = w.root.path().join("activation.json.aside");
    std::fs::rename(a.dir.join("activation.json"), &aside).unwrap();
    assert_not_usable(&w, &a, "activation.json moved out");
    // The revocation moved the license out of its place, kept for inspection.
    assert!(!a.dir.join("privitty.lic").exists());
    let kept = std::fs::read(a.dir.join("privitty.lic.revoked")).expect("privitty.lic.revoked");
    assert_eq!(kept, before["privitty.lic"].0);
    // Even with the license moved back in place: a license that names an activation needs it.
    std::fs::copy(
        a.dir.join("privitty.lic.revoked"),
        a.dir.join("privitty.lic"),
    )
    .unwrap();
    let st = assert_not_usable(&w, &a, "activation.json moved out, license moved back");
    assert_eq!(st["reason"], "activation_missing", "{st}");
    // Nor does a sync bring anything back: there is no activation to sync.
    assert_eq!(w.edge(&a, &["sync"]).code, 7);
    assert_not_usable(&w, &a, "after a sync");
}

/// Issue 8: editing `state` (or `high_water`) in activation.json revived a revoked license.
#[test]
fn cli_editing_activation_json_does_not_revive_a_revoked_license() {
    let w = world();
    let (a, _) = revoked_device(&w, "a");
    let mut act = activation_json(&a);
    act["state"] = json!("active");
    let write = |v: &Value| {
        std::fs::write(a.dir.join("activation.json"), v.to_string()).expect("edit activation.json")
    };
    write(&act);
    assert_not_usable(&w, &a, "state edited back to active");
    act["high_water"] = json!(0);
    act["high_water_epoch"] = json!(0);
    act["last_sync_error"] = Value::Null;
    write(&act);
    assert_not_usable(&w, &a, "state and high_water edited");
    // The edited record makes the device sync again; the server still says revoked.
    let run = w.edge(&a, &["sync"]);
    assert_eq!(run.code, 5, "{run:?}");
    let st = assert_not_usable(&w, &a, "after the sync");
    assert_eq!(st["reason"], "revoked", "{st}");
}

/// Issue 8: a FIFO named activation.json blocked the sync inside open() while it held the license
/// lock (and `status` too). Every command must finish promptly with an error naming the file.
#[test]
fn cli_a_fifo_in_place_of_a_license_file_never_hangs_a_command() {
    use privitty_tests::support::Proc;
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let logs = w.root.path().join("logs");
    // (file replaced by a FIFO, command, expected exit code)
    let cases: [(&str, &[&str], i32); 6] = [
        ("activation.json", &["status"], 4),
        ("activation.json", &["status", "--json"], 4),
        ("activation.json", &["sync"], 4),
        ("activation.json", &["deactivate"], 4),
        ("device.uuid", &["status"], 4),
        (".privitty-license.lock", &["sync"], 4),
    ];
    let files = snapshot(&a.dir);
    for (n, (file, args, code)) in cases.into_iter().enumerate() {
        restore(&a.dir, &files);
        let path = a.dir.join(file);
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut proc = Proc::spawn(&format!("case-{n}"), w.edge_cmd(&a, args), &logs);
        let what = format!("`license {}` with {file} a FIFO", args.join(" "));
        let status = proc
            .wait_timeout(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{what}: still running after 15 s (blocked on the FIFO)"));
        assert_eq!(status.code(), Some(code), "{what}\n{}", proc.output());
        let stderr = proc.stderr();
        assert!(
            stderr.contains(file) && stderr.contains("FIFO"),
            "{what}: the error names the file and what it is: {stderr}"
        );
    }
    restore(&a.dir, &files);
    assert_eq!(w.status(&a)["status"], "active");
}

/// An older `privitty.lic` (taken before the revocation) copied back, alone, through a symlink, or
/// with activation.json moved out, never counts.
#[test]
fn cli_an_older_license_copied_back_after_a_revocation_is_not_usable() {
    let w = world();
    let (a, before) = revoked_device(&w, "a");
    let older = &before["privitty.lic"].0;
    std::fs::write(a.dir.join("privitty.lic"), older).unwrap();
    let st = assert_not_usable(&w, &a, "older privitty.lic copied back");
    assert_eq!(st["reason"], "revoked", "{st}");

    std::fs::remove_file(a.dir.join("privitty.lic")).unwrap();
    let elsewhere = w.root.path().join("older.lic");
    std::fs::write(&elsewhere, older).unwrap();
    std::os::unix::fs::symlink(&elsewhere, a.dir.join("privitty.lic")).unwrap();
    assert_not_usable(&w, &a, "privitty.lic a symlink to the older copy");

    std::fs::remove_file(a.dir.join("privitty.lic")).unwrap();
    std::fs::write(a.dir.join("privitty.lic"), older).unwrap();
    std::fs::remove_file(a.dir.join("activation.json")).unwrap();
    let st = assert_not_usable(&w, &a, "older privitty.lic back, activation.json removed");
    assert_eq!(st["reason"], "activation_missing", "{st}");

    // activation.json as a symlink to its own older copy (active) is not followed either.
    let older_act = w.root.path().join("older-activation.json");
    std::fs::write(&older_act, &before["activation.json"].0).unwrap();
    std::os::unix::fs::symlink(&older_act, a.dir.join("activation.json")).unwrap();
    assert_not_usable(&w, &a, "activation.json a symlink to its older copy");
    let run = w.edge(&a, &["status"]);
    assert!(
        run.stderr.contains("activation.json") && run.stderr.contains("symlink"),
        "{run:?}"
    );

    // After a deactivation the same holds.
    let url = w.license();
    let b = w.device("b");
    w.activate(&b, &url);
    let older = read(&b.dir, "privitty.lic");
    assert_eq!(w.edge(&b, &["deactivate"]).code, 0);
    std::fs::write(b.dir.join("privitty.lic"), older).unwrap();
    let st = assert_not_usable(&w, &b, "older privitty.lic copied back after deactivate");
    assert_eq!(st["reason"], "deactivated", "{st}");
}

/// The state a withdrawal can leave, killed anywhere: activation.json parses; once it records the
/// withdrawal, no license is in place (so no older copy of activation.json can revive it); and
/// status is `active` only while nothing was recorded yet.
fn assert_withdrawal_safe(w: &World, dev: &Device, what: &str) {
    let act = activation_json(dev);
    let state = act["state"].as_str().unwrap_or_default().to_string();
    let st = w.status(dev);
    if state == "active" {
        assert!(
            st["status"] == "active" || st["status"] == "no_license",
            "{what}: {st}"
        );
        if st["status"] == "active" {
            assert!(
                !dev.dir.join("privitty.lic.revoked").exists(),
                "{what}: a license moved aside, and another usable in place"
            );
        }
    } else {
        assert!(
            !dev.dir.join("privitty.lic").exists(),
            "{what}: activation.json says {state} next to a license"
        );
        assert_eq!(st["status"], "no_license", "{what}: {st}");
        assert_eq!(st["reason"], state.as_str(), "{what}: {st}");
    }
}

#[test]
fn cli_sigkill_during_a_revocation_or_deactivation_never_leaves_a_usable_license() {
    let w = world();
    // Revocation learnt by a sync.
    let revoked_url = w.license();
    let a = w.device("a");
    w.activate(&a, &revoked_url);
    let activated = snapshot(&a.dir);
    w.server.revoke(&revoked_url);
    // Deactivation by the operator (the server answers 204 again after a lost answer).
    let url = w.license();
    let b = w.device("b");
    w.activate(&b, &url);
    let b_activated = snapshot(&b.dir);

    for (dev, files, args, code) in [
        (&a, &activated, &["sync"][..], 5),
        (&b, &b_activated, &["deactivate"][..], 0),
    ] {
        // strace counts each syscall separately: the move aside is a `rename`, the atomic writes
        // `renameat`, so each gets its own round to be interrupted at every call.
        for syscalls in ["fsync,fdatasync", "rename", "renameat,renameat2"] {
            let mut kills = 0;
            for n in 1.. {
                assert!(n < 200, "{args:?} never completed under {syscalls}");
                restore(&dev.dir, files);
                let killed = run_killed_at_expecting(&w, dev, args, syscalls, n, code);
                let what = format!("`license {}` killed at {syscalls} #{n}", args.join(" "));
                assert_withdrawal_safe(&w, dev, &what);
                // The next run finishes the withdrawal (or finds it recorded: exit 7).
                let run = w.edge(dev, args);
                assert!(
                    run.code == code || run.code == 7,
                    "{what}, then run again: {run:?}"
                );
                assert_withdrawal_safe(&w, dev, &format!("{what}, then run again"));
                assert_ne!(activation_json(dev)["state"], "active", "{what}: {run:?}");
                if !killed {
                    break;
                }
                kills += 1;
            }
            eprintln!(
                "{args:?}: killed at each of its first {kills} {syscalls} calls, then completed"
            );
            assert!(kills >= 1, "{args:?} was never interrupted at {syscalls}");
        }
    }
}

// ================================================================ review findings

/// The data volume belongs to the service user, so whoever runs as that user can plant a symlink as
/// the lock file. A root `docker exec … license sync` must neither follow it nor hand the target
/// to the volume's owner (the lock file is chowned to the directory owner when root creates it).
#[test]
fn cli_planted_lock_symlink_is_refused_and_its_target_untouched() {
    use std::os::unix::fs::MetadataExt as _;
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let victim = w.root.path().join("root-only.conf");
    std::fs::write(&victim, "owned by root\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lock = a.dir.join(".privitty-license.lock");
    let _ = std::fs::remove_file(&lock);
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    if std::fs::metadata(&victim).unwrap().uid() == 0 {
        std::os::unix::fs::chown(&a.dir, Some(1000), Some(1000)).unwrap();
    }
    let before_owner = std::fs::metadata(&victim)
        .map(|m| (m.uid(), m.gid(), m.mode()))
        .unwrap();
    let files = license_files(&a.dir);

    for args in [&["sync"][..], &["deactivate"][..], &["activate", &url][..]] {
        let run = w.edge(&a, args);
        assert_eq!(
            run.code, 4,
            "a symlinked lock file is a local file error: {run:?}"
        );
        assert!(
            run.stderr.contains(".privitty-license.lock") && run.stderr.contains("symlink"),
            "the error names the file and the problem: {run:?}"
        );
        let after = std::fs::metadata(&victim)
            .map(|m| (m.uid(), m.gid(), m.mode()))
            .unwrap();
        assert_eq!(
            after, before_owner,
            "`{}` changed the link target's owner or mode",
            args[0]
        );
        assert_eq!(read(w.root.path(), "root-only.conf"), "owned by root\n");
        assert_eq!(
            license_files(&a.dir),
            files,
            "`{}` changed the license files",
            args[0]
        );
    }
    // status only reads and never takes the lock
    assert_eq!(w.status(&a)["status"], "active");

    // once the link is gone, the lock file is recreated and the commands work again
    std::fs::remove_file(&lock).unwrap();
    let run = w.edge(&a, &["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());
}
