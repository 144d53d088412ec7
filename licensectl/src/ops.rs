//! The operations `activate`, `sync`, `deactivate`: protocol calls plus the file commits, under the
//! directory lock. A transient error never changes the license files (it is only noted in
//! `sync_state.json`, which nothing but `status` reads).
//!
//! Owns: the order of writes (`privitty.lic`, `license_server.txt`, then `activation.json` as the
//! commit record; on a withdrawal, `privitty.lic` moved aside before `activation.json` records it),
//! the rule that a license is verified before anything is written, and the high-water resets
//! (to the `iat` of the verified license: the server's `server_time` is unsigned and only logged).
//! Must not: own a runtime (these are `async fn`s on the caller's), block it (every file access
//! runs in `spawn_blocking`), or log secrets.

use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::accounts::{AccountsDir, Activation, ActivationState, DirLock};
use crate::client::{ActivateBody, Client, SyncBody};
use crate::error::{Error, TransientCause};
use crate::jwt::{Binding, LicenseClaims};
use crate::keys::TrustedKeys;
use crate::status::LicenseIdentity;
use crate::url::DeliveryUrl;
use crate::usage::{UsageReport, UsageStore};
use crate::vocab::{
    ACTIVATION_FILE, DEVICE_UUID_FILE, LICENSE_FILE, LICENSE_SERVER_FILE, REVOKED_LICENSE_FILE,
    rfc3339, unix_secs,
};

/// `sync_state.json` lives with the other files of the accounts directory; these names stay here
/// for the callers that know them from this module.
pub use crate::accounts::{SyncState, read_sync_state};
pub use crate::vocab::SYNC_STATE_FILE;

/// The gateway's name, used as the device name on activation.
pub const PROFILE_ENV: &str = privitty_base::env::PROFILE;
/// Usage reports sent in one sync; the rest go with the next one.
pub const MAX_REPORTS_PER_SYNC: usize = 50;

/// The local clock differing from the server's by more than this is worth a warning (a wrong clock
/// makes a license look expired, or hides that it is).
pub const CLOCK_SKEW_WARNING: i64 = 3600;

#[derive(Clone, Debug)]
pub struct ActivateRequest {
    /// `PRIVITTY_PROFILE`, else the hostname.
    pub device_name: String,
    pub client_version: String,
    pub platform: String,
}

impl ActivateRequest {
    /// Device name from `PRIVITTY_PROFILE`, else the hostname; this crate's version; `linux-<arch>`.
    pub fn from_env() -> ActivateRequest {
        let device_name = std::env::var(PROFILE_ENV)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "privitty-edge".to_string());
        ActivateRequest {
            device_name,
            client_version: env!("CARGO_PKG_VERSION").to_string(),
            platform: format!("linux-{}", std::env::consts::ARCH),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Activated {
    pub activation_id: String,
    /// true for `201` (a new seat), false for `200` (this device already held one).
    pub new_seat: bool,
    pub license: LicenseIdentity,
}

#[derive(Clone, Debug)]
pub struct Synced {
    /// true when the server sent a license different from the one on disk (and it was stored).
    pub license_changed: bool,
    pub license: LicenseIdentity,
    pub acked_reports: usize,
}

fn identity(bytes: &[u8], claims: &LicenseClaims) -> LicenseIdentity {
    LicenseIdentity {
        sha256: hex::encode(Sha256::digest(bytes)),
        jti: claims.jti.clone(),
        iat: claims.iat,
    }
}

fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The license on disk, verified against `binding`, with its bytes.
fn current_license(
    dir: &AccountsDir,
    keys: &TrustedKeys,
    binding: &Binding<'_>,
) -> Option<(Vec<u8>, LicenseClaims)> {
    let bytes = dir.read_license().ok()??.ok()?;
    let claims = crate::jwt::verify(std::str::from_utf8(&bytes).ok()?, keys, binding).ok()?;
    Some((bytes, claims))
}

/// Verifies a license from a response; failure is transient (the server or a proxy sent garbage).
fn verify_response(
    client: &Client,
    operation: &'static str,
    jwt: &str,
    keys: &TrustedKeys,
    binding: &Binding<'_>,
    nonce: &str,
) -> Result<LicenseClaims, Error> {
    let claims = crate::jwt::verify(jwt, keys, binding).map_err(|reason| {
        client.transient(
            operation,
            TransientCause::BadLicense(reason),
            format!("the license it sent does not verify ({reason})"),
            None,
        )
    })?;
    if claims.nce.as_deref().is_some_and(|n| n != nonce) {
        return Err(client.transient(
            operation,
            TransientCause::BadResponse,
            "the license it sent answers another request (nonce mismatch)".into(),
            None,
        ));
    }
    Ok(claims)
}

/// Runs file work (bounded reads, fsyncs, renames) on a blocking thread, off the caller's runtime.
async fn blocking<T, F>(dir: &AccountsDir, work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::write(dir.path(), std::io::Error::other(e))),
    }
}

/// `server_time` is unsigned: it never moves the high-water clock, but a large difference from the
/// local clock is worth telling the operator about.
fn note_server_time(host: &str, server_time: i64) {
    let skew = unix_secs(SystemTime::now()).saturating_sub(server_time);
    if skew.abs() > CLOCK_SKEW_WARNING {
        tracing::warn!(
            server = %host,
            skew_seconds = skew,
            "the local clock differs from the license server's; check NTP (a clock ahead makes the \
             license look expired)"
        );
    } else {
        tracing::debug!(server = %host, skew_seconds = skew, "license server clock");
    }
}

/// Checked before taking the lock, so a never-activated (or missing) directory is reported as such
/// rather than as a lock-file error; the caller re-reads the file under the lock.
fn require_activation_file(dir: &AccountsDir) -> Result<(), Error> {
    match std::fs::symlink_metadata(dir.file(ACTIVATION_FILE)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotActivated {
            dir: dir.path().into(),
        }),
        Err(e) => Err(Error::read(dir.file(ACTIVATION_FILE), e)),
    }
}

fn device_uuid_required(dir: &AccountsDir) -> Result<String, Error> {
    dir.device_uuid()?.ok_or_else(|| Error::MissingFile {
        path: dir.file(DEVICE_UUID_FILE),
        remedy: "the activation in activation.json depends on it: restore it from a backup (or move activation.json away to start over as a new device)",
    })
}

fn delivery_url(dir: &AccountsDir) -> Result<DeliveryUrl, Error> {
    let path = dir.file(LICENSE_SERVER_FILE);
    let text = dir.license_server()?.ok_or_else(|| Error::MissingFile {
        path: path.clone(),
        remedy: "the activation in activation.json depends on it: run `privitty-edge license activate <url>` again",
    })?;
    DeliveryUrl::parse(&text).map_err(|_| Error::CorruptFile {
        path,
        problem: "it does not hold a valid delivery URL".into(),
        remedy: "run `privitty-edge license activate <url>` again",
    })
}

/// Activates this device (idempotent per TOKEN and device): creates `device.uuid` if needed, asks the
/// server for a seat, verifies the license against this device and the returned activation, then
/// commits `privitty.lic`, `license_server.txt` and `activation.json`. Also re-activates a device
/// whose activation was deactivated or revoked.
pub async fn activate(
    dir: &AccountsDir,
    url: &DeliveryUrl,
    keys: &TrustedKeys,
    req: &ActivateRequest,
) -> Result<Activated, Error> {
    if keys.is_empty() {
        return Err(Error::NoTrustedKeys {
            dir: crate::keys::SYSTEM_KEYS_DIR.into(),
        });
    }
    let d = dir.clone();
    blocking(dir, move || d.create()).await?;
    let lock = dir.lock().await?;
    let d = dir.clone();
    let (device_uuid, previous) = blocking(dir, move || {
        Ok((d.ensure_device_uuid_locked()?, d.activation()?))
    })
    .await?;
    let client = Client::new(url)?;
    let nonce = new_nonce();
    let body = ActivateBody {
        device_name: &req.device_name,
        client_version: &req.client_version,
        platform: &req.platform,
        nonce: &nonce,
    };
    let (new_seat, resp) = match client.activate(&device_uuid, &body).await {
        Ok(r) => r,
        Err(e) => {
            if let Error::Refused { .. } = e {
                // Kept for `license status` (the device serves unlicensed meanwhile); the text is
                // the error's, which never holds the TOKEN.
                let d = dir.clone();
                let text = e.to_string();
                let recorded = blocking(dir, move || {
                    let _lock: DirLock = lock;
                    let mut state = read_sync_state(&d).unwrap_or_default();
                    state.last_activation_error = Some(text);
                    state.last_activation_error_at = Some(rfc3339(SystemTime::now()));
                    let json = serde_json::to_vec(&state).expect("sync state serializes");
                    d.write_atomic(SYNC_STATE_FILE, &json, 0o600)
                })
                .await;
                if let Err(w) = recorded {
                    tracing::warn!(error = %w, "cannot record the activation refusal for `license status`");
                }
            }
            return Err(e);
        }
    };
    note_server_time(&url.host(), resp.server_time);
    let binding = Binding {
        device_uuid: &device_uuid,
        activation_id: Some(&resp.activation_id),
    };
    let received = verify_response(
        &client,
        "activation",
        &resp.license_jwt,
        keys,
        &binding,
        &nonce,
    )?;

    let d = dir.clone();
    let (keys, url_line) = (keys.clone(), format!("{}\n", url.expose_secret()));
    let (activation, lic_bytes, claims) = blocking(dir, move || {
        let _lock: DirLock = lock;
        let binding = Binding {
            device_uuid: &device_uuid,
            activation_id: Some(&resp.activation_id),
        };
        // Keep a newer license already on disk for this same activation (a retried activate may
        // be answered by a replica that is behind).
        let (lic_bytes, claims) = match current_license(&d, &keys, &binding) {
            Some((bytes, current)) if current.iat > received.iat => (bytes, current),
            _ => {
                d.write_atomic(LICENSE_FILE, resp.license_jwt.trim().as_bytes(), 0o644)?;
                (resp.license_jwt.trim().as_bytes().to_vec(), received)
            }
        };
        d.write_atomic(LICENSE_SERVER_FILE, url_line.as_bytes(), 0o600)?;

        let now = SystemTime::now();
        // The mark is reset to the license's signed issue time (recovering from a clock that was
        // once ahead); processes that loaded the license earlier must not write their older
        // readings back over it.
        let high_water_epoch = previous
            .as_ref()
            .map_or(0, |p| p.high_water_epoch.wrapping_add(1));
        let same = previous.filter(|p| p.activation_id == resp.activation_id);
        let activation = Activation {
            activation_id: resp.activation_id.clone(),
            device_secret: resp.device_secret,
            state: ActivationState::Active,
            lic_jti: Some(claims.jti.clone()),
            lic_iat: Some(claims.iat),
            seq: same.as_ref().map_or(0, |p| p.seq),
            high_water: claims.iat,
            high_water_epoch,
            last_sync_ok_at: same.as_ref().and_then(|p| p.last_sync_ok_at.clone()),
            last_sync_error: None,
            activated_at: same
                .as_ref()
                .and_then(|p| p.activated_at.clone())
                .or_else(|| Some(rfc3339(now))),
            deactivated_at: None,
            extra: same.map(|p| p.extra).unwrap_or_default(),
        };
        d.write_activation(&activation)?;
        d.remove(SYNC_STATE_FILE)?;
        Ok((activation, lic_bytes, claims))
    })
    .await?;
    tracing::info!(
        server = %url.host(),
        activation_id = %activation.activation_id,
        new_seat,
        license_id = %claims.sub,
        jti = %claims.jti,
        "license activated"
    );
    Ok(Activated {
        activation_id: activation.activation_id,
        new_seat,
        license: identity(&lic_bytes, &claims),
    })
}

/// What a sync reads under the lock before it calls the server.
struct SyncPrepared {
    activation: Activation,
    device_uuid: String,
    url: DeliveryUrl,
    current: Option<(Vec<u8>, LicenseClaims)>,
    usage: Option<UsageStore>,
    reports: Vec<UsageReport>,
}

fn prepare_sync(dir: &AccountsDir, keys: &TrustedKeys) -> Result<SyncPrepared, Error> {
    let activation = dir.activation()?.ok_or_else(|| Error::NotActivated {
        dir: dir.path().into(),
    })?;
    if activation.state != ActivationState::Active {
        retire_leftover_license(dir, keys, &activation);
        return Err(Error::Inactive {
            dir: dir.path().into(),
            state: activation.state.as_str(),
        });
    }
    let device_uuid = device_uuid_required(dir)?;
    let url = delivery_url(dir)?;
    if keys.is_empty() {
        return Err(Error::NoTrustedKeys {
            dir: crate::keys::SYSTEM_KEYS_DIR.into(),
        });
    }
    let binding = Binding {
        device_uuid: &device_uuid,
        activation_id: Some(&activation.activation_id),
    };
    let current = current_license(dir, keys, &binding);

    // The period is closed into a report and persisted before sending, so a lost response
    // resends the same report_id rather than counting twice.
    let mut usage = match UsageStore::read(dir) {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(error = %e, "usage counts are not sent with this sync");
            None
        }
    };
    if let Some(store) = usage.as_mut()
        && store.close_period(SystemTime::now())
    {
        store.write(dir)?;
    }
    let reports: Vec<UsageReport> = usage
        .as_ref()
        .map(|s| {
            s.pending
                .iter()
                .take(MAX_REPORTS_PER_SYNC)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Ok(SyncPrepared {
        activation,
        device_uuid,
        url,
        current,
        usage,
        reports,
    })
}

/// A withdrawal recorded while this activation's license stayed in place (by a version before the
/// license was moved aside, or when the move failed) is completed now, under the lock. Only this
/// activation's license moves: a license dropped in for file-drop provisioning stays.
fn retire_leftover_license(dir: &AccountsDir, keys: &TrustedKeys, activation: &Activation) {
    let Ok(Some(device_uuid)) = dir.device_uuid() else {
        return;
    };
    let binding = Binding {
        device_uuid: &device_uuid,
        activation_id: Some(&activation.activation_id),
    };
    if current_license(dir, keys, &binding).is_none() {
        return;
    }
    match dir.retire_license() {
        Ok(_) => tracing::info!(
            state = activation.state.as_str(),
            "the license of a withdrawn activation was still in place; moved it aside"
        ),
        Err(e) => tracing::warn!(error = %e, "could not move the withdrawn license aside"),
    }
}

/// Refreshes the license and sends usage reports. Requires an active activation.
pub async fn sync(dir: &AccountsDir, keys: &TrustedKeys) -> Result<Synced, Error> {
    let d = dir.clone();
    blocking(dir, move || require_activation_file(&d)).await?;
    let lock = dir.lock().await?;
    let (d, k) = (dir.clone(), keys.clone());
    let SyncPrepared {
        mut activation,
        device_uuid,
        url,
        current,
        usage,
        reports,
    } = blocking(dir, move || prepare_sync(&d, &k)).await?;

    let client = Client::new(&url)?;
    let nonce = new_nonce();
    let body = SyncBody {
        activation_id: &activation.activation_id,
        current_jti: current.as_ref().map(|(_, c)| c.jti.as_str()),
        seq: activation.seq,
        nonce: &nonce,
        usage: &reports,
    };
    let binding = Binding {
        device_uuid: &device_uuid,
        activation_id: Some(&activation.activation_id),
    };
    let result = match client
        .sync(&device_uuid, &activation.device_secret, &body)
        .await
    {
        Ok(resp) => {
            note_server_time(&url.host(), resp.server_time);
            verify_response(&client, "sync", &resp.license_jwt, keys, &binding, &nonce)
                .map(|c| (resp, c))
        }
        Err(e) => Err(e),
    };
    let d = dir.clone();
    let (resp, received) = match result {
        Ok(ok) => ok,
        Err(e) => {
            return Err(blocking(dir, move || {
                let _lock: DirLock = lock;
                Ok(record_sync_failure(&d, &mut activation, e))
            })
            .await
            .unwrap_or_else(|e| e));
        }
    };

    let (license_changed, lic_bytes, claims, acked_reports) = blocking(dir, move || {
        let _lock: DirLock = lock;
        let (lic_bytes, claims, license_changed) = match current {
            Some((bytes, cur)) if cur.iat > received.iat => (bytes, cur, false),
            Some((bytes, cur)) if bytes.trim_ascii() == resp.license_jwt.trim().as_bytes() => {
                (bytes, cur, false)
            }
            _ => {
                let bytes = resp.license_jwt.trim().as_bytes().to_vec();
                d.write_atomic(LICENSE_FILE, &bytes, 0o644)?;
                (bytes, received, true)
            }
        };
        activation.seq += 1;
        activation.lic_jti = Some(claims.jti.clone());
        activation.lic_iat = Some(claims.iat);
        // Reset to the signed issue time of the license now on disk (never older than the one
        // just received), not to the unsigned `server_time`.
        activation.high_water = claims.iat;
        activation.high_water_epoch = activation.high_water_epoch.wrapping_add(1);
        activation.last_sync_ok_at = Some(rfc3339(SystemTime::now()));
        activation.last_sync_error = None;
        d.write_activation(&activation)?;
        d.remove(SYNC_STATE_FILE)?;

        let mut acked_reports = 0;
        if let Some(mut store) = usage {
            acked_reports = store.remove_acked(&resp.acked_report_ids);
            if acked_reports > 0 {
                store.write(&d)?;
            }
        }
        Ok((license_changed, lic_bytes, claims, acked_reports))
    })
    .await?;
    tracing::info!(license_changed, jti = %claims.jti, acked_reports, "license synced");
    Ok(Synced {
        license_changed,
        license: identity(&lic_bytes, &claims),
        acked_reports,
    })
}

/// Notes a failed sync: a definitive refusal goes into `activation.json`; `410 deactivated` /
/// `410 revoked` also move `privitty.lic` aside and then change its state (see
/// [`withdraw`]); a transient failure only goes into `sync_state.json`. Returns the original error
/// (a failure to record is logged, not reported, as it must not hide the cause). Caller holds the
/// lock.
fn record_sync_failure(dir: &AccountsDir, activation: &mut Activation, err: Error) -> Error {
    let now = rfc3339(SystemTime::now());
    let recorded = match &err {
        Error::Refused { status, code, .. } => {
            activation.last_sync_error = Some(format!("{now}: {err}"));
            let withdrawn = match (*status, code.as_str()) {
                (410, "deactivated") => {
                    activation.deactivated_at = Some(now.clone());
                    Some(ActivationState::Deactivated)
                }
                (410, "revoked") => Some(ActivationState::Revoked),
                _ => None,
            };
            match withdrawn {
                Some(state) => withdraw(dir, activation, state),
                None => dir.write_activation(activation),
            }
            .and_then(|()| dir.remove(SYNC_STATE_FILE))
        }
        _ => {
            let state = SyncState {
                last_sync_error: Some(format!("{now}: {err}")),
                last_sync_error_at: Some(now),
                ..SyncState::default()
            };
            dir.write_atomic(
                SYNC_STATE_FILE,
                &serde_json::to_vec(&state).expect("sync state serializes"),
                0o600,
            )
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "could not record the sync failure");
    }
    err
}

/// Records a withdrawal (revoked, deactivated) the device has seen, under the lock: first
/// `privitty.lic` moves to `privitty.lic.revoked` (rename, fsync the directory), then
/// `activation.json` gets the new `state`. A kill between the two leaves no license in place and
/// the activation `active` (the next sync or deactivate redoes it); a kill before the first leaves
/// everything as it was. There is never a recorded withdrawal next to a license, which an older
/// copy of `activation.json` would bring back. Should the license not move (an I/O error), the state
/// is recorded all the same, as it alone makes the license unusable, and the error is returned.
fn withdraw(
    dir: &AccountsDir,
    activation: &mut Activation,
    state: ActivationState,
) -> Result<(), Error> {
    let retired = dir.retire_license();
    if let Err(e) = &retired {
        tracing::warn!(error = %e, "could not move the withdrawn license aside");
    }
    if activation.state == ActivationState::Active {
        activation.state = state;
    }
    dir.write_activation(activation)?;
    if let Ok(true) = retired {
        tracing::info!(
            state = activation.state.as_str(),
            kept = %dir.file(REVOKED_LICENSE_FILE).display(),
            "the activation was withdrawn; the license file was moved aside"
        );
    }
    retired.map(|_| ())
}

/// Releases the seat on the server (unless `local_only`), then moves `privitty.lic` aside to
/// `privitty.lic.revoked` and marks `activation.json` deactivated.
pub async fn deactivate(dir: &AccountsDir, local_only: bool) -> Result<(), Error> {
    let d = dir.clone();
    blocking(dir, move || require_activation_file(&d)).await?;
    let lock = dir.lock().await?;
    let d = dir.clone();
    let (mut activation, server) = blocking(dir, move || {
        let activation = d.activation()?.ok_or_else(|| Error::NotActivated {
            dir: d.path().into(),
        })?;
        let server = if local_only {
            None
        } else {
            Some((device_uuid_required(&d)?, delivery_url(&d)?))
        };
        Ok((activation, server))
    })
    .await?;
    if let Some((device_uuid, url)) = server {
        let client = Client::new(&url)?;
        client.deactivate(&device_uuid, &activation.device_secret).await.map_err(|e| match e {
            Error::Refused { host, operation, status, code, message, .. } => Error::Refused {
                host,
                operation,
                status,
                code,
                message,
                hint: "to release this device locally anyway, run `privitty-edge license deactivate --local-only` \
                       and ask your administrator to free the seat",
            },
            other => other,
        })?;
    }
    let d = dir.clone();
    let activation_id = activation.activation_id.clone();
    blocking(dir, move || {
        let _lock: DirLock = lock;
        activation.deactivated_at = Some(rfc3339(SystemTime::now()));
        withdraw(&d, &mut activation, ActivationState::Deactivated)
    })
    .await?;
    tracing::info!(activation_id = %activation_id, local_only, "license deactivated");
    Ok(())
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
