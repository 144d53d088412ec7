//! The real `privitty-edge license …` CLI against the real server (`cli_*`).

use super::*;

// ================================================================ the CLI against the server

#[test]
fn cli_lifecycle_activate_status_sync_deactivate() {
    let w = world();
    let url = w.server.create_license(&LicenseSpec {
        customer: Some("acme".into()),
        features: vec!["files".into()],
        ..LicenseSpec::default()
    });
    let a = w.device("a");

    let none = w.status(&a);
    assert_eq!(
        (none["status"].clone(), none["reason"].clone()),
        (json!("no_license"), json!("not_activated"))
    );
    let (word, run) = status_text(&w, &a);
    assert_eq!((word.as_str(), run.code), ("no_license", 3), "{run:?}");

    w.activate(&a, &url);
    let uuid = read(&a.dir, "device.uuid");
    assert!(uuid.ends_with('\n'));
    let parsed = uuid::Uuid::parse_str(uuid.trim()).expect("device.uuid is a UUID");
    assert_eq!(parsed.get_version_num(), 4);
    assert_eq!(
        uuid.trim(),
        parsed.hyphenated().to_string(),
        "lowercase hyphenated"
    );
    assert_eq!(read(&a.dir, "license_server.txt").trim(), url);
    assert_eq!(mode(&a.dir.join("license_server.txt")), 0o600);
    assert_eq!(mode(&a.dir.join("activation.json")), 0o600);
    let acts = w.server.activations();
    assert_eq!(acts.len(), 1, "{acts:?}");
    let activation = activation_json(&a);
    assert_eq!(activation["activation_id"], acts[0]["activation_id"]);
    assert_eq!(activation["state"], "active");
    assert_eq!(acts[0]["device_uuid"], uuid.trim());
    assert_eq!(
        acts[0]["device_name"], "test-gateway",
        "device name from PRIVITTY_PROFILE"
    );
    let claims = verify_jwt(&w.server, &read(&a.dir, "privitty.lic"));

    let (word, run) = status_text(&w, &a);
    assert_eq!((word.as_str(), run.code), ("active", 0), "{run:?}");
    for key in [
        "license id",
        "customer",
        "reason",
        "expires",
        "grace ends",
        "device uuid",
        "activation id",
        "license server",
        "last sync ok",
        "last sync error",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{key}: "))),
            "status shows `{key}: …`: {run:?}"
        );
    }
    assert!(
        run.stdout
            .contains(&format!("device uuid: {}", uuid.trim())),
        "{run:?}"
    );
    let st = w.status(&a);
    assert_eq!(st["status"], "active");
    assert_eq!(st["license_id"], claims["sub"]);
    assert_eq!(st["customer"], "acme");
    assert_eq!(st["features"], json!(["files"]));
    assert_eq!(st["device_uuid"], uuid.trim());
    assert_eq!(st["activation_id"], acts[0]["activation_id"]);
    for field in [
        "reason",
        "expires_at",
        "grace_ends_at",
        "license_server",
        "last_sync_ok_at",
        "last_sync_error",
    ] {
        assert!(st.get(field).is_some(), "status --json has `{field}`: {st}");
    }
    let shown = st["license_server"].as_str().expect("license_server shown");
    assert!(
        shown.contains("(redacted)") && !shown.contains(token_of(&url)),
        "{shown}"
    );

    let seq_before = activation_json(&a)["seq"].as_u64().unwrap_or(0);
    let sync = w.edge(&a, &["sync"]);
    assert_eq!(sync.code, 0, "{sync:?}");
    let after = activation_json(&a);
    assert_eq!(
        after["seq"].as_u64().unwrap_or(0),
        seq_before + 1,
        "sync advances seq: {after}"
    );
    assert!(!after["last_sync_ok_at"].is_null(), "{after}");
    assert!(
        w.server.activations()[0]["last_sync_at"].is_i64(),
        "the server saw the sync"
    );
    assert_ne!(
        verify_jwt(&w.server, &read(&a.dir, "privitty.lic"))["jti"],
        claims["jti"],
        "sync stored a fresh license"
    );
    assert!(!w.status(&a)["last_sync_ok_at"].is_null());

    let lic_before = read(&a.dir, "privitty.lic");
    let deact = w.edge(&a, &["deactivate"]);
    assert_eq!(deact.code, 0, "{deact:?}");
    assert!(
        !a.dir.join("privitty.lic").exists(),
        "deactivate moves privitty.lic out of its place"
    );
    assert_eq!(
        read(&a.dir, "privitty.lic.revoked"),
        lic_before,
        "deactivate keeps the license for inspection"
    );
    assert_eq!(activation_json(&a)["state"], "deactivated");
    let st = w.status(&a);
    assert_eq!(
        (st["status"].clone(), st["reason"].clone()),
        (json!("no_license"), json!("deactivated"))
    );
    assert_eq!(w.edge(&a, &["status"]).code, 3);
    assert_eq!(
        w.server.activations()[0]["state"],
        "deactivated",
        "the seat was released on the server"
    );

    let sync = w.edge(&a, &["sync"]);
    assert_eq!(
        sync.code, 7,
        "sync after deactivation is refused locally: {sync:?}"
    );

    // the freed seat goes to a second device
    let b = w.device("b");
    w.activate(&b, &url);
    assert_eq!(w.status(&b)["status"], "active");
}

#[test]
fn cli_reactivation_takes_no_second_seat() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let first = activation_json(&a)["activation_id"].clone();
    let second = w.activate(&a, &url);
    assert_eq!(activation_json(&a)["activation_id"], first, "{second:?}");
    let acts = w.server.activations();
    assert_eq!(acts.len(), 1, "one seat: {acts:?}");
    assert_eq!(w.status(&a)["status"], "active");
    let listing = w.server.admin(&["list-activations"]);
    assert_eq!(
        listing.lines().filter(|l| l.contains("active")).count(),
        1,
        "{listing}"
    );
}

#[test]
fn cli_seat_limit_refuses_a_second_device_until_the_first_deactivates() {
    let w = world();
    let url = w.license();
    let (a, b) = (w.device("a"), w.device("b"));
    w.activate(&a, &url);
    let refused = w.edge(&b, &["activate", &url]);
    assert_eq!(refused.code, 5, "{refused:?}");
    let text = refused.stderr.to_lowercase();
    assert!(
        text.contains("deactivat") || text.contains("administrator"),
        "the message says what to do: {refused:?}"
    );
    assert!(!b.dir.join("privitty.lic").exists());
    let st = w.status(&b);
    assert_eq!(st["status"], "no_license");
    // `license status` says why, until an activation succeeds.
    let why = st["last_activation_error"].as_str().unwrap_or_default();
    assert!(why.contains("seat_limit"), "{st}");
    let text = w.edge(&b, &["status"]);
    assert!(
        text.stdout.contains("last activation error: ") && text.stdout.contains("seat_limit"),
        "{text:?}"
    );

    assert_eq!(w.edge(&a, &["deactivate"]).code, 0);
    w.activate(&b, &url);
    let st = w.status(&b);
    assert_eq!(st["status"], "active");
    assert!(st["last_activation_error"].is_null(), "cleared: {st}");
}

#[test]
fn cli_unknown_and_revoked_tokens_are_refused() {
    let w = world();
    let a = w.device("a");
    let unknown = format!("{}/v1/license/NoSuchToken123", w.server.base_url());
    let run = w.edge(&a, &["activate", &unknown]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(!a.dir.join("privitty.lic").exists());
    assert_eq!(w.status(&a)["reason"], "not_activated");

    let url = w.license();
    w.server.revoke(&url);
    let b = w.device("b");
    let run = w.edge(&b, &["activate", &url]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("revoked"), "{run:?}");

    // revoked after activation: sync learns it, status says so
    let url = w.license();
    let c = w.device("c");
    w.activate(&c, &url);
    w.server.revoke(&url);
    let run = w.edge(&c, &["sync"]);
    assert_eq!(run.code, 5, "{run:?}");
    let st = w.status(&c);
    assert_eq!(
        (st["status"].clone(), st["reason"].clone()),
        (json!("no_license"), json!("revoked"))
    );
}

#[test]
fn cli_transient_faults_change_nothing() {
    let mut w = world();
    // room for `fresh`: a wrong-key answer is a lost response, the server did activate it
    let url = w.server.create_license(&LicenseSpec {
        seats: 3,
        ..LicenseSpec::default()
    });
    let a = w.device("a");
    w.activate(&a, &url);
    let before = license_files(&a.dir);
    // `last_sync_error` is expected to change: it reports the failure
    let usable = |mut st: Value| {
        st["last_sync_error"] = Value::Null;
        st
    };
    let status_before = usable(w.status(&a));
    let fresh = w.device("fresh");

    let faults = [
        ("500", Fault::Status500),
        (
            "429",
            Fault::TooManyRequests {
                retry_after: Duration::from_secs(1),
            },
        ),
        ("garbage-200", Fault::Garbage200),
        ("wrong-key", Fault::WrongKey),
    ];
    for (name, fault) in faults {
        // enough for every retry the client may make
        w.server.fault(fault, 1000);
        for args in [vec!["sync"], vec!["activate", &url]] {
            let run = w.edge(&a, &args);
            assert_eq!(run.code, 6, "{name}: transient errors exit 6: {run:?}");
            assert_eq!(
                license_files(&a.dir),
                before,
                "{name}: `{}` left the files byte-identical",
                args.join(" ")
            );
            assert_eq!(
                usable(w.status(&a)),
                status_before,
                "{name}: status unchanged"
            );
        }
        let run = w.edge(&fresh, &["activate", &url]);
        assert_eq!(run.code, 6, "{name}: {run:?}");
        assert!(
            !fresh.dir.join("privitty.lic").exists() && !fresh.dir.join("activation.json").exists()
        );
        w.server.fault(Fault::None, 0);
    }
    assert!(
        w.server.activations().len() <= 2,
        "retries took no extra seats: {:?}",
        w.server.activations()
    );

    let st = w.status(&a);
    assert!(
        st["last_sync_error"].is_string(),
        "status reports the failed sync: {st}"
    );

    // a short delay is just a slow answer
    w.server.fault(Fault::Delay(Duration::from_millis(300)), 1);
    assert_eq!(w.edge(&a, &["sync"]).code, 0);
    let after_sync = license_files(&a.dir);
    let st = w.status(&a);
    assert!(
        st["last_sync_error"].is_null() && st["last_sync_ok_at"].is_string(),
        "{st}"
    );

    // server gone: unreachable is transient too
    w.server.stop();
    let run = w.edge(&a, &["sync"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert_eq!(license_files(&a.dir), after_sync);
    assert_eq!(w.status(&a)["status"], "active");
}

/// Rewrites `privitty.lic` of a freshly activated copy of `src` and returns the status it gets.
fn status_with_license(w: &World, src: &Device, name: &str, license: &str) -> Value {
    let dev = w.device(name);
    restore(&dev.dir, &snapshot(&src.dir));
    std::fs::write(dev.dir.join("privitty.lic"), license).expect("write license");
    let st = w.status(&dev);
    let expected = if st["status"] == "active" { 0 } else { 3 };
    assert_eq!(
        w.edge(&dev, &["status"]).code,
        expected,
        "{name}: exit code of status {st}"
    );
    st
}

#[test]
fn cli_invalid_license_files_are_no_license_with_the_reason() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let good = read(&a.dir, "privitty.lic");
    let (header, claims) = jwt_parts(&good);
    let key = server_signing_key(&w.server);
    let other = SigningKey::generate(&mut rand_core::OsRng);
    let other_header =
        json!({"alg": "EdDSA", "typ": "privitty-lic+jwt", "kid": kid_of(&other.verifying_key())});
    let parts: Vec<&str> = good.trim().split('.').collect();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        f(&mut c);
        sign_jwt(&key, &header, &c)
    };

    // control: re-signing the same claims with the server's key is accepted
    assert_eq!(
        status_with_license(&w, &a, "control", &with(&|_| {}))["status"],
        "active"
    );
    let _ = std::fs::remove_dir_all(w.root.path().join("control"));

    let mut tampered_claims = claims.clone();
    tampered_claims["seats"] = json!(1000);
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(tampered_claims.to_string().as_bytes()),
        parts[2]
    );
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let tampered_sig = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    let alg_none = format!(
        "{}.{}.",
        b64(
            json!({"alg": "none", "typ": "privitty-lic+jwt", "kid": header["kid"]})
                .to_string()
                .as_bytes()
        ),
        parts[1]
    );
    let hs_header = json!({"alg": "HS256", "typ": "privitty-lic+jwt", "kid": header["kid"]});
    let hs_input = format!("{}.{}", b64(hs_header.to_string().as_bytes()), parts[1]);
    let pubkey_pem = std::fs::read(w.server.pubkey_path()).unwrap();
    let hs256 = format!(
        "{hs_input}.{}",
        b64(&hmac_sha256(&pubkey_pem, hs_input.as_bytes()))
    );
    let unknown_kid = sign_jwt(&other, &other_header, &claims);
    let crit = sign_jwt(
        &key,
        &json!({"alg": "EdDSA", "typ": "privitty-lic+jwt", "kid": header["kid"], "crit": ["x"], "x": 1}),
        &claims,
    );
    let iat = claims["iat"].as_i64().unwrap();

    let cases: Vec<(&str, String, &[&str])> = vec![
        ("tampered-payload", tampered_payload, &["invalid_signature"]),
        ("tampered-signature", tampered_sig, &["invalid_signature"]),
        ("alg-none", alg_none, &["invalid_signature"]),
        ("hs256", hs256, &["invalid_signature"]),
        ("unknown-kid", unknown_kid, &["untrusted_key"]),
        (
            "crit-header",
            crit,
            &["invalid_signature", "corrupt", "unsupported_version"],
        ),
        (
            "wrong-aud",
            with(&|c| c["aud"] = json!("someone-else")),
            &["corrupt"],
        ),
        (
            "wrong-iss",
            with(&|c| c["iss"] = json!("someone-else")),
            &["corrupt"],
        ),
        (
            "exp-before-iat",
            with(&|c| c["exp"] = json!(iat - 10)),
            &["corrupt"],
        ),
        (
            "sync-by-after-exp",
            with(&|c| c["sync_by"] = json!(c["exp"].as_i64().unwrap() + 10)),
            &["corrupt"],
        ),
        (
            "ver-2",
            with(&|c| c["ver"] = json!(2)),
            &["unsupported_version"],
        ),
        (
            "other-activation",
            with(&|c| c["act"] = json!("act-someone-else")),
            &["activation_mismatch"],
        ),
        ("not-a-jwt", "hello".to_string(), &["corrupt"]),
        (
            "oversized",
            format!("{}.{}.{}", parts[0], "A".repeat(2 * 1024 * 1024), parts[2]),
            &["corrupt"],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, license, reasons) in &cases {
        let st = status_with_license(&w, &a, name, license);
        let reason = st["reason"].as_str().unwrap_or("-").to_string();
        if st["status"] != "no_license" || !reasons.contains(&reason.as_str()) {
            wrong.push(format!(
                "{name}: expected no_license/{reasons:?}, got {}/{reason}",
                st["status"]
            ));
        }
    }

    // a license copied from another device's directory
    let b = w.device("b");
    let url_b = w.license();
    w.activate(&b, &url_b);
    std::fs::copy(b.dir.join("privitty.lic"), a.dir.join("privitty.lic")).unwrap();
    let st = w.status(&a);
    if (st["status"].as_str(), st["reason"].as_str()) != (Some("no_license"), Some("wrong_device"))
    {
        wrong.push(format!(
            "copied-from-another-device: expected no_license/wrong_device, got {st}"
        ));
    }

    // privitty.lic as a symlink (to a valid license of this very device)
    let elsewhere = w.root.path().join("elsewhere.lic");
    std::fs::write(&elsewhere, &good).unwrap();
    std::fs::remove_file(a.dir.join("privitty.lic")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, a.dir.join("privitty.lic")).unwrap();
    let st = w.status(&a);
    if st["status"] != "no_license" {
        wrong.push(format!("symlink: expected no_license, got {st}"));
    }
    assert!(
        wrong.is_empty(),
        "invalid licenses not rejected as expected:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn cli_offline_license_is_usable_but_cannot_sync() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    let device = uuid::Uuid::new_v4().to_string();
    std::fs::write(a.dir.join("device.uuid"), format!("{device}\n")).unwrap();
    std::fs::write(
        a.dir.join("privitty.lic"),
        w.server.issue_offline(&url, &device),
    )
    .unwrap();
    let st = w.status(&a);
    assert_eq!(st["status"], "active", "{st}");
    let run = w.edge(&a, &["sync"]);
    assert_eq!(
        run.code, 7,
        "a file-drop license has no activation to sync: {run:?}"
    );
}

#[test]
fn cli_status_moves_active_grace_expired_as_time_passes() {
    let w = world();
    let url = w.server.create_license(&LicenseSpec {
        entitlement: Duration::from_secs(8),
        grace: Duration::from_secs(3),
        ..LicenseSpec::default()
    });
    let a = w.device("a");
    w.activate(&a, &url);
    let st = w.status(&a);
    assert_eq!(st["status"], "active", "{st}");
    assert!(
        st["expires_at"].is_string() && st["grace_ends_at"].is_string(),
        "{st}"
    );
    eventually(DEADLINE, "status grace_period", || {
        let (word, run) = status_text(&w, &a);
        assert!(word == "active" || word == "grace_period", "{run:?}");
        (word == "grace_period").then(|| assert_eq!(run.code, 0, "grace_period is usable"))
    });
    eventually(DEADLINE, "status expired", || {
        let (word, run) = status_text(&w, &a);
        assert!(word == "grace_period" || word == "expired", "{run:?}");
        (word == "expired").then(|| assert_eq!(run.code, 3, "expired is not usable"))
    });
}

#[test]
fn cli_setting_the_clock_back_never_extends_a_license() {
    let w = world();
    // entitlement ends soon; the grace period is long, so a sync inside it brings a license whose
    // sync_by is already reached
    let url = w.server.create_license(&LicenseSpec {
        entitlement: Duration::from_secs(8),
        grace: Duration::from_secs(3600),
        ..LicenseSpec::default()
    });
    let a = w.device("a");
    w.activate(&a, &url);
    let at = |offset: &str, args: &[&str]| {
        let mut cmd = Command::new(tool("faketime"));
        cmd.args(["-f", offset]).arg(bin("privitty-edge"));
        w.prepare(&mut cmd, &a, args);
        Run::of(cmd, &[args, &["(under faketime", offset, ")"]].concat())
    };
    let status_at = |offset: &str| -> Value {
        let run = at(offset, &["status", "--json"]);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
    };
    // control: the fake clock does reach the CLI (a day ahead is past entitlement + grace)
    assert_eq!(
        status_at("+1d")["status"],
        "expired",
        "faketime must affect privitty-edge"
    );

    eventually(DEADLINE, "status grace_period", || {
        (w.status(&a)["status"] == "grace_period").then_some(())
    });
    let run = w.edge(&a, &["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(w.status(&a)["status"], "grace_period");
    let files = license_files(&a.dir);

    for offset in ["-1h", "-2d", "-400d"] {
        assert_eq!(
            status_at(offset)["status"],
            "grace_period",
            "clock {offset} brought back `active`"
        );
    }
    assert_eq!(license_files(&a.dir), files, "status only reads");
    // a sync with the clock set back keeps the license in its grace period too
    let run = at("-1d", &["sync"]);
    assert!(run.code == 0 || run.code == 6, "{run:?}");
    assert_eq!(w.status(&a)["status"], "grace_period", "{run:?}");
    assert_eq!(status_at("-1d")["status"], "grace_period");
}

#[test]
fn cli_sigkill_during_activate_or_sync_never_tears_the_directory() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    // creates device.uuid (the URL is refused, and the refusal is recorded for `license status`
    // in sync_state.json), so every attempt below is the same device
    let unknown = format!("{}/v1/license/NoSuchToken", w.server.base_url());
    assert_eq!(w.edge(&a, &["activate", &unknown]).code, 5);
    let empty = snapshot(&a.dir);
    assert_eq!(
        empty.keys().collect::<Vec<_>>(),
        vec!["device.uuid", "sync_state.json"]
    );

    for syscalls in ["fsync,fdatasync", "rename,renameat,renameat2"] {
        let mut kills = 0;
        for n in 1.. {
            assert!(n < 200, "activate never completed under {syscalls}");
            restore(&a.dir, &empty);
            let killed = run_killed_at(&w, &a, &["activate", &url], syscalls, n);
            let what = format!("activate killed at {syscalls} #{n}");
            assert_not_torn(&w, &a, &["no_license", "active"], &what);
            if !killed {
                break;
            }
            kills += 1;
        }
        eprintln!("activate: killed at each of its first {kills} {syscalls} calls, then completed");
        assert!(
            kills >= 2,
            "activate was interrupted only {kills} times at {syscalls}: injection did not bite"
        );
        assert_eq!(w.status(&a)["status"], "active");
        assert_eq!(
            w.server.activations().len(),
            1,
            "retried activations took one seat"
        );
    }

    let activated = snapshot(&a.dir);
    let seq = activation_json(&a)["seq"].as_u64().unwrap_or(0);
    for syscalls in ["fsync,fdatasync", "rename,renameat,renameat2"] {
        let mut kills = 0;
        for n in 1.. {
            assert!(n < 200, "sync never completed under {syscalls}");
            restore(&a.dir, &activated);
            let killed = run_killed_at(&w, &a, &["sync"], syscalls, n);
            assert_not_torn(
                &w,
                &a,
                &["active"],
                &format!("sync killed at {syscalls} #{n}"),
            );
            if !killed {
                break;
            }
            kills += 1;
        }
        eprintln!("sync: killed at each of its first {kills} {syscalls} calls, then completed");
        assert!(kills >= 1, "sync was never interrupted at {syscalls}");
        assert_eq!(activation_json(&a)["seq"].as_u64().unwrap_or(0), seq + 1);
    }
}

#[test]
fn cli_concurrent_syncs_serialize() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let seq = activation_json(&a)["seq"].as_u64().unwrap_or(0);
    // the first sync to reach the server is held there, so the second one runs while it is in flight
    w.server.fault(Fault::Delay(Duration::from_millis(700)), 1);
    let spawn = |cmd: &mut Command| {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let p1 = spawn(&mut w.edge_cmd(&a, &["sync"]));
    let p2 = spawn(&mut w.edge_cmd(&a, &["sync"]));
    for p in [p1, p2] {
        let out = p.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        activation_json(&a)["seq"].as_u64().unwrap_or(0),
        seq + 2,
        "each sync advanced seq once"
    );
    let seqs: Vec<u64> = w.server.activations()[0]["sync_seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2, "{seqs:?}");
    assert_eq!(
        seqs[1],
        seqs[0] + 1,
        "the server saw the concurrent syncs one after another: {seqs:?}"
    );
    assert_eq!(w.status(&a)["status"], "active");
}

#[test]
fn cli_refuses_bad_and_insecure_urls() {
    let w = world();
    let a = w.device("a");
    for url in [
        "http://example.com/v1/license/TOKEN123",
        "http://10.0.0.1/v1/license/TOKEN123",
        "ftp://127.0.0.1/v1/license/TOKEN123",
        "https://example.com/v2/license/TOKEN123",
        "https://example.com/v1/license/bad token",
        "not a url",
    ] {
        let run = w.edge(&a, &["activate", url]);
        assert_eq!(run.code, 2, "{url}: {run:?}");
    }
    assert!(!a.dir.join("privitty.lic").exists());
}

#[test]
fn cli_token_appears_only_in_the_delivery_url_file() {
    let w = world();
    let url = w.license();
    let token = token_of(&url).to_string();
    let (a, b) = (w.device("a"), w.device("b"));
    let mut runs = Vec::new();
    let mut edge = |dev: &Device, args: &[&str]| {
        let mut cmd = w.edge_cmd(dev, args);
        cmd.env("PRIVITTY_LOG", "trace");
        let run = Run::of(cmd, args);
        runs.push(run);
    };
    edge(&a, &["activate", &url]);
    edge(&a, &["status"]);
    edge(&a, &["status", "--json"]);
    edge(&a, &["sync"]);
    edge(&b, &["activate", &url]); // refused: seat limit
    w.server.fault(Fault::Status500, 1000);
    edge(&a, &["sync"]); // transient
    w.server.fault(Fault::None, 0);
    edge(&a, &["deactivate"]);
    edge(&a, &["status"]);
    assert_eq!(runs[0].code, 0, "{:?}", runs[0]);
    assert_eq!(runs[4].code, 5, "{:?}", runs[4]);
    for run in &runs {
        assert!(
            !run.stdout.contains(&token) && !run.stderr.contains(&token),
            "TOKEN leaked: {run:?}"
        );
    }
    for dev in [&a, &b] {
        for (name, (bytes, _)) in snapshot(&dev.dir) {
            if name != "license_server.txt" {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&token),
                    "TOKEN in {name}"
                );
            }
        }
    }
    assert!(
        !w.server.output().contains(&token),
        "TOKEN in the server's log"
    );
}

#[test]
fn cli_https_with_the_ca_works_and_without_it_fails_with_a_hint() {
    let w = tls_world();
    let url = w.license();
    let (a, b) = (w.device("a"), w.device("b"));
    let mut cmd = w.edge_cmd(&a, &["activate", &url]);
    cmd.env("SSL_CERT_FILE", w.server.ca_path());
    let run = Run::of(cmd, &["activate", "(SSL_CERT_FILE set)"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", w.server.output());
    assert_eq!(w.status(&a)["status"], "active");

    let run = w.edge(&b, &["activate", &url]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("SSL_CERT_FILE") || run.stderr.contains("CA"),
        "the error hints at the CA: {run:?}"
    );
    assert!(!b.dir.join("privitty.lic").exists());
}

#[test]
fn cli_local_only_deactivate_keeps_the_server_seat() {
    let mut w = world();
    let url = w.license();
    let (a, b) = (w.device("a"), w.device("b"));
    w.activate(&a, &url);
    w.server.stop();
    let run = w.edge(&a, &["deactivate", "--local-only"]);
    assert_eq!(run.code, 0, "--local-only needs no server: {run:?}");
    let st = w.status(&a);
    assert_eq!(
        (st["status"].clone(), st["reason"].clone()),
        (json!("no_license"), json!("deactivated"))
    );
    assert!(!a.dir.join("privitty.lic").exists());
    assert!(a.dir.join("privitty.lic.revoked").is_file());

    w.server.restart();
    assert_eq!(
        w.server.activations()[0]["state"],
        "active",
        "the seat is still held on the server"
    );
    let run = w.edge(&b, &["activate", &url]);
    assert_eq!(run.code, 5, "{run:?}");
}

#[test]
fn cli_unusable_accounts_dir_is_a_local_file_error() {
    let w = world();
    let url = w.license();
    let file = w.root.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let dev = Device {
        dir: file.clone(),
        _dump: DumpDirOnFailure(w.root.path().to_path_buf()),
    };
    let run = w.edge(&dev, &["activate", &url]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("not-a-dir"),
        "the error names the path: {run:?}"
    );
    assert!(
        w.server.activations().is_empty(),
        "nothing reached the server"
    );
}
