//! The methods: parameters checked exactly, sharing between threads, concurrent revocations.

use super::*;

#[test]
fn parameters_are_checked_exactly() {
    let env = Env::new();
    let path = env.file("p.txt", b"x");
    let p = json!(path);
    let id = json!(Uuid::new_v4());
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        (
            "privitty_send_file",
            vec![json!(1)],
            "privitty_send_file takes 7 parameters [account_id, chat_id, peer_contact_id, path, allow_download, allow_forward, duration_minutes], got 1",
        ),
        (
            "privitty_send_file",
            vec![
                json!("1"),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 1 `account_id` must be an integer from 1 to 4294967295, got \"1\"",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12.5),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 2 `chat_id` must be an integer",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(0),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 2 `chat_id` must be an integer from 1",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(-3),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 3 `peer_contact_id` must be an integer from 1",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                json!(42),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 4 `path` must be a string with an absolute file path, got the number 42",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                json!("/tmp/"),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 4 `path` must be the path of a file",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(1),
                json!(true),
                json!(0),
            ],
            "parameter 5 `allow_download` must be a boolean (true or false), got the number 1",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(null),
                json!(0),
            ],
            "parameter 6 `allow_forward` must be a boolean (true or false), got null",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(-1),
            ],
            "parameter 7 `duration_minutes` must be an integer number of minutes from 0 (no expiry)",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!("60"),
            ],
            "parameter 7 `duration_minutes`",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(MAX_DURATION_MINUTES + 1),
            ],
            "parameter 7 `duration_minutes`",
        ),
        (
            "privitty_send_group_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "privitty_send_group_file takes 6 parameters",
        ),
        (
            "privitty_send_group_file",
            vec![
                json!(1),
                json!(12),
                p.clone(),
                json!(true),
                json!("yes"),
                json!(0),
            ],
            "parameter 5 `allow_forward` must be a boolean",
        ),
        (
            "privitty_revoke_file_access",
            vec![json!(1), json!(12), json!("abc"), json!(20)],
            "parameter 3 `file_id` must be a file id string as returned by privitty_send_file (a UUID), got \"abc\"",
        ),
        (
            "privitty_revoke_file_access",
            vec![json!(1), json!(12), id.clone(), json!(true)],
            "parameter 4 `peer_contact_id` must be an integer from 0",
        ),
        (
            "privitty_get_file_info",
            vec![json!(1), json!([id.clone()])],
            "parameter 2 `file_id` must be a file id string",
        ),
    ];
    let before = env.snapshot();
    for (method, params, expected) in cases {
        let err = env
            .p
            .call(method, &params)
            .expect("a privitty method")
            .unwrap_err();
        assert_eq!(err.rpc_code(), -32602, "{method} {params:?}: {err}");
        assert!(
            err.to_string().contains(expected),
            "{method} {params:?}:\n  got      {err}\n  expected {expected}"
        );
    }
    assert_eq!(env.snapshot(), before);
    assert!(
        env.p.call("get_info", &[json!(1)]).is_none(),
        "not a method of this module"
    );
    for method in Privitty::METHODS {
        assert!(
            env.p.call(method, &[]).is_some(),
            "{method} is listed and implemented"
        );
    }
    let err = env
        .p
        .call("privitty_get_file_info", &[json!(1), id])
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PrivittyError::UnknownFile { .. }), "{err}");
}

#[test]
fn privitty_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Privitty>();
    shared::<PrivittyError>();
}

#[test]
fn concurrent_revocations_of_one_group_file_are_all_kept() {
    let env = Env::new();
    let out = env.send_group(&env.file("shared.txt", b"s"));
    let file_id = file_id_of(&out);
    std::thread::scope(|scope| {
        for peer in 40..48u32 {
            let p = &env.p;
            scope.spawn(move || p.revoke(1, 13, file_id, peer, SystemTime::now()).unwrap());
        }
    });
    let mut revoked = env.p.file_record(file_id).unwrap().revoked_peers;
    revoked.sort();
    assert_eq!(revoked, (40..48).collect::<Vec<_>>());
}
