//! Two complete gateways (privitty-init managed → privitty-edged → the real engine), licensed by the
//! reference license server, exchanging mail through the real loopback mail server: secure-join, a
//! text, and a 300 KB file whose bytes arrive intact. Proves the multi-gateway test infrastructure
//! (`privitty_tests::gateways`) and prints the hop times.
//!
//! Skipped (with `SKIPPED:` on stderr) where the mail server cannot run; a failure instead under
//! `PRIVITTY_REQUIRE_ALL_TESTS=1`.

use std::time::Instant;

use privitty_tests::gateways::{ACCOUNT, Gateways, secure_join};
use serde_json::{Value, json};

/// Above the engine's pre-message threshold (~140 KB): the file arrives as a pre-message first.
const FILE_SIZE: usize = 300 * 1024;

#[test]
fn two_gateways_secure_join_and_exchange_a_text_and_a_file() {
    let gw = match Gateways::start(2) {
        Ok(gw) => gw,
        Err(skip) => return skip.report("two_gateways_secure_join_and_exchange_a_text_and_a_file"),
    };
    let (alice, bob) = (&gw[0], &gw[1]);
    eprintln!(
        "mail server start: {:?}; two stacks up and licensed: {:?}; accounts configured: {:?}",
        gw.times.mail_server, gw.times.stacks, gw.times.accounts
    );

    let joined = secure_join(alice, bob);
    eprintln!("secure-join: {:?}", joined.elapsed);
    for (who, side) in [(alice, joined.inviter), (bob, joined.joiner)] {
        let contact = who.call("get_contact", json!([ACCOUNT, side.contact_id]));
        // A key contact with end-to-end encryption: what secure-join establishes.
        assert_eq!(contact["isKeyContact"], true, "{}: {contact}", who.name);
        assert_eq!(contact["e2eeAvail"], true, "{}: {contact}", who.name);
    }
    let contact = alice.call("get_contact", json!([ACCOUNT, joined.inviter.contact_id]));
    assert_eq!(
        contact["address"],
        bob.email.as_str(),
        "alice's contact is bob"
    );

    // A text, alice → bob.
    let from = bob.events().cursor();
    let sent_at = Instant::now();
    alice.call(
        "send_msg",
        json!([ACCOUNT, joined.inviter.chat_id, {"text": "hello from alice"}]),
    );
    let incoming = bob.wait_incoming(from, joined.joiner.chat_id);
    eprintln!("text hop alice → bob: {:?}", incoming.at - sent_at);
    let msg_id = incoming.value["msg_id"].as_u64().expect("msg_id");
    let msg = bob.call("get_message", json!([ACCOUNT, msg_id]));
    assert_eq!(msg["text"], "hello from alice", "{msg}");
    assert_eq!(msg["fromId"], joined.joiner.contact_id, "{msg}");

    // A 300 KB file of arbitrary bytes from alice's files directory.
    let bytes: Vec<u8> = (0..FILE_SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect();
    std::fs::write(alice.files_dir().join("name.bin"), &bytes).expect("write the file");
    let from = bob.events().cursor();
    let sent_at = Instant::now();
    alice.call(
        "send_msg",
        json!([ACCOUNT, joined.inviter.chat_id, {"file": "name.bin", "viewtype": "File"}]),
    );
    let incoming = bob.wait_incoming(from, joined.joiner.chat_id);
    let first = incoming.at - sent_at;
    let msg_id = incoming.value["msg_id"].as_u64().expect("msg_id");
    // Usually a pre-message (`downloadState` "Available", no file yet) that `MsgsChanged` turns
    // into the file; the wait below accepts either order of arrival.
    let seen_first = bob.call("get_message", json!([ACCOUNT, msg_id]));
    let msg = bob.wait_message(msg_id, "downloaded with its file", |m: &Value| {
        m["downloadState"] == "Done" && m["file"].is_string()
    });
    let done = sent_at.elapsed();
    eprintln!(
        "300 KB file alice → bob: first IncomingMsg {first:?} (downloadState {}), file complete \
         {done:?}",
        seen_first["downloadState"]
    );
    assert_eq!(msg["viewType"], "File", "{msg}");
    assert_eq!(msg["fileName"], "name.bin", "{msg}");
    let path = msg["file"].as_str().expect("file path");
    let received = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        received == bytes,
        "bob's copy {path} ({} bytes) differs from the {} bytes sent",
        received.len(),
        bytes.len()
    );
    assert!(
        path.starts_with(&bob.dirs.accounts.display().to_string()) && path.contains("dc.db-blobs"),
        "the file is in bob's engine blob dir: {path}"
    );

    // The gateways stop first (as on drop), so the stop measured is the mail server's alone.
    let Gateways { gateways, mail, .. } = gw;
    drop(gateways);
    let stop_time = mail.stop();
    eprintln!("mail server stop: {stop_time:?}");
}
