//! Start-up activation: turns a delivery URL into `privitty.lic` before the first generation serves.
//!
//! Owns the retry policy: transient errors are retried with backoff (honouring the server's
//! `Retry-After`) until success or a definitive refusal, however long that takes. Must not decide
//! when edged starts: the driver gives the first attempts `PRIVITTY_ACTIVATION_TIMEOUT`, then starts
//! edged unlicensed while this keeps trying in the background. Never logs the TOKEN
//! (`DeliveryUrl`'s `Display` is redacted).

use std::time::Duration;

use licensectl::{AccountsDir, ActivateRequest, DeliveryUrl, TrustedKeys};
use tokio::sync::mpsc;

use super::backoff::Backoff;

/// Retry pacing for transient failures.
pub const RETRY_INITIAL: Duration = Duration::from_millis(250);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// How the activation ended (transient failures never end it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Activated {
        jti: String,
        new_seat: bool,
    },
    /// A definitive refusal or a local problem retrying cannot fix; the message says which.
    GaveUp {
        error: String,
    },
    /// `privitty.lic` appeared between attempts (`privitty-edge license activate`, a file drop):
    /// activating now would take a second seat and replace it.
    Superseded,
}

/// Activates, retrying transient failures; sends the outcome once and ends.
pub async fn run(
    dir: AccountsDir,
    url: DeliveryUrl,
    keys: TrustedKeys,
    done: mpsc::UnboundedSender<Outcome>,
) {
    let request = ActivateRequest::from_env();
    let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX, Duration::MAX);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if attempt > 1 && std::fs::symlink_metadata(dir.license_path()).is_ok() {
            tracing::info!(
                url = %url,
                attempt,
                "a license was installed meanwhile; start-up activation stops (the installed \
                 license is used, and no second seat is taken)"
            );
            let _ = done.send(Outcome::Superseded);
            return;
        }
        match licensectl::activate(&dir, &url, &keys, &request).await {
            Ok(activated) => {
                tracing::info!(
                    url = %url,
                    attempt,
                    activation_id = %activated.activation_id,
                    license = %activated.license.jti,
                    new_seat = activated.new_seat,
                    "license activated"
                );
                let _ = done.send(Outcome::Activated {
                    jti: activated.license.jti,
                    new_seat: activated.new_seat,
                });
                return;
            }
            Err(e) if e.is_transient() => {
                let delay = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(
                    url = %url,
                    attempt,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "license activation failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::error!(
                    url = %url,
                    attempt,
                    error = %e,
                    "license activation refused; not retrying. Gated calls stay blocked until a \
                     license is installed: check the delivery URL with your administrator, then run \
                     `privitty-edge license activate <url>` (no restart needed)"
                );
                let _ = done.send(Outcome::GaveUp {
                    error: e.to_string(),
                });
                return;
            }
        }
    }
}
