//! Access: revoking a direct file, a group member, expiry from the recorded time.

use super::*;

#[test]
fn revoking_a_direct_file_destroys_its_key() {
    let env = Env::new();
    let content = b"secret plans".to_vec();
    let out = env.send(&env.file("plans.txt", &content), 0);
    let (prv, file_id) = (prv_path(&out), file_id_of(&out));
    assert_eq!(env.decrypt(&prv).unwrap(), content);

    let revoke = |peer: u32, chat: u32| {
        env.p
            .call(
                "privitty_revoke_file_access",
                &[json!(1), json!(chat), json!(file_id), json!(peer)],
            )
            .unwrap()
    };
    let err = revoke(21, 12).unwrap_err();
    assert!(
        matches!(err, PrivittyError::NotRecipient { recipient: 20, .. }),
        "{err}"
    );
    let err = revoke(20, 99).unwrap_err();
    assert!(
        matches!(err, PrivittyError::WrongChat { chat_id: 12, .. }),
        "{err}"
    );
    assert_eq!(
        env.decrypt(&prv).unwrap(),
        content,
        "failed revocations change nothing"
    );

    let done = revoke(20, 12).unwrap();
    assert_eq!(
        done.events,
        vec![
            json!({"type":"PrivittyFileAccessRevoked","account_id":1,"chat_id":12,"file_id":file_id,"peer_contact_id":20})
        ]
    );
    assert_eq!(done.result["key_destroyed"], json!(true));
    assert_eq!(done.result["already_revoked"], json!(false));
    let err = env.decrypt(&prv).unwrap_err();
    assert!(matches!(err, PrivittyError::Revoked { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32030);

    let record = env.p.file_record(file_id).unwrap();
    assert_eq!(
        record.wrapped_key, None,
        "the wrapped key is gone from the store"
    );
    let info = env
        .p
        .call("privitty_get_file_info", &[json!(1), json!(file_id)])
        .unwrap()
        .unwrap();
    assert_eq!(info.result["status"], json!("revoked"));
    assert_eq!(info.result["revoked_peers"], json!([20]));
    assert!(info.result["revoked_at"].is_string());

    let again = revoke(20, 12).unwrap();
    assert_eq!(again.result["already_revoked"], json!(true));
    assert!(
        again.events.is_empty(),
        "an idempotent repeat emits nothing"
    );

    // The revocation survives a restart.
    drop(env.p);
    let p = Privitty::open(env.accounts.path()).unwrap();
    assert!(matches!(
        p.decrypt_to(&prv, &mut Vec::new()),
        Err(PrivittyError::Revoked { .. })
    ));
}

#[test]
fn revoking_a_group_member_keeps_the_key_for_the_others() {
    let env = Env::new();
    let out = env.send_group(&env.file("minutes.txt", b"group content"));
    let (prv, file_id) = (prv_path(&out), file_id_of(&out));
    let revoke = |peer: u32| {
        env.p
            .call(
                "privitty_revoke_file_access",
                &[json!(1), json!(13), json!(file_id), json!(peer)],
            )
            .unwrap()
            .unwrap()
    };
    let done = revoke(31);
    assert_eq!(done.result["key_destroyed"], json!(false));
    let now = SystemTime::now();
    assert!(matches!(
        env.p.open_reader_for(&prv, Some(31), now),
        Err(PrivittyError::Revoked { .. })
    ));
    assert!(env.p.open_reader_for(&prv, Some(32), now).is_ok());
    assert_eq!(env.decrypt(&prv).unwrap(), b"group content");
    let info = env
        .p
        .call("privitty_get_file_info", &[json!(1), json!(file_id)])
        .unwrap()
        .unwrap();
    assert_eq!(info.result["status"], json!("active"));
    assert_eq!(info.result["group"], json!(true));
    assert_eq!(info.result["revoked_peers"], json!([31]));

    let all = revoke(0);
    assert_eq!(all.result["key_destroyed"], json!(true));
    assert_eq!(all.events.len(), 1);
    assert!(matches!(
        env.decrypt(&prv),
        Err(PrivittyError::Revoked { .. })
    ));
}

#[test]
fn expiry_is_enforced_from_the_recorded_time() {
    let env = Env::new();
    let start = SystemTime::now();
    let path = env.file("brief.txt", b"short-lived");
    let out = env
        .p
        .call_at(
            "privitty_send_file",
            &[
                json!(1),
                json!(12),
                json!(20),
                json!(path),
                json!(false),
                json!(false),
                json!(1),
            ],
            start,
        )
        .unwrap()
        .unwrap();
    let (prv, file_id) = (prv_path(&out), file_id_of(&out));
    let expires_at = unix_seconds(start) + 60;
    assert_eq!(out.result["expires_at"], json!(rfc3339(expires_at)));
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64);
    assert!(
        env.p
            .open_reader_for(&prv, None, at(expires_at - 1))
            .is_ok()
    );
    let err = env
        .p
        .open_reader_for(&prv, None, at(expires_at))
        .unwrap_err();
    assert!(matches!(err, PrivittyError::Expired { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32031);
    let info = env
        .p
        .call_at(
            "privitty_get_file_info",
            &[json!(1), json!(file_id)],
            at(expires_at),
        )
        .unwrap()
        .unwrap();
    assert_eq!(info.result["status"], json!("expired"));
}
