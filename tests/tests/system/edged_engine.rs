//! The engine bridge under stress, with the real engine: the engine killed mid-request (the call
//! fails at once, the engine comes back), hundreds of concurrent requests multiplexed over one
//! engine, and the data-directory lock that keeps two edged (and two engines) apart.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use privitty_tests::edged_stack::{EdgedStack, LicenseState, wait_exit};
use privitty_tests::support;
use serde_json::{Value, json};

#[test]
fn engine_killed_mid_request_fails_the_call_then_service_resumes() {
    let edged = EdgedStack::start();
    let engine = edged.engine_pid().expect("engine is edged's child");
    // wait_next_msgs returns what is new since its previous call, else blocks until a message
    // arrives (never, offline): after a first call, the second is surely in flight.
    assert_eq!(edged.result("wait_next_msgs", json!([1])), json!([]));
    let stack = &edged;
    std::thread::scope(|s| {
        let waiting = s.spawn(move || stack.call("wait_next_msgs", json!([1])));
        support::eventually(Duration::from_secs(30), "the call to reach edged", || {
            stack
                .log_lines()
                .iter()
                .filter(|l| l["message"] == "rpc call" && l["method"] == "wait_next_msgs")
                .nth(1)
                .map(|_| ())
        });
        kill(Pid::from_raw(engine as i32), Signal::SIGKILL).unwrap();
        let answer = waiting.join().unwrap();
        assert_eq!(answer["error"]["code"], -32603, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("engine"),
            "{answer}"
        );
    });
    let new_engine = support::eventually(
        Duration::from_secs(60),
        "the engine to be restarted",
        || {
            let h = edged.request("GET", "/health", None).json();
            (h["engine"]["running"] == true && h["engine"]["restarts"] == 1)
                .then(|| edged.engine_pid())?
        },
    );
    assert_ne!(new_engine, engine);
    // Same account, same data: service resumed.
    support::eventually(Duration::from_secs(30), "calls to succeed again", || {
        let r = edged.call("get_config", json!([1, "displayname"]));
        (r["result"] == "edged-test").then_some(())
    });
    assert_eq!(edged.result("get_all_account_ids", json!([])), json!([1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_requests_each_get_their_own_answer() {
    let edged = EdgedStack::builder().license(LicenseState::Expired).start();
    let url = format!("{}/rpc", edged.base_url());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(400)
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400u64 {
        let client = client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let (method, params) = match i % 4 {
                0 => ("get_config", json!([1, "displayname"])),
                1 => ("get_info", json!([1])),
                2 => (
                    "privitty_send_file",
                    json!([1, 10, 10, "/nonexistent", true, true, 1]),
                ),
                _ => ("get_connectivity", json!([1])),
            };
            let id = format!("req-{i}");
            let body = json!({"jsonrpc":"2.0","method":method,"params":params,"id":id});
            let r: Value = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (i, id, r)
        });
    }
    let mut done = 0;
    while let Some(res) = tasks.join_next().await {
        let (i, id, r) = res.unwrap();
        assert_eq!(r["id"], id, "{r}");
        match i % 4 {
            0 => assert_eq!(r["result"], "edged-test", "{r}"),
            1 => assert!(r["result"]["deltachat_core_version"].is_string(), "{r}"),
            2 => assert_eq!(r["error"]["code"], -32001, "{r}"),
            _ => assert!(r["result"].is_i64(), "{r}"),
        }
        done += 1;
    }
    assert_eq!(done, 400);
}

#[test]
fn a_second_edged_on_the_same_data_dir_waits_for_the_first() {
    let mut first = EdgedStack::start();
    let mut second = EdgedStack::builder()
        .accounts(first.accounts.clone())
        .spawn();
    support::eventually(
        Duration::from_secs(30),
        "the second edged to wait for the lock",
        || {
            second
                .log_lines()
                .iter()
                .any(|l| {
                    l["message"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("waiting for the previous privitty-edged")
                })
                .then_some(())
        },
    );
    assert!(
        second.engine_pid().is_none(),
        "no second engine on the same accounts dir"
    );

    // With --no-wait-lock a third one fails clearly instead of waiting.
    let mut third = EdgedStack::builder()
        .accounts(first.accounts.clone())
        .arg("--no-wait-lock")
        .spawn();
    let status = wait_exit(&mut third.proc, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", third.proc.output());
    assert!(
        third
            .proc
            .stderr()
            .contains("another privitty-edged is running"),
        "{}",
        third.proc.output()
    );

    // The first one stops; the second takes over the directory (and the data in it).
    first.result("set_config", json!([1, "selfstatus", "handed over"]));
    assert!(first.stop().success());
    second.wait_ready();
    assert_eq!(
        second.result("get_config", json!([1, "selfstatus"])),
        "handed over"
    );
    assert!(second.engine_pid().is_some());
}

#[test]
fn socket_activation_serves_on_the_inherited_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let edged = EdgedStack::builder().socket_activated(listener).start();
    assert_eq!(
        edged.addr(),
        addr,
        "logged address is the inherited socket's"
    );
    let log = edged.log_lines();
    let listening = log.iter().find(|l| l["message"] == "listening").unwrap();
    assert_eq!(listening["socket"], "inherited");
    assert_eq!(edged.request("GET", "/health", None).json()["status"], "ok");
    // The engine must not inherit the activation variables.
    let engine = edged.engine_pid().unwrap();
    let environ = std::fs::read(format!("/proc/{engine}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("LISTEN_FDS="),
        "engine environment leaks LISTEN_FDS"
    );
    assert!(
        !environ.contains("NOTIFY_SOCKET="),
        "engine environment leaks NOTIFY_SOCKET"
    );
}
