//! Micro-benchmark of the license gate: the cost `gate::check` adds to one call, for an open
//! method (table lookup only), a gated method and an unknown `privitty_*` method (lookup plus a
//! status evaluation against the clock).
//!
//! `cargo run --release -p edged --example gate_bench [ACCOUNTS_DIR]`: with a data directory the
//! real license files are loaded (trusting `PRIVITTY_LICENSE_PUBKEY`), else a fixed `active` status.
//! Then the API token check and the method-policy lookup, alone and together with the gate, and
//! what recording one call in the metrics costs (and rendering one `/metrics` scrape).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use edged::auth::{AuthMode, Authenticator};
use edged::gate;
use edged::license::{Fixed, License, Loaded};
use edged::metrics::{Class, Metrics, Sources};
use edged::policy::Policy;
use licensectl::{Evaluation, Status};

const ROUNDS: u32 = 1_000_000;

fn main() {
    let license: Arc<dyn License> = match std::env::args_os().nth(1) {
        Some(dir) => {
            Arc::new(Loaded::load(std::path::Path::new(&dir)).expect("loading the license files"))
        }
        None => Arc::new(Fixed(Evaluation {
            status: Status::Active,
            reason: None,
            expires_at: Some(i64::MAX),
            grace_ends_at: Some(i64::MAX),
        })),
    };
    let status = license.evaluate(SystemTime::now()).status;
    println!("gate micro-benchmark, license status {status}, {ROUNDS} calls each");
    for method in [
        "get_config",
        "privitty_send_file",
        "privitty_unknown_method",
    ] {
        // Warm up, then measure; SystemTime::now() is part of every gated check, as in edged.
        for _ in 0..10_000 {
            let _ = black_box(gate::check(black_box(method), &*license, SystemTime::now()));
        }
        let start = Instant::now();
        for _ in 0..ROUNDS {
            let _ = black_box(gate::check(black_box(method), &*license, SystemTime::now()));
        }
        let per_call = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
        println!("gate {method:<26} {per_call:>8.1} ns/call");
    }
    // A rejection also builds the -32001 error (only on the unlicensed path).
    let expired = Fixed(Evaluation {
        status: Status::Expired,
        reason: None,
        expires_at: Some(1),
        grace_ends_at: Some(2),
    });
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let _ = black_box(gate::check(
            black_box("privitty_send_file"),
            &expired,
            SystemTime::now(),
        ));
    }
    let per_call = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    println!("gate {:<26} {per_call:>8.1} ns/call", "rejection (expired)");

    // What the security checks add to an authenticated call: the token compare and the policy
    // lookup (each alone, then together with the gate as one call goes through them).
    let auth = Authenticator::fixed(
        AuthMode::Required,
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
    );
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        "Bearer 0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
            .parse()
            .unwrap(),
    );
    let policy = Policy::new(&[]).expect("empty allow list");
    let measure = |name: &str, f: &dyn Fn()| {
        for _ in 0..10_000 {
            f();
        }
        let start = Instant::now();
        for _ in 0..ROUNDS {
            f();
        }
        let per_call = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
        println!("{name:<31} {per_call:>8.1} ns/call");
    };
    measure("auth token check", &|| {
        black_box(auth.check(black_box(&headers)));
    });
    measure("policy get_config", &|| {
        black_box(policy.decide(black_box("get_config")));
    });
    measure("policy send_msg (paths)", &|| {
        black_box(policy.decide(black_box("send_msg")));
    });
    measure("policy is_sending_finished", &|| {
        black_box(policy.decide(black_box("is_sending_finished")));
    });
    measure("auth + gate + policy", &|| {
        black_box(auth.check(black_box(&headers)));
        let _ = black_box(gate::check(
            black_box("get_config"),
            &*license,
            SystemTime::now(),
        ));
        black_box(policy.decide(black_box("get_config")));
    });

    // Per call, edged takes the time twice and records class, outcome and duration.
    let metrics = Metrics::new(
        Sources {
            license: license.clone(),
            engine: None,
            hub: edged::events::Hub::new(16),
            generation: None,
            accounts: None,
        },
        true,
    );
    measure("metrics record_call (engine ok)", &|| {
        let started = Some(Instant::now());
        metrics.record_call(
            black_box(Class::Engine),
            black_box("get_config"),
            Ok(()),
            false,
            started,
        );
    });
    let rejected = gate::rejection(&Evaluation {
        status: Status::Expired,
        reason: None,
        expires_at: Some(1),
        grace_ends_at: Some(2),
    });
    measure("metrics record_call (rejection)", &|| {
        let started = Some(Instant::now());
        metrics.record_call(
            black_box(Class::Gated),
            black_box("privitty_send_file"),
            Err(&rejected),
            false,
            started,
        );
    });
    // Two threads recording at once (edged's runtime has one worker per core): the contention.
    let threads = 2;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..ROUNDS {
                    let started = Some(Instant::now());
                    metrics.record_call(
                        black_box(Class::Engine),
                        black_box("get_config"),
                        Ok(()),
                        false,
                        started,
                    );
                }
            });
        }
    });
    let per_call = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    println!(
        "{:<31} {per_call:>8.1} ns/call",
        format!("metrics record_call, {threads} threads")
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let start = Instant::now();
    let scrapes = 10_000;
    let mut bytes = 0;
    for _ in 0..scrapes {
        bytes = black_box(rt.block_on(metrics.render())).len();
    }
    let per_scrape = start.elapsed().as_nanos() as f64 / f64::from(scrapes);
    println!(
        "{:<31} {:>8.1} ns/scrape ({bytes} bytes)",
        "metrics render", per_scrape
    );
}
