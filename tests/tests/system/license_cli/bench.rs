//! Figures, not assertions (ignored: run by hand).

use super::*;

// ================================================================ figures (not assertions)

/// Prints per-call figures next to a baseline: server calls against a 404 on the same listener (the
/// HTTP stack without work), CLI commands against `privitty-edge --version` (process start).
/// `cargo test -p privitty-tests --release --test system license_cli::bench -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: prints figures"]
fn bench_license_server_and_cli() {
    let w = world();
    let url = w.server.create_license(&LicenseSpec {
        seats: 100_000,
        ..LicenseSpec::default()
    });
    const N: usize = 200;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let per_call = |what: &str, elapsed: Duration, n: usize| {
        let ms = elapsed.as_secs_f64() * 1000.0 / n as f64;
        eprintln!("{what:<48} {ms:>8.2} ms/call {:>8.0} calls/s", 1000.0 / ms);
    };
    let devices: Vec<(String, String)> = rt.block_on(async {
        let start = std::time::Instant::now();
        for _ in 0..N {
            let r = client.get(format!("{}/nothing", w.server.base_url())).send().await.unwrap();
            assert_eq!(r.status(), 404);
        }
        per_call("baseline: 404 on the same listener", start.elapsed(), N);
        let start = std::time::Instant::now();
        let mut devices = Vec::new();
        for _ in 0..N {
            let dev = new_uuid();
            let r = client
                .put(format!("{url}/devices/{dev}"))
                .json(&json!({"nonce": "n"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            devices.push((dev, v["device_secret"].as_str().unwrap().to_string()));
        }
        per_call(&format!("activate, new seat (state of {N} seats)"), start.elapsed(), N);
        let start = std::time::Instant::now();
        for (i, (dev, secret)) in devices.iter().enumerate() {
            let body = json!({"seq": 1, "usage": [{"report_id": format!("r{i}"), "counters": {"files": 1}}]});
            let r = client
                .post(format!("{url}/devices/{dev}/sync"))
                .bearer_auth(secret)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        per_call("sync with one usage report", start.elapsed(), N);
        devices
    });
    drop(devices);

    let a = w.device("a");
    const RUNS: usize = 20;
    let time_runs = |what: &str, args: &[&str], expect: i32| {
        let start = std::time::Instant::now();
        for _ in 0..RUNS {
            let run = w.edge(&a, args);
            assert_eq!(run.code, expect, "{run:?}");
        }
        per_call(what, start.elapsed(), RUNS);
    };
    let start = std::time::Instant::now();
    for _ in 0..RUNS {
        let out = Command::new(bin("privitty-edge"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    per_call("baseline: privitty-edge --version", start.elapsed(), RUNS);
    time_runs("privitty-edge license status (no license)", &["status"], 3);
    let url1 = w.license();
    time_runs(
        "privitty-edge license activate (same device)",
        &["activate", &url1],
        0,
    );
    time_runs("privitty-edge license status", &["status"], 0);
    time_runs("privitty-edge license sync", &["sync"], 0);
}
