//! privitty-edged's HTTP and JSON-RPC contract over real HTTP, with the real engine: health, the
//! cookbook flows, Privitty files sent as plain `send_msg`, SSE, error codes, batches,
//! notifications, id echo, limits (body cap, slow clients), CORS, config errors and exit codes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use privitty_tests::edged_stack::{EdgedStack, LicenseState, wait_exit};
use privitty_tests::support::{self, Proc};
use serde_json::{Value, json};

#[test]
fn health_and_routes() {
    let edged = EdgedStack::start();
    let r = edged.request("GET", "/health", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let h = r.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["service"], "privitty-edged");
    let version = h["version"].as_str().unwrap();
    assert_eq!(version.split('.').count(), 3, "semver: {version}");
    assert_eq!(h["engine"]["running"], true);
    // CORS is off by default.
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(edged.request("GET", "/nope", None).status, 404);
    let wrong = edged.request("GET", "/rpc", None);
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
}

#[test]
fn cors_flag_turns_cors_on() {
    let edged = EdgedStack::builder().arg("--cors").start();
    let r = edged.request("GET", "/health", None);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let pre = edged.request("OPTIONS", "/rpc", None);
    assert_eq!(pre.status, 204);
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    drop(edged);
    // The variable takes the usual spellings of "on".
    let edged = EdgedStack::builder().env("PRIVITTY_CORS", "1").start();
    let r = edged.request("GET", "/health", None);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

/// What a web page's form or `fetch` sends to `/rpc`: an `Origin` header and a form content type,
/// which need no CORS preflight, so the browser delivers it even though it hides the answer.
fn browser_post(edged: &EdgedStack, body: &str) -> privitty_tests::edged_stack::Reply {
    let raw = format!(
        "POST /rpc HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nOrigin: http://page.example\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        edged.addr(),
        body.len()
    );
    edged.raw_exchange(raw.as_bytes())
}

#[test]
fn a_web_page_cannot_call_rpc_unless_cors_is_on() {
    let edged = EdgedStack::start();
    let set =
        r#"{"jsonrpc":"2.0","method":"set_config","params":[1,"selfstatus","from a page"],"id":1}"#;
    let r = browser_post(&edged, set);
    assert_eq!(r.status, 403, "{}", r.body);
    let err = &r.json()["error"];
    assert_eq!(err["code"], -32600, "{err}");
    assert!(err["message"].as_str().unwrap().contains("--cors"), "{err}");
    assert_ne!(
        edged.result("get_config", json!([1, "selfstatus"])),
        "from a page",
        "the refused call did not run"
    );
    // Scripts send no Origin: curl's default form content type (the README's quick start) works.
    let body = r#"{"jsonrpc":"2.0","method":"get_config","params":[1,"displayname"],"id":2}"#;
    let raw = format!(
        "POST /rpc HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = edged.raw_exchange(raw.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"], "edged-test");
    drop(edged);

    // With --cors the operator lets web pages in.
    let edged = EdgedStack::builder().arg("--cors").start();
    let r = browser_post(&edged, set);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        edged.result("get_config", json!([1, "selfstatus"])),
        "from a page"
    );
}

#[test]
fn account_is_set_up_with_the_profile_name() {
    let edged = EdgedStack::start();
    assert_eq!(edged.result("get_all_account_ids", json!([])), json!([1]));
    assert_eq!(
        edged.result("get_config", json!([1, "displayname"])),
        "edged-test"
    );
    // Unconfigured (offline) account: connectivity is below "connected".
    let c = edged
        .result("get_connectivity", json!([1]))
        .as_i64()
        .unwrap();
    assert!(c < 4000, "{c}");
}

/// contact → chat → send_msg → get_message_ids → get_messages, offline. The engine refuses to queue
/// the send (no transport configured) and says so, but the message is stored in the chat.
#[test]
fn cookbook_flow_and_prv_file_as_plain_send_msg() {
    let edged = EdgedStack::builder().license(LicenseState::Active).start();
    let contact = edged.result("create_contact", json!([1, "bob@example.org", "Bob"]));
    let contact_id = contact.as_u64().expect("contact id");
    assert_eq!(
        edged.result("lookup_contact_id_by_addr", json!([1, "bob@example.org"])),
        contact
    );
    let chat = edged.result("create_chat_by_contact_id", json!([1, contact_id]));
    let chat_id = chat.as_u64().expect("chat id");
    assert_eq!(
        edged.result("get_chat_contacts", json!([1, chat_id])),
        json!([contact_id])
    );

    let sent = edged.call(
        "send_msg",
        json!([1, chat_id, {"text": "hello from the edge"}]),
    );
    // The engine's own error passes through unchanged (code and message), not as -32001 or -32603.
    assert_eq!(sent["error"]["code"], -1, "{sent}");
    assert!(
        sent["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No self addr configured"),
        "{sent}"
    );

    let plain = edged.accounts.join("files/photo.jpg");
    std::fs::write(&plain, vec![7u8; 200_000]).unwrap();
    let enc = edged.result(
        "privitty_send_file",
        json!([
            1,
            chat_id,
            contact_id,
            plain.to_str().unwrap(),
            true,
            false,
            0
        ]),
    );
    let prv = enc["encrypted_path"].as_str().unwrap().to_string();
    assert!(prv.ends_with(".prv"));
    // Sending the .prv is a plain send_msg: open, never -32001.
    let sent_file = edged.call(
        "send_msg",
        json!([1, chat_id, {"text": "protected", "file": prv, "viewtype": "File"}]),
    );
    assert_ne!(sent_file["error"]["code"], -32001, "{sent_file}");

    let ids = edged.result("get_message_ids", json!([1, chat_id, false, false]));
    let ids = ids.as_array().unwrap().clone();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let msgs = edged.result("get_messages", json!([1, ids]));
    let texts: Vec<&str> = msgs
        .as_object()
        .unwrap()
        .values()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"hello from the edge"), "{msgs}");
    let with_file: Vec<&Value> = msgs
        .as_object()
        .unwrap()
        .values()
        .filter(|m| m["text"] == "protected")
        .collect();
    assert!(
        with_file[0]["fileName"].as_str().unwrap().ends_with(".prv"),
        "{msgs}"
    );
}

#[test]
fn protocol_errors_batches_notifications_and_ids() {
    let edged = EdgedStack::start();
    // -32700: not JSON (HTTP 200, id null).
    let r = edged.post_rpc("{not json");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["error"]["code"], -32700);
    assert!(r.json()["id"].is_null());
    // -32600: not a request.
    assert_eq!(
        edged.post_rpc(r#"{"method":"get_info","id":3}"#).json()["error"]["code"],
        -32600
    );
    assert_eq!(edged.post_rpc("[]").json()["error"]["code"], -32600);
    // -32601 for methods that do not exist (edged's method table names every engine method).
    let r = edged
        .post_rpc(r#"{"jsonrpc":"2.0","method":"no_such_method","params":[],"id":4}"#)
        .json();
    assert_eq!(r["error"]["code"], -32601, "{r}");
    // -32602: named params are refused; wrong arity is the engine's -32602.
    let r = edged
        .post_rpc(r#"{"jsonrpc":"2.0","method":"get_info","params":{"a":1},"id":5}"#)
        .json();
    assert_eq!(r["error"]["code"], -32602);
    let r = edged
        .post_rpc(r#"{"jsonrpc":"2.0","method":"get_config","params":[1],"id":6}"#)
        .json();
    assert_eq!(r["error"]["code"], -32602, "{r}");
    // The JSON-RPC 2.0 specification's own example: a method that does not exist is -32601 even
    // with named params; an existing one with named params stays -32602; a gated one -32001.
    let r = edged
        .post_rpc(r#"{"jsonrpc":"2.0","method":"foo.get","params":{"name":"myself"},"id":"5"}"#)
        .json();
    assert_eq!(
        r,
        json!({"jsonrpc":"2.0","error":{"code":-32601,"message":"method not found: foo.get"},"id":"5"})
    );
    let r = edged
        .post_rpc(r#"[{"jsonrpc":"2.0","method":"foo.get","params":{"name":"myself"},"id":"5"},{"jsonrpc":"2.0","method":"privitty_send_file","params":{"a":1},"id":"6"}]"#)
        .json();
    assert_eq!(r[0]["error"]["code"], -32601, "{r}");
    assert_eq!(r[1]["error"]["code"], -32001, "{r}");

    // Ids come back byte for byte.
    for id in ["\"abc\"", "42", "null", "12345678901234567890123", "-0.5"] {
        let r = edged.post_rpc(&format!(
            r#"{{"jsonrpc":"2.0","method":"get_connectivity","params":[1],"id":{id}}}"#
        ));
        assert_eq!(r.status, 200);
        assert!(
            r.body.ends_with(&format!(",\"id\":{id}}}")),
            "id {id}: {}",
            r.body
        );
    }
    // A method that returns null answers 204; so does a notification.
    let r = edged.post_rpc(
        r#"{"jsonrpc":"2.0","method":"set_config","params":[1,"selfstatus","edge"],"id":7}"#,
    );
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = edged
        .post_rpc(r#"{"jsonrpc":"2.0","method":"set_config","params":[1,"selfstatus","edge2"]}"#);
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_eq!(
        edged.result("get_config", json!([1, "selfstatus"])),
        "edge2",
        "the notification ran"
    );

    // Batch: answers in order, notifications left out, invalid members answered.
    let batch = r#"[
        {"jsonrpc":"2.0","method":"get_config","params":[1,"displayname"],"id":"a"},
        {"jsonrpc":"2.0","method":"set_config","params":[1,"selfstatus","b"]},
        {"jsonrpc":"2.0","method":"privitty_send_file","params":[],"id":"c"},
        5,
        {"jsonrpc":"2.0","method":"set_config","params":[1,"selfstatus","d"],"id":"d"}
    ]"#;
    let r = edged.post_rpc(batch);
    assert_eq!(r.status, 200);
    let arr = r.json();
    let arr = arr.as_array().unwrap();
    assert_eq!(arr.len(), 4, "{arr:?}");
    assert_eq!(arr[0]["id"], "a");
    assert_eq!(arr[0]["result"], "edged-test");
    assert_eq!(arr[1]["error"]["code"], -32001);
    assert_eq!(arr[2]["error"]["code"], -32600);
    assert!(arr[2]["id"].is_null());
    assert_eq!(arr[3]["id"], "d");
    assert!(arr[3]["result"].is_null() && arr[3].get("result").is_some());
    // A batch of notifications only: 204.
    let r = edged.post_rpc(r#"[{"jsonrpc":"2.0","method":"get_info","params":[1]}]"#);
    assert_eq!(r.status, 204);
}

#[test]
fn wrongly_typed_params_are_invalid_params_and_the_id_survives_a_broken_member() {
    let edged = EdgedStack::start();
    // The engine calls a type mismatch a parse error; the JSON was fine, the params were not.
    for params in [json!(["x", "displayname"]), json!([1, 10, {"text": 5}])] {
        let method = if params.as_array().unwrap().len() == 2 {
            "get_config"
        } else {
            "send_msg"
        };
        let r = edged.call(method, params.clone());
        assert_eq!(r["error"]["code"], -32602, "{method} {params}: {r}");
        assert_eq!(r["id"], 1);
    }
    // A number JSON can write but no parser here holds: that request is invalid, and its id is
    // still readable, so the answer names it.
    let r = edged
        .post_rpc(r#"[{"jsonrpc":"2.0","method":"get_config","params":[1e999,"displayname"],"id":"big"},{"jsonrpc":"2.0","method":"get_config","params":[1,"displayname"],"id":"ok"}]"#)
        .json();
    assert_eq!(r[0]["error"]["code"], -32600, "{r}");
    assert_eq!(r[0]["id"], "big", "{r}");
    assert_eq!(r[1]["result"], "edged-test", "{r}");
}

#[test]
fn oversized_body_gets_413_with_a_json_rpc_error() {
    let edged = EdgedStack::start();
    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"send_msg","params":[1,10,{{"text":"{}"}}],"id":1}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    let r = edged.post_rpc(&big);
    assert_eq!(r.status, 413, "{}", r.body);
    let j = r.json();
    assert_eq!(j["error"]["code"], -32600);
    assert!(j["error"]["message"].as_str().unwrap().contains("1048576"));
    // Chunked, without a length: still refused once past the cap.
    let mut s = TcpStream::connect(edged.addr()).unwrap();
    write!(
        s,
        "POST /rpc HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut answer = Vec::new();
    for _ in 0..20 {
        if write!(s, "{:x}\r\n", chunk.len()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // The server is still fine.
    assert_eq!(edged.request("GET", "/health", None).status, 200);
}

#[test]
fn slow_clients_cannot_pin_connections() {
    let edged = EdgedStack::builder()
        .arg("--header-timeout")
        .arg("1s")
        .arg("--max-connections")
        .arg("4")
        .arg("--body-timeout")
        .arg("1s")
        .start();
    // Four clients send half a request head and stall: each is closed by the header timeout, so a
    // fifth client (beyond the cap, waiting in the backlog) is served.
    let mut stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(edged.addr()).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
                .unwrap();
            s
        })
        .collect();
    let r = edged.request("GET", "/health", None);
    assert_eq!(r.status, 200);
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        // Closed by the server (EOF), possibly after an error response; never a 200.
        assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    }
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(edged.addr()).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut all = Vec::new();
    let _ = idle.read_to_end(&mut all);
    assert!(
        String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"),
        "served, then closed when idle"
    );
    // A body that stops arriving gets 408 with a JSON-RPC error.
    let mut s = TcpStream::connect(edged.addr()).unwrap();
    s.write_all(b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"jsonrpc\"")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":-32600"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sees_engine_and_privitty_events_and_frees_clients() {
    let edged = EdgedStack::builder().license(LicenseState::Active).start();
    let base = edged.base_url();
    let client = reqwest::Client::new();
    let mut events = client.get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut second = client.get(format!("{base}/events")).send().await.unwrap();
    let clients = |h: Value| h["sse_clients"].as_u64().unwrap();
    assert_eq!(
        clients(get_json(&client, &format!("{base}/health")).await),
        2
    );

    let rpc = |method: &str, params: Value| {
        let client = client.clone();
        let url = format!("{base}/rpc");
        let body = json!({"jsonrpc":"2.0","method":method,"params":params,"id":1});
        async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let contact =
        rpc("create_contact", json!([1, "carol@example.org", "Carol"])).await["result"].clone();
    let chat = rpc("create_chat_by_contact_id", json!([1, contact])).await["result"].clone();
    rpc("send_msg", json!([1, chat, {"text": "hi"}])).await;
    let plain = edged.accounts.join("files/notes.txt");
    std::fs::write(&plain, "notes").unwrap();
    rpc(
        "privitty_send_file",
        json!([1, chat, contact, plain.to_str().unwrap(), false, false, 5]),
    )
    .await;

    let mut seen: Vec<Value> = Vec::new();
    let mut buf = String::new();
    let want = ["MsgsChanged", "MsgFailed", "PrivittyFileEncrypted"];
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let chunk = events.chunk().await.unwrap().expect("stream open");
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                if let Some(data) = frame.strip_prefix("data: ") {
                    seen.push(serde_json::from_str(data.trim()).unwrap());
                }
            }
            if want.iter().all(|w| seen.iter().any(|e| e["type"] == *w)) {
                break;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "wanted {want:?}, saw {seen:?}");
    let failed = seen.iter().find(|e| e["type"] == "MsgFailed").unwrap();
    assert_eq!(failed["account_id"], 1);
    assert_eq!(failed["chat_id"], chat);
    assert!(failed["msg_id"].is_u64(), "snake_case fields: {failed}");
    assert!(failed.get("msgId").is_none());
    let enc = seen
        .iter()
        .find(|e| e["type"] == "PrivittyFileEncrypted")
        .unwrap();
    assert_eq!(enc["account_id"], 1);

    // The second client got the same events; after both disconnect their buffers are freed.
    let first = second
        .chunk()
        .await
        .unwrap()
        .expect("second client gets events");
    assert!(String::from_utf8_lossy(&first).starts_with("data: {\"type\":"));
    drop(events);
    drop(second);
    support::eventually_async(Duration::from_secs(30), "SSE clients freed", || {
        let client = client.clone();
        let url = format!("{base}/health");
        async move { (clients(get_json(&client, &url).await) == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_ping_keeps_the_stream_alive() {
    let edged = EdgedStack::builder()
        .arg("--sse-ping-interval")
        .arg("200ms")
        .start();
    let mut events = reqwest::get(format!("{}/events", edged.base_url()))
        .await
        .unwrap();
    let mut buf = String::new();
    while !buf.contains(": ping\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("a ping within 30 s")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[test]
fn config_errors_are_all_reported_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(support::bin("privitty-edged"));
    cmd.args(["--listen", "not-an-address", "--header-timeout", "soon"])
        .arg("--accounts")
        .arg(dir.path().join("data"))
        .env("PRIVITTY_ENGINE", "/nonexistent/deltachat-rpc-server");
    let mut p = Proc::spawn("privitty-edged", cmd, dir.path());
    let status = wait_exit(&mut p, Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", p.output());
    let err = p.stderr();
    for needle in ["--listen", "--engine", "--header-timeout"] {
        assert!(err.contains(needle), "{needle} not reported: {err}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing created before validation passed"
    );
}

#[test]
fn sigterm_stops_cleanly_with_exit_0_and_stops_the_engine() {
    let mut edged = EdgedStack::start();
    let engine = edged.engine_pid().expect("engine is edged's child");
    // A call that never finishes by itself (wait_next_msgs blocks after its first answer, offline)
    // must not hold up the stop: its client is answered at once that edged is stopping.
    assert_eq!(edged.result("wait_next_msgs", json!([1])), json!([]));
    let mut stuck = TcpStream::connect(edged.addr()).unwrap();
    let body = r#"{"jsonrpc":"2.0","method":"wait_next_msgs","params":[1],"id":1}"#;
    write!(
        stuck,
        "POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    support::eventually(
        Duration::from_secs(30),
        "the stuck call to reach edged",
        || {
            (edged
                .log_lines()
                .iter()
                .filter(|l| l["method"] == "wait_next_msgs")
                .count()
                == 2)
                .then_some(())
        },
    );
    let status = edged.stop();
    stuck
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    let _ = stuck.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200")
            && answer.contains("-32603")
            && answer.contains("stopping"),
        "stuck call: {answer}"
    );
    assert_eq!(status.code(), Some(0), "{}", edged.proc.output());
    let log = edged.log_lines();
    assert!(
        !log.iter()
            .any(|l| l["message"] == "connections still open at the stop deadline; closing them"),
        "the long poll held the stop up to its deadline: {log:?}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{engine}")).exists(),
        "engine {engine} still running"
    );
    let log = edged.log_lines();
    assert!(
        log.iter().any(|l| l["message"] == "engine stopped"),
        "{log:?}"
    );
}

#[test]
fn an_engine_that_cannot_start_is_a_runtime_failure_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(support::bin("privitty-edged"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .arg("--accounts")
        .arg(dir.path().join("data"))
        .env("PRIVITTY_ENGINE", "/bin/false");
    let mut p = Proc::spawn("privitty-edged", cmd, dir.path());
    let status = wait_exit(&mut p, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", p.output());
    assert!(
        p.stderr()
            .contains("the messaging engine /bin/false did not set up account 1"),
        "{}",
        p.output()
    );
}
