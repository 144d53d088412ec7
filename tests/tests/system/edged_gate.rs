//! The license gate over real HTTP, with the real engine: every row of the gate table under every
//! license status, the exact -32001 answer, and usage counted for licensed calls that succeeded.

use privitty_tests::edged_stack::{EdgedStack, LicenseState};
use serde_json::{Value, json};

const REQUIRED: &str = "Run `privitty-edge license activate <url>` to install or renew.";

/// Open rows: (method, params). They must never answer -32001, whatever the license.
fn open_rows() -> Vec<(&'static str, Value)> {
    vec![
        ("get_config", json!([1, "displayname"])),
        ("get_info", json!([1])),
        ("get_connectivity", json!([1])),
        ("get_chatlist_entries", json!([1, 0, null, null])),
        ("get_chatlist_items_by_entries", json!([1, []])),
        ("get_messages", json!([1, []])),
        ("get_contact_ids", json!([1, 0, null])),
        (
            "lookup_contact_id_by_addr",
            json!([1, "nobody@example.org"]),
        ),
        ("get_chat_securejoin_qr_code", json!([1, null])),
        ("secure_join", json!([1, "OPENPGP4FPR:not-a-real-invite"])),
        ("send_msg", json!([1, 10, {"text": "hello"}])),
        ("privitty_license_status", json!([])),
        // The peer protocol's read-only queries.
        ("privitty_is_chat_encrypted", json!([1, 10])),
        ("privitty_get_peer_capabilities", json!([1, 10])),
        ("privitty_get_file_display_status", json!([1, 10])),
        (
            "privitty_get_file_access_info",
            json!([1, "00000000-0000-4000-8000-000000000000"]),
        ),
    ]
}

/// Gated rows: the documented methods, the module's, and names the table does not know.
fn gated_rows(file: &str) -> Vec<(&'static str, Value)> {
    vec![
        (
            "privitty_send_file",
            json!([1, 10, 10, file, true, false, 60]),
        ),
        (
            "privitty_send_group_file",
            json!([1, 10, file, true, false, 60]),
        ),
        (
            "privitty_revoke_file_access",
            json!([1, 10, "00000000-0000-4000-8000-000000000000", 10]),
        ),
        (
            "privitty_get_file_info",
            json!([1, "00000000-0000-4000-8000-000000000000"]),
        ),
        (
            "privitty_send_file_access",
            json!([1, 10, "00000000-0000-4000-8000-000000000000", 10, 60]),
        ),
        (
            "privitty_deny_file_access",
            json!([1, 10, "00000000-0000-4000-8000-000000000000", 10]),
        ),
        (
            "privitty_init_access_grant_request",
            json!([1, 10, "00000000-0000-4000-8000-000000000000"]),
        ),
        ("privitty_decrypt_file", json!([1, 10])),
        ("privitty_invented_method", json!([])),
    ]
}

fn error_code(resp: &Value) -> Option<i64> {
    resp.get("error").and_then(|e| e["code"].as_i64())
}

#[test]
fn every_gate_row_under_every_license_status() {
    for state in LicenseState::ALL {
        let mut edged = EdgedStack::builder().license(state).start();
        let status = state.status();
        let health = edged.request("GET", "/health", None);
        assert_eq!(health.status, 200);
        assert_eq!(health.json()["license"]["status"], status, "{state:?}");
        assert_eq!(
            edged
                .result("privitty_license_status", json!([]))
                .get("status")
                .unwrap(),
            status
        );

        let plain = edged.accounts.join("files/report.txt");
        std::fs::write(&plain, "sensor report\n").unwrap();
        let file = plain.to_str().unwrap();

        for (method, params) in open_rows() {
            let r = edged.call(method, params.clone());
            assert_ne!(
                error_code(&r),
                Some(-32001),
                "{method} is open, under {status}: {r}"
            );
        }
        for (method, params) in gated_rows(file) {
            let r = edged.call(method, params.clone());
            if state.allows_gated() {
                assert_ne!(error_code(&r), Some(-32001), "{method} under {status}: {r}");
            } else {
                let err = &r["error"];
                assert_eq!(err["code"], -32001, "{method} under {status}: {r}");
                assert_eq!(
                    err["message"],
                    format!("Privitty license required: status is '{status}'. {REQUIRED}"),
                    "{method}"
                );
                assert_eq!(err["data"]["status"], status);
                assert_eq!(r["id"], 1);
                let reason = &err["data"]["reason"];
                match state {
                    LicenseState::Missing => assert_eq!(reason, "not_activated"),
                    LicenseState::Untrusted => assert_eq!(reason, "untrusted_key"),
                    _ => assert!(reason.is_null(), "{reason}"),
                }
            }
        }
        if state.allows_gated() {
            // Unknown privitty_* names pass the gate and only then are not found.
            let r = edged.call("privitty_invented_method", json!([]));
            assert_eq!(error_code(&r), Some(-32601), "{r}");
            let second = edged.accounts.join("files/second.txt");
            std::fs::write(&second, "second report\n").unwrap();
            let sent = edged.result(
                "privitty_send_file",
                json!([1, 10, 10, second, true, false, 60]),
            );
            let prv = sent["encrypted_path"].as_str().expect("encrypted_path");
            assert!(
                prv.ends_with(".prv") && std::path::Path::new(prv).is_file(),
                "{sent}"
            );
        }
        assert!(edged.stop().success(), "{state:?}: clean stop exits 0");
        let usage = std::fs::read_to_string(edged.accounts.join("usage.json")).unwrap_or_default();
        if state.allows_gated() {
            // Two successful privitty_send_file calls (the row and the one above), counted and flushed at stop.
            assert!(
                usage.contains("privitty_send_file"),
                "usage.json after stop: {usage:?}"
            );
        } else {
            assert!(
                !usage.contains("privitty_send_file"),
                "rejected calls are not usage: {usage:?}"
            );
        }
    }
}

/// The `.prv` files in a directory (what a gated call that ran would have left behind).
fn prv_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".prv"))
        .collect()
}

#[test]
fn gated_calls_hidden_in_batches_notifications_or_name_tricks_do_not_run_unlicensed() {
    let edged = EdgedStack::builder().license(LicenseState::Expired).start();
    let plain = edged.accounts.join("files/secret.txt");
    std::fs::write(&plain, "do not encrypt me\n").unwrap();
    let params = json!([1, 10, 10, plain, true, false, 0]);
    let call = |method: &str, id: Option<u32>| {
        let mut c = json!({"jsonrpc":"2.0","method":method,"params":params});
        if let Some(id) = id {
            c["id"] = json!(id);
        }
        c
    };

    // A notification: 204 as always, and nothing ran.
    let r = edged.post_rpc(&call("privitty_send_file", None).to_string());
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    // A batch mixing open and gated calls, and gated notifications.
    let batch = json!([
        json!({"jsonrpc":"2.0","method":"get_config","params":[1, "displayname"],"id":1}),
        call("privitty_send_file", Some(2)),
        call("privitty_send_file", None),
        call("privitty_send_group_file", None),
        call("privitty_send_file", Some(3)),
    ]);
    let r = edged.post_rpc(&batch.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let answers = r.json();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0]["result"], "edged-test");
    for a in &answers[1..] {
        assert_eq!(a["error"]["code"], -32001, "{a}");
    }
    // Spellings that are not the method: never a success, never a file.
    for method in [
        "Privitty_send_file",
        "PRIVITTY_SEND_FILE",
        " privitty_send_file",
        "privitty_send_file ",
        "privitty_send_file\u{0}",
    ] {
        let r = edged.call(method, params.clone());
        assert!(r.get("error").is_some(), "{method:?}: {r}");
    }
    // A JSON escape spells the very same name, so the gate sees it.
    let r = edged.post_rpc(
        &call("privitty_send_file", Some(4))
            .to_string()
            .replace("privitty_send_file", "privitty\\u005fsend_file"),
    );
    assert_eq!(r.json()["error"]["code"], -32001, "{}", r.body);
    assert!(
        prv_files(&edged.accounts).is_empty(),
        "gated calls ran unlicensed: {:?}",
        prv_files(&edged.accounts)
    );
}

#[test]
fn only_licensed_calls_that_succeeded_are_counted() {
    let mut edged = EdgedStack::builder().license(LicenseState::Active).start();
    let plain = edged.accounts.join("files/report.txt");
    std::fs::write(&plain, "sensor report\n").unwrap();
    let ok = edged.call(
        "privitty_send_file",
        json!([1, 10, 10, plain, true, false, 0]),
    );
    assert!(ok["result"]["encrypted_path"].is_string(), "{ok}");
    // The same file again fails (the .prv exists), as do a missing file and bad params.
    for params in [
        json!([1, 10, 10, plain, true, false, 0]),
        json!([
            1,
            10,
            10,
            edged.accounts.join("files/missing.txt"),
            true,
            false,
            0
        ]),
        json!([1, 10]),
    ] {
        let r = edged.call("privitty_send_file", params);
        assert!(r.get("error").is_some(), "{r}");
    }
    assert!(edged.stop().success());
    let usage: Value =
        serde_json::from_str(&std::fs::read_to_string(edged.accounts.join("usage.json")).unwrap())
            .unwrap();
    assert_eq!(
        usage["open"]["counters"]["privitty_send_file"], 1,
        "usage.json: {usage}"
    );
}
