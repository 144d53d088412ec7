//! `edged::run` called directly (the listener and the shutdown trigger are parameters), with the
//! real engine and a license given in-process: readiness, an in-flight request finishing across the
//! shutdown, SSE streams ended, and `run` returning Ok.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edged::license::Fixed;
use edged::{Config, LicenseSource};
use licensectl::{Evaluation, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `$PRIVITTY_ENGINE`, else the engine installed by tests/scripts/fetch-engine.sh.
fn engine() -> PathBuf {
    if let Some(p) = std::env::var_os("PRIVITTY_ENGINE") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/engine/deltachat-rpc-server");
    assert!(
        p.is_file(),
        "{} is missing: run tests/scripts/fetch-engine.sh",
        p.display()
    );
    p
}

async fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("server answers and closes within 30 s")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_shutdown_and_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("data"), engine());
    config.profile = "in-process".into();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let license = Fixed(Evaluation {
        status: Status::GracePeriod,
        reason: None,
        expires_at: Some(1),
        grace_ends_at: Some(i64::MAX),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(edged::run(
        config,
        listener,
        LicenseSource::Given(Arc::new(license)),
        async move {
            let _ = stop_rx.await;
        },
    ));

    // The socket is bound already, so this request waits in the backlog until edged serves.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let health = read_all(s).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""status":"grace_period""#), "{health}");

    // An SSE client, and a request whose body is only half sent when the stop comes.
    let mut sse = TcpStream::connect(addr).await.unwrap();
    sse.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    sse.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let body = br#"{"jsonrpc":"2.0","method":"get_config","params":[1,"displayname"],"id":9}"#;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    // Wait until edged routed the slow request (health counts requests: 2 so far, plus the slow
    // one, plus each probe).
    let mut probes = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut probe = TcpStream::connect(addr).await.unwrap();
            probe
                .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            probes += 1;
            if read_all(probe)
                .await
                .contains(&format!(r#""requests":{}"#, 3 + probes))
            {
                break;
            }
        }
    })
    .await
    .expect("the slow request reached edged");

    stop_tx.send(()).unwrap();
    slow.write_all(&body[10..]).await.unwrap();
    let answer = read_all(slow).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "in-flight request finished: {answer}"
    );
    assert!(answer.contains(r#""result":"in-process""#), "{answer}");
    let rest = read_all(sse).await;
    assert!(
        !rest.contains("data:") || rest.contains("\r\n0\r\n\r\n"),
        "SSE stream ended: {rest}"
    );

    let result = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("run returns");
    result.unwrap().expect("clean stop");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after run returned"
    );
}
