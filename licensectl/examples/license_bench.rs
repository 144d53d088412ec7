//! Costs of the license operations on the hot and warm paths, printed next to a baseline:
//! `evaluate` runs on every gated JSON-RPC call, `increment` on every successful one; `load`,
//! `verify` and `flush` run at start-up or on a timer.
//!
//! Run: `cargo run --release -p licensectl --example license_bench`

use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use licensectl::jwt::{Binding, LicenseClaims};
use licensectl::{AccountsDir, LoadedLicense, TrustedKeys, UsageCounters};

const DEV: &str = "0b6a4a39-52f9-4a8e-9b5d-0123456789ab";

fn measure(name: &str, iterations: u32, baseline: Duration, mut f: impl FnMut()) {
    for _ in 0..iterations.min(100) {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    let per_op = start.elapsed() / iterations;
    let verdict = if per_op <= baseline {
        "ok"
    } else {
        "SLOWER than baseline"
    };
    println!("{name:<34} {per_op:>12.2?}/op   baseline {baseline:>10.2?}   {verdict}");
}

fn main() {
    let key = SigningKey::from_bytes(&[42; 32]);
    let mut keys = TrustedKeys::default();
    keys.insert_raw(key.verifying_key().to_bytes());
    let now = licensectl::accounts::unix_secs(SystemTime::now());
    let claims = LicenseClaims {
        ver: 1,
        iss: "privitty-license".into(),
        aud: "privitty-edge".into(),
        sub: "lic-bench".into(),
        jti: "jti-bench".into(),
        iat: now,
        sync_by: now + 86_400,
        exp: now + 2 * 86_400,
        dev: DEV.into(),
        act: None,
        customer: Some("ACME".into()),
        seats: Some(10),
        features: vec!["send_file".into(), "revoke".into()],
        nce: None,
    };
    let token = licensectl::jwt::sign(&claims, &key);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = AccountsDir::new(tmp.path());
    std::fs::write(tmp.path().join("device.uuid"), format!("{DEV}\n")).expect("device.uuid");
    std::fs::write(dir.license_path(), &token).expect("privitty.lic");

    println!(
        "licensectl benchmark ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let binding = Binding {
        device_uuid: DEV,
        activation_id: None,
    };
    measure("jwt::verify", 2_000, Duration::from_micros(200), || {
        licensectl::jwt::verify(&token, &keys, &binding).expect("verifies");
    });
    measure(
        "LoadedLicense::load (3 files)",
        1_000,
        Duration::from_micros(500),
        || {
            LoadedLicense::load(&dir, &keys).expect("loads");
        },
    );
    let loaded = LoadedLicense::load(&dir, &keys).expect("loads");
    measure(
        "LoadedLicense::evaluate",
        1_000_000,
        Duration::from_micros(1),
        || {
            std::hint::black_box(loaded.evaluate(SystemTime::now()));
        },
    );
    let counters = UsageCounters::new();
    measure(
        "UsageCounters::increment",
        1_000_000,
        Duration::from_micros(1),
        || {
            counters.increment("privitty_send_file");
        },
    );
    measure(
        "UsageCounters::flush (lock+fsync)",
        200,
        Duration::from_millis(20),
        || {
            counters.increment("privitty_send_file");
            counters.flush(&dir).expect("flushes");
        },
    );
    measure("status::report", 1_000, Duration::from_micros(500), || {
        licensectl::status::report(&dir, &keys, SystemTime::now()).expect("report");
    });
}
