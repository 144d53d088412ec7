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
        ("privitty_handshake", json!([1, 10])),
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

        let plain = edged.accounts.join("report.txt");
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
            let second = edged.accounts.join("second.txt");
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
