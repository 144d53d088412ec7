//! The reference license server spoken to directly over HTTP (`server_*`).

use super::*;

// ================================================================ the server, over HTTP

#[test]
fn server_activate_sync_deactivate_follow_the_protocol() {
    let w = world();
    let spec = LicenseSpec {
        seats: 1,
        customer: Some("acme".into()),
        features: vec!["files".into(), "revoke".into()],
        ..LicenseSpec::default()
    };
    let url = w.server.create_license(&spec);
    assert!(
        url.starts_with(&format!("{}/v1/license/", w.server.base_url())),
        "{url}"
    );
    let token = token_of(&url);
    assert!(
        token.len() >= 20
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
    );
    let (dev1, dev2) = (new_uuid(), new_uuid());

    let first = put_activate(&url, &dev1, "nonce-1");
    assert_eq!(first.status, 201, "{}", first.body);
    let first = first.json();
    let act = first["activation_id"]
        .as_str()
        .expect("activation_id")
        .to_string();
    let secret = first["device_secret"]
        .as_str()
        .expect("device_secret")
        .to_string();
    let claims = verify_jwt(&w.server, first["license_jwt"].as_str().expect("jwt"));
    assert_eq!(claims["ver"], 1);
    assert_eq!(claims["iss"], "privitty-license");
    assert_eq!(claims["aud"], "privitty-edge");
    assert_eq!(claims["dev"], dev1.as_str());
    assert_eq!(claims["act"], act.as_str());
    assert_eq!(claims["nce"], "nonce-1");
    assert_eq!(claims["customer"], "acme");
    assert_eq!(claims["seats"], 1);
    assert_eq!(claims["features"], json!(["files", "revoke"]));
    assert_ne!(
        claims["sub"], token,
        "sub is the license id, never the TOKEN"
    );
    let (iat, sync_by, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["sync_by"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(sync_by - iat, 7 * 86400, "sync_by = iat + sync window");
    assert_eq!(exp - iat, 30 * 86400, "exp = iat + offline allowance");
    assert!((first["server_time"].as_i64().unwrap() - iat).abs() <= 1);

    // a retried activation: same seat, same secret, fresh license
    let again = put_activate(&url, &dev1, "nonce-2");
    assert_eq!(again.status, 200, "{}", again.body);
    let again = again.json();
    assert_eq!(again["activation_id"], act.as_str());
    assert_eq!(again["device_secret"], secret.as_str());
    let claims2 = verify_jwt(&w.server, again["license_jwt"].as_str().unwrap());
    assert_ne!(claims2["jti"], claims["jti"]);
    assert_eq!(claims2["nce"], "nonce-2");

    let full = put_activate(&url, &dev2, "n");
    assert_eq!(full.status, 409, "{}", full.body);
    assert_eq!(full.json()["error"], "seat_limit");
    assert!(
        full.json()["message"]
            .as_str()
            .unwrap()
            .contains("deactivate another device")
    );

    // sync: auth, usage idempotent per report_id
    let usage = json!({"activation_id": act, "current_jti": claims2["jti"], "seq": 1, "nonce": "s1",
        "usage": [{"report_id": "r1", "period_start": 0, "period_end": 10, "counters": {"files_sent": 3}}]});
    assert_eq!(post_sync(&url, &dev1, None, usage.clone()).status, 401);
    let bad = post_sync(&url, &dev1, Some("wrong"), usage.clone());
    assert_eq!(
        (bad.status, bad.json()["error"].clone()),
        (401, json!("bad_secret"))
    );
    let nobody = post_sync(&url, &dev2, Some(&secret), usage.clone());
    assert_eq!(
        (nobody.status, nobody.json()["error"].clone()),
        (404, json!("not_activated"))
    );
    for seq in [1, 2] {
        let mut body = usage.clone();
        body["seq"] = json!(seq);
        let ok = post_sync(&url, &dev1, Some(&secret), body);
        assert_eq!(ok.status, 200, "{}", ok.body);
        let ok = ok.json();
        assert_eq!(ok["acked_report_ids"], json!(["r1"]));
        let c = verify_jwt(&w.server, ok["license_jwt"].as_str().unwrap());
        assert_eq!(
            (c["act"].clone(), c["nce"].clone()),
            (json!(act), json!("s1"))
        );
    }
    let acts = w.server.activations();
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert_eq!(
        acts[0]["usage"],
        json!({"files_sent": 3}),
        "a report sent twice counts once"
    );
    assert_eq!(acts[0]["sync_seqs"], json!([1, 2]));
    assert!(
        !serde_json::to_string(&acts).unwrap().contains(&secret),
        "no device secret in admin output"
    );

    // deactivate: secret checked, idempotent, seat freed
    assert_eq!(delete(&url, &dev1, Some("wrong")).status, 401);
    assert_eq!(delete(&url, &dev1, Some(&secret)).status, 204);
    assert_eq!(
        delete(&url, &dev1, Some(&secret)).status,
        204,
        "already released is still 204"
    );
    let gone = post_sync(&url, &dev1, Some(&secret), usage.clone());
    assert_eq!(
        (gone.status, gone.json()["error"].clone()),
        (410, json!("deactivated"))
    );
    assert_eq!(
        put_activate(&url, &dev2, "n").status,
        201,
        "the freed seat goes to another device"
    );
    assert_eq!(
        put_activate(&url, &dev1, "n").status,
        409,
        "the first device has no seat any more"
    );

    // unknown token, bad device id, revocation
    let unknown = put_activate(
        &format!("{}/v1/license/NoSuchToken", w.server.base_url()),
        &dev1,
        "n",
    );
    assert_eq!(
        (unknown.status, unknown.json()["error"].clone()),
        (404, json!("unknown_token"))
    );
    assert_eq!(put_activate(&url, "not-a-uuid", "n").status, 400);
    w.server.revoke(&url);
    let revoked = put_activate(&url, &dev2, "n");
    assert_eq!(
        (revoked.status, revoked.json()["error"].clone()),
        (410, json!("revoked"))
    );
    let secret2 = device_secret_from_state(&w, &dev2);
    let revoked_sync = post_sync(&url, &dev2, Some(&secret2), json!({"seq": 1}));
    assert_eq!(
        (revoked_sync.status, revoked_sync.json()["error"].clone()),
        (410, json!("revoked"))
    );

    let log = w.server.output();
    assert!(
        log.contains("activated"),
        "server logs its lifecycle: {log}"
    );
    assert!(
        !log.contains(token),
        "the TOKEN must never be logged:\n{log}"
    );
    assert!(
        !log.contains(&secret),
        "a device secret must never be logged"
    );
}

/// The second device's secret, from the admin-visible state (a revoked license answers no activation).
fn device_secret_from_state(w: &World, device: &str) -> String {
    let state: Value =
        serde_json::from_str(&read(w.server.state_dir(), "state.json")).expect("state.json");
    state["activations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["device_uuid"] == device)
        .and_then(|a| a["device_secret"].as_str())
        .expect("device holds an activation")
        .to_string()
}

#[test]
fn server_restart_keeps_seats_key_and_port() {
    let mut w = world();
    let url = w.license();
    let dev = new_uuid();
    let first = put_activate(&url, &dev, "n").json();
    let pubkey = std::fs::read(w.server.pubkey_path()).unwrap();
    let port = w.server.port();
    for path in ["signing-key.pem", "state.json", "admin-token"] {
        assert_eq!(mode(&w.server.state_dir().join(path)), 0o600, "{path} mode");
    }

    w.server.restart();
    assert_eq!(w.server.port(), port, "restart keeps the port");
    assert_eq!(
        std::fs::read(w.server.pubkey_path()).unwrap(),
        pubkey,
        "the signing key is kept"
    );
    let again = put_activate(&url, &dev, "n");
    assert_eq!(
        again.status, 200,
        "the seat survived the restart: {}",
        again.body
    );
    assert_eq!(again.json()["activation_id"], first["activation_id"]);
    verify_jwt(&w.server, again.json()["license_jwt"].as_str().unwrap());
    assert_eq!(put_activate(&url, &new_uuid(), "n").status, 409);
}

#[test]
fn server_faults_apply_to_the_next_protocol_calls_only() {
    let w = world();
    let url = w.license();
    let dev = new_uuid();

    w.server.fault(Fault::Status500, 2);
    // admin calls are never affected by a fault
    assert_eq!(w.server.activations().len(), 0);
    assert_eq!(put_activate(&url, &dev, "n").status, 500);
    assert_eq!(put_activate(&url, &dev, "n").status, 500);
    assert!(
        w.server.activations().is_empty(),
        "a 500 fault changes nothing"
    );

    w.server.fault(
        Fault::TooManyRequests {
            retry_after: Duration::from_secs(7),
        },
        1,
    );
    let limited = put_activate(&url, &dev, "n");
    assert_eq!(
        (limited.status, limited.retry_after.as_deref()),
        (429, Some("7"))
    );

    w.server.fault(Fault::Garbage200, 1);
    let garbage = put_activate(&url, &dev, "n");
    assert_eq!(garbage.status, 200);
    assert!(
        serde_json::from_str::<Value>(&garbage.body).is_err(),
        "garbage-200 is not JSON"
    );

    w.server.fault(Fault::WrongKey, 1);
    let wrong = put_activate(&url, &dev, "n").json();
    let (header, _) = jwt_parts(wrong["license_jwt"].as_str().unwrap());
    let pem = std::fs::read_to_string(w.server.pubkey_path()).unwrap();
    let trusted_kid = kid_of(&VerifyingKey::from_public_key_pem(&pem).unwrap());
    assert_ne!(
        header["kid"],
        trusted_kid.as_str(),
        "wrong-key signs with another key"
    );

    w.server.fault(Fault::Delay(Duration::from_millis(200)), 1);
    assert_eq!(
        put_activate(&url, &dev, "n").status,
        200,
        "delay answers normally"
    );

    w.server.fault(Fault::Status500, 5);
    w.server.fault(Fault::None, 0);
    assert_eq!(
        put_activate(&url, &dev, "n").status,
        200,
        "Fault::None clears"
    );

    let no_admin = http(
        "GET",
        &format!("{}/admin/v1/activations", w.server.base_url()),
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(no_admin.status, 401);
    let huge = http(
        "PUT",
        &format!("{url}/devices/{dev}"),
        None,
        Some(json!({"nonce": "x".repeat(70_000)})),
        None,
    )
    .unwrap();
    assert_eq!(huge.status, 413);
}

#[test]
fn server_license_with_ended_entitlement_is_refused() {
    let w = world();
    let url = w.server.create_license(&LicenseSpec {
        entitlement: Duration::from_secs(5),
        grace: Duration::from_secs(1),
        ..LicenseSpec::default()
    });
    let dev = new_uuid();
    let first = put_activate(&url, &dev, "n");
    assert_eq!(first.status, 201, "{}", first.body);
    let secret = first.json()["device_secret"].as_str().unwrap().to_string();
    let answer = eventually(
        DEADLINE,
        "activation to be refused after the entitlement",
        || {
            let a = put_activate(&url, &new_uuid(), "n");
            (a.status == 410).then_some(a)
        },
    );
    assert_eq!(answer.json()["error"], "license_expired");
    let synced = eventually(
        DEADLINE,
        "sync to be refused after entitlement + grace",
        || {
            let a = post_sync(&url, &dev, Some(&secret), json!({"seq": 1}));
            (a.status != 200).then_some(a)
        },
    );
    assert_eq!(
        (synced.status, synced.json()["error"].clone()),
        (410, json!("license_expired"))
    );
}

#[test]
fn server_offline_license_has_no_activation() {
    let w = world();
    let url = w.license();
    let dev = new_uuid();
    let claims = verify_jwt(&w.server, &w.server.issue_offline(&url, &dev));
    assert_eq!(claims["dev"], dev.as_str());
    assert!(claims.get("act").is_none(), "{claims}");
    assert!(w.server.activations().is_empty());
}

#[test]
fn server_tls_needs_its_ca() {
    let w = tls_world();
    let url = w.license();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let dev = new_uuid();
    let body = json!({"nonce": "n"});
    let ok = http(
        "PUT",
        &format!("{url}/devices/{dev}"),
        None,
        Some(body.clone()),
        Some(&w.server.ca_path()),
    )
    .expect("https with the CA");
    assert_eq!(ok.status, 201, "{}", ok.body);
    let err = http(
        "PUT",
        &format!("{url}/devices/{dev}"),
        None,
        Some(body),
        None,
    )
    .err()
    .expect("https without the CA fails");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
