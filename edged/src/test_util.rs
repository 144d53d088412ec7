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
