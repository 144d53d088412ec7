//! Protected files between real gateways (the peer protocol, `edged/PEER-PROTOCOL.md`): three
//! complete stacks (privitty-init managed → privitty-edged → the real engine, licensed by the
//! reference license server) and a stock engine, mailing through the real loopback mail server.
//!
//! One test walks the whole story, in order: handshake, a 300 KB file the peer decrypts to the
//! original bytes, a file whose grant forbids download, revocation (the peer's key gone from its
//! store), a 5 s grant that expires, renew request → grant, deny, a group of three with one
//! member revoked, the peer's stack stopped in the middle of an exchange, forged / unsigned /
//! replayed updates injected through the engine's own `send_webxdc_status_update`, no control
//! noise on `/events`, and what a stock Delta Chat engine sees. It prints the times it measures.
//!
//! Skipped (with `SKIPPED:` on stderr) where the mail server cannot run; a failure instead under
//! `PRIVITTY_REQUIRE_ALL_TESTS=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer;
use privitty_tests::gateways::{ACCOUNT, DEADLINE, Gateway, Gateways, secure_join};
use privitty_tests::stock_engine::StockEngine;
use privitty_tests::support;
use serde_json::{Value, json};

const ACCESS_DENIED: i64 = -32032;

/// Arbitrary bytes (every byte value, no structure).
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_add(seed))
                .wrapping_mul(2_654_435_761)
                .to_be_bytes()[1]
        })
        .collect()
}

/// Writes a file into the gateway's files directory.
fn put(gw: &Gateway, name: &str, content: &[u8]) -> PathBuf {
    let path = gw.files_dir().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// `privitty_send_file` + `send_msg` of the `.prv`; returns the file id.
fn send_protected(
    gw: &Gateway,
    chat: u64,
    contact: Option<u64>,
    name: &str,
    content: &[u8],
    download: bool,
) -> String {
    let path = put(gw, name, content);
    let result = match contact {
        Some(c) => gw.call(
            "privitty_send_file",
            json!([ACCOUNT, chat, c, path, download, false, 0]),
        ),
        None => gw.call(
            "privitty_send_group_file",
            json!([ACCOUNT, chat, path, download, false, 0]),
        ),
    };
    let prv = result["encrypted_path"].as_str().unwrap().to_owned();
    gw.call(
        "send_msg",
        json!([ACCOUNT, chat, {"file": prv, "viewtype": "File"}]),
    );
    result["file_id"].as_str().unwrap().to_owned()
}

/// The message id of the incoming `<name>.prv` (events since `from`), once fully downloaded.
fn receive_prv(gw: &Gateway, from: usize, name: &str) -> u64 {
    let want = format!("{name}.prv");
    let ev = gw.wait_event(from, &format!("IncomingMsg with {want}"), |e| {
        e["type"] == "IncomingMsg"
            && e["msg_id"].as_u64().is_some_and(|id| {
                gw.call("get_message", json!([ACCOUNT, id]))["fileName"] == want.as_str()
            })
    });
    let id = ev.value["msg_id"].as_u64().unwrap();
    gw.wait_message(id, "downloaded", |m| {
        m["downloadState"] == "Done" && m["file"].is_string()
    });
    id
}

/// Waits for a Privitty access event about `file` since `from`.
fn wait_access(gw: &Gateway, from: usize, file: &str, kind: &str, status: Option<&str>) -> Instant {
    gw.wait_event(from, &format!("{kind} {status:?} for {file}"), |e| {
        e["type"] == kind && e["file_id"] == file && status.is_none_or(|s| e["status"] == s)
    })
    .at
}

fn decrypt(gw: &Gateway, msg_id: u64) -> Value {
    gw.response("privitty_decrypt_file", json!([ACCOUNT, msg_id]))
}

fn status(gw: &Gateway, msg_id: u64) -> Value {
    gw.call("privitty_get_file_display_status", json!([ACCOUNT, msg_id]))
}

/// The peer state as stored on disk.
fn state_file(gw: &Gateway) -> Value {
    let path = gw.dirs.accounts.join("privitty/peer/state-1.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Waits until `check` holds (for conditions no event announces).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    support::eventually(DEADLINE, what, || check().then_some(()));
}

/// Runs `privitty-edge license …` against a gateway's data directory.
fn license_cli(gw: &Gateways, i: usize, args: &[&str]) {
    let out = std::process::Command::new(support::bin("privitty-edge"))
        .arg("--accounts")
        .arg(&gw[i].dirs.accounts)
        .arg("license")
        .args(args)
        .env("PRIVITTY_LICENSE_PUBKEY", gw.license.pubkey_path())
        .output()
        .expect("run privitty-edge");
    assert!(
        out.status.success(),
        "privitty-edge license {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(gw: &Gateway, kind: &str, file: &str) -> usize {
    gw.events()
        .all()
        .iter()
        .filter(|e| e.value["type"] == kind && e.value["file_id"] == file)
        .count()
}

/// The control instances of a chat, by `get_chat_media`.
fn instances(gw: &Gateway, chat: u64) -> Vec<u64> {
    let ids = gw.call(
        "get_chat_media",
        json!([ACCOUNT, chat, "Webxdc", null, null]),
    );
    ids.as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .filter(|id| gw.call("get_message", json!([ACCOUNT, id]))["fileName"] == "privitty-ctl.xdc")
        .collect()
}

#[test]
fn protected_files_between_real_gateways() {
    let gw = match Gateways::start(3) {
        Ok(gw) => gw,
        Err(skip) => return skip.report("protected_files_between_real_gateways"),
    };
    let mut gw = gw;
    let times = gw.times;
    eprintln!(
        "start: mail {:?}, 3 stacks {:?}, accounts {:?}",
        times.mail_server, times.stacks, times.accounts
    );
    let ab = secure_join(&gw[0], &gw[1]);
    let ac = secure_join(&gw[0], &gw[2]);
    let (alice, bob, carol) = (&gw[0], &gw[1], &gw[2]);
    let (a_chat_b, a_bob) = (ab.inviter.chat_id, ab.inviter.contact_id);
    let b_chat_a = ab.joiner.chat_id;
    let a_carol = ac.inviter.contact_id;

    // --- A mail hop, for comparison.
    let from = bob.events().cursor();
    let sent = Instant::now();
    alice.call("send_msg", json!([ACCOUNT, a_chat_b, {"text": "hop"}]));
    let hop = bob.wait_incoming(from, b_chat_a).at - sent;
    eprintln!("text hop: {hop:?}");

    // --- Handshake: the first Privitty call for the chat starts it.
    let (fa, fb) = (alice.events().cursor(), bob.events().cursor());
    let began = Instant::now();
    let encrypted = alice.call("privitty_is_chat_encrypted", json!([ACCOUNT, a_chat_b]));
    assert_eq!(encrypted, false, "no handshake yet");
    let done_b = bob
        .wait_event(fb, "PrivittyPeerHandshakeComplete", |e| {
            e["type"] == "PrivittyPeerHandshakeComplete"
        })
        .at;
    let done_a = alice
        .wait_event(fa, "PrivittyPeerHandshakeComplete", |e| {
            e["type"] == "PrivittyPeerHandshakeComplete" && e["chat_id"] == a_chat_b
        })
        .at;
    eprintln!(
        "handshake: responder pinned after {:?}, initiator after {:?}",
        done_b - began,
        done_a - began
    );
    alice.wait_event(fa, "PrivittyChatEncryptionChanged", |e| {
        e["type"] == "PrivittyChatEncryptionChanged"
    });
    assert_eq!(
        alice.call("privitty_is_chat_encrypted", json!([ACCOUNT, a_chat_b])),
        true
    );
    assert_eq!(
        bob.call("privitty_is_chat_encrypted", json!([ACCOUNT, b_chat_a])),
        true
    );
    let caps_a = alice.call("privitty_get_peer_capabilities", json!([ACCOUNT, a_chat_b]));
    let caps_b = bob.call("privitty_get_peer_capabilities", json!([ACCOUNT, b_chat_a]));
    assert_eq!(
        caps_a["peers"][0]["fingerprint"], caps_b["fingerprint"],
        "{caps_a} {caps_b}"
    );
    assert_eq!(
        caps_b["peers"][0]["fingerprint"], caps_a["fingerprint"],
        "{caps_a} {caps_b}"
    );
    assert_eq!(caps_a["fingerprint"].as_str().unwrap().len(), 64);
    let alice_fp = caps_a["fingerprint"].as_str().unwrap().to_owned();
    let bob_fp = caps_b["fingerprint"].as_str().unwrap().to_owned();

    // --- A 300 KB file: the peer decrypts exactly the original bytes.
    let original = bytes(300 * 1024, 1);
    let fb = bob.events().cursor();
    let sent = Instant::now();
    let file1 = send_protected(alice, a_chat_b, Some(a_bob), "report.bin", &original, true);
    let msg1 = receive_prv(bob, fb, "report.bin");
    let granted = wait_access(bob, fb, &file1, "PrivittyFileAccessChanged", Some("active"));
    let answer = decrypt(bob, msg1);
    let decryptable = Instant::now();
    eprintln!(
        "send → peer can decrypt: {:?} (grant after {:?})",
        decryptable - sent,
        granted - sent
    );
    let out = PathBuf::from(
        answer["result"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}")),
    );
    assert!(out.starts_with(bob.files_dir()), "{out:?}");
    assert_eq!(std::fs::read(&out).unwrap(), original, "byte-identical");
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let st = status(bob, msg1);
    assert_eq!(
        (st["status"].as_str(), st["direction"].as_str()),
        (Some("active"), Some("incoming")),
        "{st}"
    );
    bob.wait_event(fb, "PrivittyFileDecrypted", |e| {
        e["type"] == "PrivittyFileDecrypted" && e["file_id"] == file1.as_str()
    });

    // --- allow_download false: decrypt refused.
    let fb = bob.events().cursor();
    let file2 = send_protected(
        alice,
        a_chat_b,
        Some(a_bob),
        "view-only.bin",
        &bytes(5000, 2),
        false,
    );
    let msg2 = receive_prv(bob, fb, "view-only.bin");
    wait_access(bob, fb, &file2, "PrivittyFileAccessChanged", Some("active"));
    let refused = decrypt(bob, msg2);
    assert_eq!(refused["error"]["code"], ACCESS_DENIED, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not allow downloading")
    );
    assert_eq!(status(bob, msg2)["allow_download"], false);
    // Its owner did not allow forwarding (allow_forward false): the engine's forward is refused.
    let fwd = bob.response("forward_messages", json!([ACCOUNT, [msg2], b_chat_a]));
    assert_eq!(fwd["error"]["code"], ACCESS_DENIED, "{fwd}");
    assert!(
        fwd["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not allow forwarding"),
        "{fwd}"
    );

    // --- Revoke: the peer's access ends (< 3 s) and its key is gone from its store.
    let fb = bob.events().cursor();
    let began = Instant::now();
    let revoked = alice.call(
        "privitty_revoke_file_access",
        json!([ACCOUNT, a_chat_b, file1, a_bob]),
    );
    assert_eq!(revoked["peers_notified"], json!([a_bob]), "{revoked}");
    let ended = wait_access(bob, fb, &file1, "PrivittyFileAccessRevoked", None);
    let refuses = Instant::now();
    let r = decrypt(bob, msg1);
    assert_eq!(r["error"]["code"], ACCESS_DENIED, "{r}");
    eprintln!(
        "revoke → peer refuses: {:?} (event after {:?})",
        refuses - began,
        ended - began
    );
    assert!(
        ended - began < Duration::from_secs(3),
        "revocation took {:?}",
        ended - began
    );
    let held = &state_file(bob)["inbound"][&file1];
    assert_eq!(held["access"], "revoked", "{held}");
    assert!(held["sealed_key"].is_null(), "the key is gone: {held}");
    assert_eq!(status(bob, msg1)["status"], "revoked");

    // --- A 5 s grant expires; renew request → grant → access again; deny.
    let fb = bob.events().cursor();
    let file3 = send_protected(
        alice,
        a_chat_b,
        Some(a_bob),
        "timed.bin",
        &bytes(1000, 3),
        true,
    );
    let msg3 = receive_prv(bob, fb, "timed.bin");
    wait_access(bob, fb, &file3, "PrivittyFileAccessChanged", Some("active"));
    let fb = bob.events().cursor();
    let g = alice.call(
        "privitty_send_file_access",
        json!([ACCOUNT, a_chat_b, file3, a_bob, 5]),
    );
    assert!(g["expires_at"].is_string(), "{g}");
    bob.wait_event(fb, "the 5 s grant", |e| {
        e["type"] == "PrivittyFileAccessChanged"
            && e["file_id"] == file3.as_str()
            && e["expires_at"].is_string()
    });
    eventually("the 5 s grant expired on bob", || {
        status(bob, msg3)["status"] == "expired"
    });
    let r = decrypt(bob, msg3);
    assert_eq!(r["error"]["code"], ACCESS_DENIED, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("expired"),
        "{r}"
    );

    let fa = alice.events().cursor();
    let fb = bob.events().cursor();
    bob.call(
        "privitty_init_access_grant_request",
        json!([ACCOUNT, b_chat_a, file3]),
    );
    let asked = alice.wait_event(fa, "PrivittyAccessRenewRequested", |e| {
        e["type"] == "PrivittyAccessRenewRequested" && e["file_id"] == file3.as_str()
    });
    assert_eq!(asked.value["peer_contact_id"], a_bob);
    let info = alice.call("privitty_get_file_access_info", json!([ACCOUNT, file3]));
    assert!(
        info["recipients"][0]["renew_requested_at"].is_string(),
        "{info}"
    );
    alice.call(
        "privitty_send_file_access",
        json!([ACCOUNT, a_chat_b, file3, a_bob, 3600]),
    );
    bob.wait_event(fb, "renewed access", |e| {
        e["type"] == "PrivittyFileAccessChanged"
            && e["file_id"] == file3.as_str()
            && e["status"] == "active"
    });
    assert!(
        decrypt(bob, msg3)["result"]["path"].is_string(),
        "renewed access decrypts"
    );

    let fb = bob.events().cursor();
    let denied = alice.call(
        "privitty_deny_file_access",
        json!([ACCOUNT, a_chat_b, file3, a_bob]),
    );
    assert_eq!(denied["status"], "denied");
    wait_access(bob, fb, &file3, "PrivittyFileAccessChanged", Some("denied"));
    assert_eq!(decrypt(bob, msg3)["error"]["code"], ACCESS_DENIED);
    assert_eq!(status(bob, msg3)["status"], "denied");

    // --- A group of three; one member revoked alone.
    let group = alice
        .call("create_group_chat", json!([ACCOUNT, "plant team", false]))
        .as_u64()
        .unwrap();
    alice.call("add_contact_to_chat", json!([ACCOUNT, group, a_bob]));
    alice.call("add_contact_to_chat", json!([ACCOUNT, group, a_carol]));
    let (fb, fc) = (bob.events().cursor(), carol.events().cursor());
    let group_bytes = bytes(70_000, 4);
    let file4 = send_protected(alice, group, None, "shift-plan.bin", &group_bytes, true);
    let msg_b = receive_prv(bob, fb, "shift-plan.bin");
    let msg_c = receive_prv(carol, fc, "shift-plan.bin");
    // Carol had no handshake yet: her grant waited for it.
    wait_access(
        carol,
        fc,
        &file4,
        "PrivittyFileAccessChanged",
        Some("active"),
    );
    wait_access(bob, fb, &file4, "PrivittyFileAccessChanged", Some("active"));
    for (who, msg) in [(bob, msg_b), (carol, msg_c)] {
        let path = decrypt(who, msg)["result"]["path"]
            .as_str()
            .map(PathBuf::from)
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), group_bytes, "{}", who.name);
    }
    let (fb, fc) = (bob.events().cursor(), carol.events().cursor());
    alice.call(
        "privitty_revoke_file_access",
        json!([ACCOUNT, group, file4, a_bob]),
    );
    wait_access(bob, fb, &file4, "PrivittyFileAccessRevoked", None);
    assert_eq!(decrypt(bob, msg_b)["error"]["code"], ACCESS_DENIED);
    assert!(
        decrypt(carol, msg_c)["result"]["path"].is_string(),
        "carol keeps her access"
    );
    assert_eq!(count(carol, "PrivittyFileAccessRevoked", &file4), 0);
    let _ = fc;

    // --- Forged, unsigned and replayed updates injected through alice's engine API.
    let fb = bob.events().cursor();
    let inst = instances(alice, a_chat_b);
    assert_eq!(inst.len(), 1, "one control instance in the chat: {inst:?}");
    let real = alice.call("get_webxdc_status_updates", json!([ACCOUNT, inst[0], 0]));
    let real: Vec<Value> = serde_json::from_str(real.as_str().unwrap()).unwrap();
    let mallory = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let forge = |body: Value, seq: u64| {
        let m = json!({"proto":"privitty-ctl","v":1,"from":alice_fp,"to":bob_fp,"seq":seq,"ts":0,"body":body});
        let bytes = serde_json::to_vec(&m).unwrap();
        let mut signed = b"privitty-ctl/v1/message\n".to_vec();
        signed.extend_from_slice(&bytes);
        json!({"privitty_ctl":1,"m":B64.encode(&bytes),"s":B64.encode(mallory.sign(&signed).to_bytes())})
    };
    let mut injected = vec![
        forge(
            json!({"type":"revoke","file":file3,"generation":1000}),
            900_001,
        ),
        forge(
            json!({"type":"deny","file":file4,"generation":1000}),
            900_002,
        ),
    ];
    let mut unsigned = forge(
        json!({"type":"revoke","file":file4,"generation":1001}),
        900_003,
    );
    unsigned["s"] = json!("");
    injected.push(unsigned);
    injected.extend(real.iter().map(|u| u["payload"].clone()));
    for payload in &injected {
        let update = json!({"payload": payload}).to_string();
        alice.call(
            "send_webxdc_status_update",
            json!([ACCOUNT, inst[0], update, null]),
        );
    }
    // Bob's engine has them all, and bob's gateway has read them all.
    let b_inst = instances(bob, b_chat_a);
    eventually("bob's engine has every injected update", || {
        let got = bob.call("get_webxdc_status_updates", json!([ACCOUNT, b_inst[0], 0]));
        let got: Vec<Value> = serde_json::from_str(got.as_str().unwrap()).unwrap();
        injected
            .iter()
            .all(|p| got.iter().filter(|u| u["payload"] == *p).count() >= 1)
            && got.len() >= real.len() + injected.len()
    });
    let max_serial = {
        let got = bob.call("get_webxdc_status_updates", json!([ACCOUNT, b_inst[0], 0]));
        let got: Vec<Value> = serde_json::from_str(got.as_str().unwrap()).unwrap();
        got.last().unwrap()["serial"].as_u64().unwrap()
    };
    eventually("bob's gateway read them", || {
        state_file(bob)["chats"][b_chat_a.to_string()]["instances"][b_inst[0].to_string()]
            .as_u64()
            .is_some_and(|s| s >= max_serial)
    });
    let privitty_events: Vec<Value> = bob.events().all()[fb..]
        .iter()
        .map(|e| e.value.clone())
        .filter(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("PrivittyFile") || t.starts_with("PrivittyPeer"))
        })
        .collect();
    assert!(
        privitty_events.is_empty(),
        "injected updates changed something: {privitty_events:?}"
    );
    assert_eq!(
        status(bob, msg3)["status"],
        "denied",
        "still denied, not revoked by a forgery"
    );
    assert!(decrypt(carol, msg_c)["result"]["path"].is_string());

    // --- Bob's stack stopped in the middle of an exchange: nothing lost or duplicated.
    let fa = alice.events().cursor();
    let _ = fa;
    let file5_bytes = bytes(2000, 5);
    let file5 = send_protected(
        &gw[0],
        a_chat_b,
        Some(a_bob),
        "while-down.bin",
        &file5_bytes,
        true,
    );
    gw.gateways[1].stop();
    gw[0].call(
        "privitty_revoke_file_access",
        json!([ACCOUNT, a_chat_b, file2, a_bob]),
    );
    gw.gateways[1].start_again();
    let (alice, bob) = (&gw[0], &gw[1]);
    // Bob may handle what waited for him before /events is reopened, so the state says it (a
    // new subscriber gets no replay); events, where seen, must not repeat.
    eventually("bob holds file 5's grant and file 2's revocation", || {
        let state = state_file(bob);
        state["inbound"][&file5]["access"] == "active"
            && state["inbound"][&file2]["access"] == "revoked"
    });
    let state = state_file(bob);
    assert_eq!(
        state["inbound"][&file5]["generation"], 1,
        "{}",
        state["inbound"][&file5]
    );
    let msg5 = support::eventually(DEADLINE, "the file sent while bob was down", || {
        bob.call(
            "get_chat_media",
            json!([ACCOUNT, b_chat_a, "File", null, null]),
        )
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .find(|id| {
            let m = bob.call("get_message", json!([ACCOUNT, id]));
            m["fileName"] == "while-down.bin.prv" && m["file"].is_string()
        })
    });
    let path = decrypt(bob, msg5)["result"]["path"]
        .as_str()
        .map(PathBuf::from)
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), file5_bytes);
    assert!(
        count(bob, "PrivittyFileAccessChanged", &file5) <= 1,
        "granted once"
    );
    assert!(
        count(bob, "PrivittyFileAccessRevoked", &file2) <= 1,
        "revoked once"
    );
    eventually(
        "alice's grant of the file sent while bob was down is acknowledged",
        || {
            alice.call("privitty_get_file_access_info", json!([ACCOUNT, file5]))["recipients"][0]["delivered"]
                == true
        },
    );

    // --- An unlicensed recipient: -32001, and the grant waits for the license.
    license_cli(&gw, 1, &["deactivate"]);
    gw[1].stack.wait_generation(2);
    gw.gateways[1].reopen_events();
    let fb = gw[1].events().cursor();
    let file6_bytes = bytes(3000, 6);
    let file6 = send_protected(
        &gw[0],
        a_chat_b,
        Some(a_bob),
        "unlicensed.bin",
        &file6_bytes,
        true,
    );
    let msg6 = receive_prv(&gw[1], fb, "unlicensed.bin");
    let r = decrypt(&gw[1], msg6);
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert_eq!(
        status(&gw[1], msg6)["status"],
        "pending",
        "read-only status stays open"
    );
    assert!(
        state_file(&gw[1])["inbound"].get(&file6).is_none(),
        "not received while unlicensed"
    );
    license_cli(&gw, 1, &["activate", &gw.license_url]);
    gw[1].stack.wait_generation(3);
    gw.gateways[1].reopen_events();
    eventually("bob, licensed again, received file 6's grant", || {
        status(&gw[1], msg6)["status"] == "active"
    });
    let path = decrypt(&gw[1], msg6)["result"]["path"]
        .as_str()
        .map(PathBuf::from)
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), file6_bytes);

    // --- No control noise on /events: no update events, nothing about a control instance.
    for who in [&gw[0], &gw[1], &gw[2]] {
        let mut instance_ids = Vec::new();
        let chats = who.call("get_chatlist_entries", json!([ACCOUNT, null, null, null]));
        for chat in chats.as_array().unwrap() {
            instance_ids.extend(instances(who, chat.as_u64().unwrap()));
        }
        for e in who.events().all() {
            let t = e.value["type"].as_str().unwrap_or_default();
            assert!(!t.starts_with("Webxdc"), "{}: {}", who.name, e.value);
            let Some(id) = e.value["msg_id"].as_u64().filter(|id| *id > 9) else {
                continue;
            };
            assert!(
                !instance_ids.contains(&id),
                "{}: an event about a control instance: {}",
                who.name,
                e.value
            );
            // The hidden messages that carry updates are not news either.
            let msg = who.response("get_message", json!([ACCOUNT, id]));
            let carrier = msg["result"]["systemMessageType"] == "WebxdcStatusUpdate"
                && msg["result"]["parentId"]
                    .as_u64()
                    .is_some_and(|p| instance_ids.contains(&p));
            assert!(
                !carrier,
                "{}: an event about an update carrier: {}",
                who.name, e.value
            );
        }
    }

    // --- A stock engine in a chat with a gateway: one app message and the .prv files.
    let mut stock = StockEngine::start();
    stock.configure(gw.mail.account());
    let alice = &gw[0];
    let fa = alice.events().cursor();
    let qr = alice.call("get_chat_securejoin_qr_code", json!([ACCOUNT, null]));
    let stock_chat = stock
        .call("secure_join", json!([ACCOUNT, qr]))
        .as_u64()
        .unwrap();
    stock.wait_event("SecurejoinJoinerProgress 1000", |e| {
        e["kind"] == "SecurejoinJoinerProgress" && e["progress"] == 1000
    });
    let invited = alice.wait_event(fa, "SecurejoinInviterProgress 1000", |e| {
        e["type"] == "SecurejoinInviterProgress" && e["progress"] == 1000
    });
    let a_stock = invited.value["contact_id"].as_u64().unwrap();
    let a_chat_s = alice
        .call("create_chat_by_contact_id", json!([ACCOUNT, a_stock]))
        .as_u64()
        .unwrap();
    send_protected(
        alice,
        a_chat_s,
        Some(a_stock),
        "for-a-human.bin",
        &bytes(4000, 6),
        true,
    );
    send_protected(
        alice,
        a_chat_s,
        Some(a_stock),
        "second.bin",
        &bytes(300, 7),
        true,
    );
    let msgs = stock.wait_messages(stock_chat, "the app and two .prv files", |m| {
        m.iter().filter(|m| m["viewType"] == "Webxdc").count() >= 1
            && m.iter()
                .filter(|m| m["fileName"].as_str().is_some_and(|n| n.ends_with(".prv")))
                .count()
                >= 2
    });
    let apps: Vec<&Value> = msgs.iter().filter(|m| m["viewType"] == "Webxdc").collect();
    assert_eq!(apps.len(), 1, "exactly one app message: {msgs:?}");
    assert_eq!(apps[0]["fileName"], "privitty-ctl.xdc");
    let info = stock.call("get_webxdc_info", json!([ACCOUNT, apps[0]["id"]]));
    assert_eq!(info["name"], "Privitty control channel", "{info}");
    let others: Vec<&Value> = msgs
        .iter()
        .filter(|m| {
            m["viewType"] != "Webxdc"
                && !m["fileName"].as_str().is_some_and(|n| n.ends_with(".prv"))
        })
        .collect();
    assert!(others.is_empty(), "nothing else visible: {others:?}");
    // Alice resends her unanswered hello: the updates reach the app, no message appears.
    let app = apps[0]["id"].clone();
    eventually("a resent hello reached the stock engine", || {
        let got = stock.call("get_webxdc_status_updates", json!([ACCOUNT, app, 0]));
        serde_json::from_str::<Vec<Value>>(got.as_str().unwrap())
            .unwrap()
            .len()
            >= 2
    });
    assert_eq!(
        stock.visible_messages(stock_chat).len(),
        msgs.len(),
        "resends add no message"
    );
}
