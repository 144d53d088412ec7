//! What a gateway reaches on the network: two complete gateways whose engines run under
//! `strace -f -e trace=connect,sendto,sendmsg` secure-join, exchange a protected file over the
//! control app (webxdc) and revoke it; afterwards every IP address either engine connected or sent
//! to must be the loopback mail server's. Realtime channels are off (`webxdc_realtime_enabled=0`),
//! so no relay, DNS, UPnP or NAT-PMP traffic may appear.
//!
//! Skipped (with `SKIPPED:` on stderr) without strace or the mail server; a failure instead under
//! `PRIVITTY_REQUIRE_ALL_TESTS=1`.

use std::os::unix::fs::PermissionsExt;

use privitty_tests::gateways::{ACCOUNT, Gateways, secure_join};
use privitty_tests::init_harness::skip;
use privitty_tests::support;
use serde_json::json;

/// The IP destinations (`addr:port`) in strace output lines, with the line.
fn destinations(log: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let family = if line.contains("sa_family=AF_INET6") {
            6
        } else if line.contains("sa_family=AF_INET") {
            4
        } else {
            continue;
        };
        let port = line
            .split("htons(")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or("?");
        let addr = if family == 4 {
            line.split("inet_addr(\"").nth(1)
        } else {
            line.split("inet_pton(AF_INET6, \"").nth(1)
        }
        .and_then(|r| r.split('"').next())
        .unwrap_or("?");
        out.push((format!("{addr}:{port}"), line.to_owned()));
    }
    out
}

#[test]
fn gateways_reach_nothing_but_their_mail_server() {
    let test = "gateways_reach_nothing_but_their_mail_server";
    let strace = match which("strace") {
        Some(p) => p,
        None => {
            skip(test, "strace is not installed (apt-get install strace)");
            return;
        }
    };
    let logs = tempfile::Builder::new()
        .prefix("privitty-strace-")
        .tempdir()
        .unwrap();
    let wrapper = logs.path().join("engine-under-strace");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} -f -qq -e trace=connect,sendto,sendmsg -o {}/engine.$$ {} \"$@\"\n",
            strace.display(),
            logs.path().display(),
            support::engine().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = wrapper.display().to_string();
    let gw = match Gateways::start_with(2, &[("PRIVITTY_ENGINE", &wrapper)]) {
        Ok(gw) => gw,
        Err(s) => return s.report(test),
    };
    let (alice, bob) = (&gw[0], &gw[1]);
    let joined = secure_join(alice, bob);
    let path = alice.files_dir().join("probe.bin");
    std::fs::write(&path, vec![7u8; 50_000]).unwrap();
    let fb = bob.events().cursor();
    let sent = alice.call(
        "privitty_send_file",
        json!([
            ACCOUNT,
            joined.inviter.chat_id,
            joined.inviter.contact_id,
            path,
            true,
            false,
            0
        ]),
    );
    alice.call(
        "send_msg",
        json!([ACCOUNT, joined.inviter.chat_id, {"file": sent["encrypted_path"], "viewtype": "File"}]),
    );
    let file = sent["file_id"].clone();
    bob.wait_event(fb, "the grant", |e| {
        e["type"] == "PrivittyFileAccessChanged" && e["file_id"] == file
    });
    alice.call(
        "privitty_revoke_file_access",
        json!([
            ACCOUNT,
            joined.inviter.chat_id,
            file,
            joined.inviter.contact_id
        ]),
    );
    bob.wait_event(fb, "the revocation", |e| {
        e["type"] == "PrivittyFileAccessRevoked" && e["file_id"] == file
    });
    for who in [alice, bob] {
        let info = who.call("get_info", json!([ACCOUNT]));
        assert_eq!(
            info["webxdc_realtime_enabled"], "false",
            "{}: {info}",
            who.name
        );
    }
    let allowed = [
        format!("127.0.0.1:{}", gw.mail.imap_port),
        format!("127.0.0.1:{}", gw.mail.smtp_port),
    ];
    let mail = (gw.mail.imap_port, gw.mail.smtp_port);
    drop(gw);

    let mut seen = 0;
    let mut files = 0;
    let mut unexpected = Vec::new();
    for entry in std::fs::read_dir(logs.path()).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("engine.") {
            continue;
        }
        files += 1;
        let log = std::fs::read_to_string(entry.path()).unwrap();
        for (dest, line) in destinations(&log) {
            seen += 1;
            if !allowed.contains(&dest) {
                unexpected.push(line);
            }
        }
    }
    assert!(files >= 2, "both engines ran under strace ({files} logs)");
    assert!(
        seen > 0,
        "the engines' connections to the mail server {mail:?} were seen"
    );
    assert!(
        unexpected.is_empty(),
        "the engines reached other addresses than the mail server {allowed:?}:\n{}",
        unexpected.join("\n")
    );
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}
