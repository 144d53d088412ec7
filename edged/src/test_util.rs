//! Helpers for this crate's unit tests only.

use std::time::Duration;

/// Yields until `cond` holds; panics after 10 s.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition not reached within 10 s");
}

/// The pinned engine (`$PRIVITTY_ENGINE`, else `target/engine/deltachat-rpc-server`), or `None`
/// after saying the test skipped; with `PRIVITTY_REQUIRE_ALL_TESTS` set (as CI does), a missing
/// engine fails the test instead.
pub fn pinned_engine() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("PRIVITTY_ENGINE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/engine/deltachat-rpc-server")
        });
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("PRIVITTY_REQUIRE_ALL_TESTS").is_none(),
        "the engine is missing: run tests/scripts/fetch-engine.sh"
    );
    eprintln!("SKIPPED: the engine is missing (run tests/scripts/fetch-engine.sh)");
    None
}
