//! Status rules (license-protocol.md, "Status, evaluated at every check").
//!
//! Owns: evaluation against a clock with the high-water rule `t = max(now, high_water, iat)`
//! (the `Status`/`Reason` words themselves are in [`crate::vocab`]), the binding of a license to its activation record, and the
//! license as loaded from an accounts directory at one moment.
//! Must not: touch the network, or write anything but the high-water mark
//! (`LoadedLicense::persist_high_water`); `LoadedLicense::load` and `report` only read.
//!
//! Trust boundary: the license's signature is the only thing an attacker who can write the data
//! volume cannot forge, so a license that names an activation (`act`) counts only next to a
//! readable `activation.json` that is `active` for exactly that activation and has not recorded a
//! newer license. Deleting, replacing or rolling back one of the files can therefore only take a
//! license away, never give one back (the files a withdrawal leaves hold no license at all: see
//! [`AccountsDir::retire_license`]). The high-water mark only grows from signed values (`iat`) and
//! the local clock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;

use sha2::{Digest, Sha256};

use crate::accounts::{AccountsDir, Activation, ActivationState, read_sync_state};
use crate::error::Error;
use crate::jwt::{Binding, LicenseClaims};
use crate::keys::TrustedKeys;
use crate::url::DeliveryUrl;
use crate::vocab::{ACTIVATION_FILE, LICENSE_SERVER_FILE, rfc3339_unix, unix_secs};

pub use crate::vocab::{Reason, Status};

/// The result of one check. `expires_at` is the JWT's `sync_by` (grace starts there),
/// `grace_ends_at` its `exp` (sends blocked from there); both are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub status: Status,
    pub reason: Option<Reason>,
    pub expires_at: Option<i64>,
    pub grace_ends_at: Option<i64>,
}

/// Identifies the license content a generation loaded; the supervisor swaps only when it changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LicenseIdentity {
    /// SHA-256 (hex) of the `privitty.lic` bytes.
    pub sha256: String,
    pub jti: String,
    pub iat: i64,
}

/// The license files of an accounts directory as read at one moment (edged reads them once at start-up).
/// Invalid content is not an error: it loads as `no_license` with the reason.
#[derive(Debug)]
pub struct LoadedLicense {
    claims: Option<LicenseClaims>,
    invalid: Option<Reason>,
    identity: Option<LicenseIdentity>,
    /// Highest time seen (unix seconds): starts at `max(activation.json high_water, iat)` and only
    /// grows, except when [`LoadedLicense::persist_high_water`] finds a verified reset.
    high_water: AtomicI64,
    /// The activation the license was loaded with, when `activation.json` existed.
    activation_id: Option<String>,
    /// `activation.json`'s `high_water_epoch` the in-memory mark is relative to.
    epoch: AtomicU64,
}

/// `activation.json` as the status rules see it.
enum Record<'a> {
    Absent,
    /// Present, but not a usable activation record: not a regular file, unreadable, or content
    /// that does not parse.
    Unusable,
    Present(&'a Activation),
}

impl Record<'_> {
    /// The reason when there is no `privitty.lic`: a withdrawal the device has seen moved it aside,
    /// and says so; otherwise nothing was installed.
    fn reason_without_license(&self) -> Reason {
        match self {
            Record::Present(a) if a.state == ActivationState::Revoked => Reason::Revoked,
            Record::Present(a) if a.state == ActivationState::Deactivated => Reason::Deactivated,
            _ => Reason::NotActivated,
        }
    }
}

/// Why a verified license is not usable with this activation record (`None`: it is).
fn binding_problem(claims: &LicenseClaims, record: &Record<'_>) -> Option<Reason> {
    match (claims.act.as_deref(), record) {
        // File-drop provisioning: a license issued without an activation stands alone.
        (None, Record::Absent) => None,
        // The protocol binds `act` to activation.json "when that file exists", in whatever form.
        (None, Record::Unusable | Record::Present(_)) => Some(Reason::ActivationMismatch),
        (Some(_), Record::Absent | Record::Unusable) => Some(Reason::ActivationMissing),
        (Some(act), Record::Present(a)) if a.activation_id != act => {
            Some(Reason::ActivationMismatch)
        }
        (Some(_), Record::Present(a)) => match a.state {
            ActivationState::Deactivated => Some(Reason::Deactivated),
            ActivationState::Revoked => Some(Reason::Revoked),
            // A license older than the one the activation committed is a copy put back.
            ActivationState::Active if a.lic_iat.is_some_and(|iat| iat > claims.iat) => {
                Some(Reason::ActivationMismatch)
            }
            ActivationState::Active => None,
        },
    }
}

impl LoadedLicense {
    /// Reads `privitty.lic`, `device.uuid` and `activation.json` and verifies the license.
    /// Errors only when `privitty.lic` or `device.uuid` cannot be read (I/O other than "not
    /// found"); unusable content loads as `no_license` with the reason: a corrupt `device.uuid` as
    /// `wrong_device`, an `activation.json` that is unreadable or not a regular file as
    /// `activation_missing` (when the license names an activation).
    pub fn load(dir: &AccountsDir, keys: &TrustedKeys) -> Result<LoadedLicense, Error> {
        let activation = dir.activation();
        let record = match &activation {
            Ok(None) => Record::Absent,
            Ok(Some(a)) => Record::Present(a),
            Err(e) => {
                tracing::debug!(error = %e, "activation.json is not usable");
                Record::Unusable
            }
        };
        let bytes = match dir.read_license()? {
            None => return Ok(LoadedLicense::invalid(record.reason_without_license())),
            Some(Err(())) => return Ok(LoadedLicense::invalid(Reason::Corrupt)),
            Some(Ok(b)) => b,
        };
        let device_uuid = match dir.device_uuid() {
            Ok(d) => d,
            Err(Error::CorruptFile { .. } | Error::NotRegularFile { .. }) => {
                return Ok(LoadedLicense::invalid(Reason::WrongDevice));
            }
            Err(e) => return Err(e),
        };
        Ok(LoadedLicense::verify(
            &bytes,
            device_uuid.as_deref(),
            &record,
            keys,
        ))
    }

    /// Verifies license bytes against the given binding (what [`LoadedLicense::load`] read);
    /// `activation` is `None` when `activation.json` does not exist.
    pub fn from_parts(
        license: &[u8],
        device_uuid: Option<&str>,
        activation: Option<&Activation>,
        keys: &TrustedKeys,
    ) -> LoadedLicense {
        let record = match activation {
            Some(a) => Record::Present(a),
            None => Record::Absent,
        };
        LoadedLicense::verify(license, device_uuid, &record, keys)
    }

    fn verify(
        license: &[u8],
        device_uuid: Option<&str>,
        record: &Record<'_>,
        keys: &TrustedKeys,
    ) -> LoadedLicense {
        let Ok(text) = std::str::from_utf8(license) else {
            return LoadedLicense::invalid(Reason::Corrupt);
        };
        let Some(device_uuid) = device_uuid else {
            return LoadedLicense::invalid(Reason::WrongDevice);
        };
        // The activation is checked below, with its own reasons, so the JWT check binds the
        // device only.
        let binding = Binding {
            device_uuid,
            activation_id: None,
        };
        let claims = match crate::jwt::verify(text, keys, &binding) {
            Ok(c) => c,
            Err(reason) => return LoadedLicense::invalid(reason),
        };
        let problem = binding_problem(&claims, record);
        // Only the record of this very activation carries its high-water mark and epoch.
        let own = match record {
            Record::Present(a) if claims.act.as_deref() == Some(a.activation_id.as_str()) => {
                Some(*a)
            }
            _ => None,
        };
        let high_water = own.map_or(i64::MIN, |a| a.high_water).max(claims.iat);
        let identity = LicenseIdentity {
            sha256: hex::encode(Sha256::digest(license)),
            jti: claims.jti.clone(),
            iat: claims.iat,
        };
        LoadedLicense {
            identity: problem.is_none().then_some(identity),
            invalid: problem,
            claims: Some(claims),
            high_water: AtomicI64::new(high_water),
            activation_id: own.map(|a| a.activation_id.clone()),
            epoch: AtomicU64::new(own.map_or(0, |a| a.high_water_epoch)),
        }
    }

    fn invalid(reason: Reason) -> LoadedLicense {
        LoadedLicense {
            claims: None,
            invalid: Some(reason),
            identity: None,
            high_water: AtomicI64::new(i64::MIN),
            activation_id: None,
            epoch: AtomicU64::new(0),
        }
    }

    /// Evaluates the status at `now`, advancing the in-memory high-water mark.
    pub fn evaluate(&self, now: SystemTime) -> Evaluation {
        let now = unix_secs(now);
        let previous = self.high_water.fetch_max(now, Ordering::Relaxed);
        let t = previous.max(now);
        let Some(claims) = &self.claims else {
            return Evaluation {
                status: Status::NoLicense,
                reason: Some(self.invalid.unwrap_or(Reason::NotActivated)),
                expires_at: None,
                grace_ends_at: None,
            };
        };
        let (status, reason) = match self.invalid {
            Some(reason) => (Status::NoLicense, Some(reason)),
            None => (rule(t.max(claims.iat), claims), None),
        };
        Evaluation {
            status,
            reason,
            expires_at: Some(claims.sync_by),
            grace_ends_at: Some(claims.exp),
        }
    }

    pub fn claims(&self) -> Option<&LicenseClaims> {
        self.claims.as_ref()
    }

    /// Why the license is not usable regardless of time (invalid file, deactivated, revoked, no
    /// matching activation).
    pub fn invalid_reason(&self) -> Option<Reason> {
        self.invalid
    }

    /// `None` when there is no valid license (or its activation is deactivated/revoked, missing
    /// or another one).
    pub fn identity(&self) -> Option<&LicenseIdentity> {
        self.identity.as_ref()
    }

    /// The in-memory high-water mark (unix seconds), for persisting. `i64::MIN` without a license.
    pub fn high_water(&self) -> i64 {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Writes the in-memory high-water mark into `dir`'s `activation.json` when it is ahead of the
    /// stored one. For long-running processes: at most every 15 min and at shutdown. Blocking (the
    /// directory lock and fsync): call it from `spawn_blocking` in async code.
    ///
    /// When a verified activate/sync reset the stored mark after this license was loaded (its
    /// `high_water_epoch` moved on), the in-memory mark still holds readings from before the reset
    /// (a clock that was wrong then, say): writing it would undo the reset. The in-memory mark is
    /// then rebased on the reset mark and the present clock instead, so the running process follows
    /// the reset too. Without a reset, readings ahead of the present clock (it was set back since)
    /// are written in full. Nothing is written without a usable license file, without
    /// `activation.json`, or when `activation.json` now holds another activation.
    pub fn persist_high_water(&self, dir: &AccountsDir) -> Result<(), Error> {
        let (Some(claims), Some(activation_id)) = (&self.claims, &self.activation_id) else {
            return Ok(());
        };
        if !dir.file(ACTIVATION_FILE).exists() {
            return Ok(());
        }
        let _lock = dir.lock_blocking()?;
        let Some(mut stored) = dir.activation()? else {
            return Ok(());
        };
        if stored.activation_id != *activation_id {
            return Ok(());
        }
        if stored.high_water_epoch != self.epoch.load(Ordering::Relaxed) {
            let rebased = stored
                .high_water
                .max(unix_secs(SystemTime::now()))
                .max(claims.iat);
            self.high_water.store(rebased, Ordering::Relaxed);
            self.epoch.store(stored.high_water_epoch, Ordering::Relaxed);
            tracing::info!(
                high_water = rebased,
                epoch = stored.high_water_epoch,
                "high-water mark follows the reset of a license sync"
            );
        }
        let high_water = self.high_water();
        if high_water <= stored.high_water {
            return Ok(());
        }
        stored.high_water = high_water;
        dir.write_activation(&stored)
    }
}

/// Whether start-up activation (privitty-init with a delivery URL) has work to do: there is no
/// `activation.json` in any form, and no license that is usable on its own (file-drop
/// provisioning) is installed. A license left by an activation interrupted before its commit
/// record names an activation that is missing, so it needs the activation (which is idempotent);
/// a device whose activation was deactivated or revoked keeps its record and is not activated
/// again behind the operator's back. Blocking (bounded reads): async callers use `spawn_blocking`.
pub fn needs_activation(dir: &AccountsDir, keys: &TrustedKeys) -> bool {
    if std::fs::symlink_metadata(dir.file(ACTIVATION_FILE)).is_ok() {
        return false;
    }
    // Unreadable files: the activation reports what is wrong with them.
    LoadedLicense::load(dir, keys).map_or(true, |l| l.identity().is_none())
}

/// The time rules of the status table, at `t` (already `max(now, high_water, iat)`).
fn rule(t: i64, claims: &LicenseClaims) -> Status {
    if t >= claims.exp {
        Status::Expired
    } else if t >= claims.sync_by {
        Status::GracePeriod
    } else {
        Status::Active
    }
}

/// Everything `privitty-edge license status [--json]` shows.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub status: Status,
    pub reason: Option<Reason>,
    pub license_id: Option<String>,
    pub customer: Option<String>,
    pub features: Vec<String>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    pub grace_ends_at: Option<String>,
    pub device_uuid: Option<String>,
    pub activation_id: Option<String>,
    /// Redacted delivery URL.
    pub license_server: Option<String>,
    pub last_sync_ok_at: Option<String>,
    pub last_sync_error: Option<String>,
    /// The last definitive refusal of an activation (e.g. `seat_limit`), until one succeeds.
    pub last_activation_error: Option<String>,
}

/// Reads the directory and builds the report (reads only, never writes). An `activation.json` or
/// `device.uuid` that is corrupt or not a regular file is an error here (the operator must repair
/// it; the message says how), while [`LoadedLicense::load`] reports it as `no_license`. Blocking
/// (small bounded reads that never wait on a FIFO): async callers use `spawn_blocking`.
pub fn report(
    dir: &AccountsDir,
    keys: &TrustedKeys,
    now: SystemTime,
) -> Result<StatusReport, Error> {
    let activation = dir.activation()?;
    let record = match &activation {
        Some(a) => Record::Present(a),
        None => Record::Absent,
    };
    let device_uuid = dir.device_uuid()?;
    let loaded = match dir.read_license()? {
        None => LoadedLicense::invalid(record.reason_without_license()),
        Some(Err(())) => LoadedLicense::invalid(Reason::Corrupt),
        Some(Ok(bytes)) => LoadedLicense::verify(&bytes, device_uuid.as_deref(), &record, keys),
    };
    let eval = loaded.evaluate(now);
    // Informational: a damaged copy of the URL must not hide the status (sync reports it).
    let license_server = match dir.license_server() {
        Ok(text) => text.map(|text| match DeliveryUrl::parse(&text) {
            Ok(url) => url.redacted(),
            Err(_) => "(not a valid delivery URL)".to_string(),
        }),
        Err(_) => Some(format!("(unreadable {LICENSE_SERVER_FILE})")),
    };
    let sync_state = read_sync_state(dir);
    let claims = loaded.claims();
    Ok(StatusReport {
        status: eval.status,
        reason: eval.reason,
        license_id: claims.map(|c| c.sub.clone()),
        customer: claims.and_then(|c| c.customer.clone()),
        features: claims.map(|c| c.features.clone()).unwrap_or_default(),
        expires_at: eval.expires_at.map(rfc3339_unix),
        grace_ends_at: eval.grace_ends_at.map(rfc3339_unix),
        device_uuid,
        activation_id: activation.as_ref().map(|a| a.activation_id.clone()),
        license_server,
        last_sync_ok_at: activation.as_ref().and_then(|a| a.last_sync_ok_at.clone()),
        last_activation_error: sync_state
            .as_ref()
            .and_then(|s| s.last_activation_error.clone()),
        last_sync_error: sync_state
            .and_then(|s| s.last_sync_error)
            .or_else(|| activation.as_ref().and_then(|a| a.last_sync_error.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{ACTIVATION_FILE, DEVICE_UUID_FILE, LICENSE_FILE};
    use crate::jwt::tests::{ACT, DEV, claims, new_key, trusted};
    use std::time::Duration;

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn activation(state: ActivationState, high_water: i64) -> Activation {
        Activation {
            activation_id: ACT.into(),
            device_secret: "s".into(),
            state,
            lic_jti: None,
            lic_iat: None,
            seq: 0,
            high_water,
            high_water_epoch: 0,
            last_sync_ok_at: None,
            last_sync_error: None,
            activated_at: None,
            deactivated_at: None,
            extra: Default::default(),
        }
    }

    /// A directory with a license valid 1000..(sync_by 2000)..(exp 3000).
    fn setup(activation: Option<Activation>) -> (tempfile::TempDir, AccountsDir, TrustedKeys) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        let key = new_key();
        std::fs::write(tmp.path().join(DEVICE_UUID_FILE), format!("{DEV}\n")).unwrap();
        std::fs::write(
            tmp.path().join(LICENSE_FILE),
            crate::jwt::sign(&claims(1000, 2000, 3000), &key),
        )
        .unwrap();
        if let Some(a) = activation {
            dir.write_activation(&a).unwrap();
        }
        (tmp, dir, trusted(&key))
    }

    /// A directory with a license issued offline (no `act`), valid 1000..2000..3000.
    fn setup_offline() -> (tempfile::TempDir, AccountsDir, TrustedKeys) {
        let (tmp, dir, _) = setup(None);
        let key = new_key();
        let mut c = claims(1000, 2000, 3000);
        c.act = None;
        std::fs::write(tmp.path().join(LICENSE_FILE), crate::jwt::sign(&c, &key)).unwrap();
        (tmp, dir, trusted(&key))
    }

    fn reason_of(dir: &AccountsDir, keys: &TrustedKeys) -> Option<Reason> {
        LoadedLicense::load(dir, keys)
            .unwrap()
            .evaluate(at(1500))
            .reason
    }

    #[test]
    fn active_then_grace_period_then_expired() {
        let (_tmp, dir, keys) = setup(Some(activation(ActivationState::Active, 0)));
        let lic = LoadedLicense::load(&dir, &keys).unwrap();
        assert!(lic.identity().is_some());
        let e = lic.evaluate(at(1500));
        assert_eq!(
            (e.status, e.reason, e.expires_at, e.grace_ends_at),
            (Status::Active, None, Some(2000), Some(3000))
        );
        assert_eq!(lic.evaluate(at(1999)).status, Status::Active);
        assert_eq!(lic.evaluate(at(2000)).status, Status::GracePeriod);
        assert_eq!(lic.evaluate(at(2999)).status, Status::GracePeriod);
        assert_eq!(lic.evaluate(at(3000)).status, Status::Expired);
        assert!(!Status::Expired.allows_gated() && Status::GracePeriod.allows_gated());
    }

    #[test]
    fn clock_set_back_never_extends_the_license() {
        let (_tmp, dir, keys) = setup(Some(activation(ActivationState::Active, 0)));
        let lic = LoadedLicense::load(&dir, &keys).unwrap();
        assert_eq!(lic.evaluate(at(2500)).status, Status::GracePeriod);
        assert_eq!(lic.high_water(), 2500);
        assert_eq!(
            lic.evaluate(at(1200)).status,
            Status::GracePeriod,
            "rolled back clock"
        );
        assert_eq!(lic.high_water(), 2500);
        // A clock before the license was issued counts as its issue time.
        let (_tmp, dir, keys) = setup_offline();
        let lic = LoadedLicense::load(&dir, &keys).unwrap();
        assert_eq!(lic.high_water(), 1000);
        assert_eq!(lic.evaluate(at(5)).status, Status::Active);
        // The persisted high-water mark applies from load on.
        let (_tmp, dir, keys) = setup(Some(activation(ActivationState::Active, 3100)));
        let lic = LoadedLicense::load(&dir, &keys).unwrap();
        assert_eq!(lic.evaluate(at(1500)).status, Status::Expired);
    }

    #[test]
    fn no_license_reasons() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        let e = LoadedLicense::load(&dir, &TrustedKeys::default())
            .unwrap()
            .evaluate(at(1500));
        assert_eq!(
            (e.status, e.reason),
            (Status::NoLicense, Some(Reason::NotActivated))
        );

        for (state, reason) in [
            (ActivationState::Deactivated, Reason::Deactivated),
            (ActivationState::Revoked, Reason::Revoked),
        ] {
            let (_tmp, dir, keys) = setup(Some(activation(state, 0)));
            let lic = LoadedLicense::load(&dir, &keys).unwrap();
            let e = lic.evaluate(at(1500));
            assert_eq!((e.status, e.reason), (Status::NoLicense, Some(reason)));
            assert!(lic.identity().is_none() && lic.claims().is_some());
        }

        let (_tmp, dir, _keys) = setup(None);
        let e = LoadedLicense::load(&dir, &TrustedKeys::default())
            .unwrap()
            .evaluate(at(1500));
        assert_eq!(e.reason, Some(Reason::UntrustedKey));

        let (tmp, dir, keys) = setup(None);
        std::fs::write(
            tmp.path().join(DEVICE_UUID_FILE),
            "9b2a4a39-52f9-4a8e-9b5d-0123456789ab\n",
        )
        .unwrap();
        assert_eq!(
            LoadedLicense::load(&dir, &keys)
                .unwrap()
                .evaluate(at(1500))
                .reason,
            Some(Reason::WrongDevice)
        );
        std::fs::remove_file(tmp.path().join(DEVICE_UUID_FILE)).unwrap();
        assert_eq!(
            LoadedLicense::load(&dir, &keys)
                .unwrap()
                .evaluate(at(1500))
                .reason,
            Some(Reason::WrongDevice)
        );

        let (tmp, dir, keys) = setup(None);
        std::fs::write(tmp.path().join(ACTIVATION_FILE), "{broken").unwrap();
        assert_eq!(
            LoadedLicense::load(&dir, &keys)
                .unwrap()
                .evaluate(at(1500))
                .reason,
            Some(Reason::ActivationMissing)
        );
        assert_eq!(
            report(&dir, &keys, at(1500)).unwrap_err().kind(),
            crate::ErrorKind::LocalFiles
        );

        let (tmp, dir, keys) = setup(None);
        let real = tmp.path().join("elsewhere.lic");
        std::fs::rename(dir.license_path(), &real).unwrap();
        std::os::unix::fs::symlink(&real, dir.license_path()).unwrap();
        assert_eq!(
            LoadedLicense::load(&dir, &keys)
                .unwrap()
                .evaluate(at(1500))
                .reason,
            Some(Reason::Corrupt)
        );
    }

    #[test]
    fn a_license_with_act_is_usable_only_with_its_active_activation() {
        let (_tmp, dir, keys) = setup(Some(activation(ActivationState::Active, 0)));
        assert_eq!(reason_of(&dir, &keys), None);

        // activation.json moved out of the volume
        let (tmp, dir, keys) = setup(None);
        assert_eq!(reason_of(&dir, &keys), Some(Reason::ActivationMissing));
        let r = report(&dir, &keys, at(1500)).unwrap();
        assert_eq!(
            (r.status, r.reason),
            (Status::NoLicense, Some(Reason::ActivationMissing))
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap()["reason"],
            "activation_missing"
        );

        // another activation's record, a record that committed a newer license
        let mut other = activation(ActivationState::Active, 0);
        other.activation_id = "act-2".into();
        dir.write_activation(&other).unwrap();
        assert_eq!(reason_of(&dir, &keys), Some(Reason::ActivationMismatch));
        let mut newer = activation(ActivationState::Active, 0);
        newer.lic_iat = Some(1001);
        dir.write_activation(&newer).unwrap();
        assert_eq!(reason_of(&dir, &keys), Some(Reason::ActivationMismatch));
        assert_eq!(
            report(&dir, &keys, at(1500)).unwrap().reason,
            Some(Reason::ActivationMismatch)
        );
        newer.lic_iat = Some(1000);
        dir.write_activation(&newer).unwrap();
        assert_eq!(reason_of(&dir, &keys), None);

        // not a regular file: a symlink to a valid record, a directory, a FIFO (never blocks)
        let elsewhere = tmp.path().join("elsewhere.json");
        std::fs::rename(dir.file(ACTIVATION_FILE), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.file(ACTIVATION_FILE)).unwrap();
        assert_eq!(reason_of(&dir, &keys), Some(Reason::ActivationMissing));
        let e = report(&dir, &keys, at(1500)).unwrap_err();
        assert!(
            e.to_string().contains("symlink") && e.to_string().contains(ACTIVATION_FILE),
            "{e}"
        );
        std::fs::remove_file(dir.file(ACTIVATION_FILE)).unwrap();
        std::fs::create_dir(dir.file(ACTIVATION_FILE)).unwrap();
        assert_eq!(reason_of(&dir, &keys), Some(Reason::ActivationMissing));
        std::fs::remove_dir(dir.file(ACTIVATION_FILE)).unwrap();
        nix::unistd::mkfifo(&dir.file(ACTIVATION_FILE), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(reason_of(&dir, &keys), Some(Reason::ActivationMissing));
        let e = report(&dir, &keys, at(1500)).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");

        // an offline license stands alone, but not beside an activation record
        let (_tmp, dir, keys) = setup_offline();
        assert_eq!(reason_of(&dir, &keys), None);
        dir.write_activation(&activation(ActivationState::Active, 0))
            .unwrap();
        assert_eq!(reason_of(&dir, &keys), Some(Reason::ActivationMismatch));
    }

    #[test]
    fn a_withdrawn_activation_without_its_license_says_why() {
        for (state, reason) in [
            (ActivationState::Revoked, Reason::Revoked),
            (ActivationState::Deactivated, Reason::Deactivated),
            (ActivationState::Active, Reason::NotActivated),
        ] {
            let (_tmp, dir, keys) = setup(Some(activation(state, 0)));
            assert!(dir.retire_license().unwrap());
            assert!(!dir.retire_license().unwrap(), "nothing left to move");
            assert!(dir.file(crate::accounts::REVOKED_LICENSE_FILE).is_file());
            assert_eq!(reason_of(&dir, &keys), Some(reason));
            assert_eq!(report(&dir, &keys, at(1500)).unwrap().reason, Some(reason));
        }
    }

    #[test]
    fn start_up_activation_is_needed_only_without_a_record_or_a_standalone_license() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(needs_activation(
            &AccountsDir::new(tmp.path()),
            &TrustedKeys::default()
        ));
        // An activation interrupted after privitty.lic, before activation.json.
        let (_tmp, dir, keys) = setup(None);
        assert!(needs_activation(&dir, &keys));
        // File-drop provisioning.
        let (_tmp, dir, keys) = setup_offline();
        assert!(!needs_activation(&dir, &keys));
        // Any record, whatever its state or form: the operator decides.
        for state in [ActivationState::Active, ActivationState::Deactivated] {
            let (_tmp, dir, keys) = setup(Some(activation(state, 0)));
            dir.retire_license().unwrap();
            assert!(!needs_activation(&dir, &keys));
        }
        let (_tmp, dir, keys) = setup(None);
        std::fs::create_dir(dir.file(ACTIVATION_FILE)).unwrap();
        assert!(!needs_activation(&dir, &keys));
    }

    #[test]
    fn the_new_reasons_have_their_words() {
        assert_eq!(Reason::ActivationMissing.as_str(), "activation_missing");
        assert_eq!(Reason::ActivationMismatch.as_str(), "activation_mismatch");
        for r in [Reason::ActivationMissing, Reason::ActivationMismatch] {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
    }

    #[test]
    fn report_survives_times_that_rfc3339_cannot_show() {
        // "Never expires" as JavaScript's largest safe integer, and a license issued before 1970.
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        let key = new_key();
        std::fs::write(tmp.path().join(DEVICE_UUID_FILE), format!("{DEV}\n")).unwrap();
        for (iat, sync_by, exp) in [
            (1000, 9_007_199_254_740_990, 9_007_199_254_740_991),
            (1000, 2000, i64::MAX),
            (-5000, -4000, 3000),
        ] {
            let mut c = claims(iat, sync_by, exp);
            c.act = None;
            std::fs::write(tmp.path().join(LICENSE_FILE), crate::jwt::sign(&c, &key)).unwrap();
            let r = report(&dir, &trusted(&key), at(1500)).unwrap();
            assert!(
                r.status.allows_gated() || r.status == Status::Expired,
                "{r:?}"
            );
            for shown in [&r.expires_at, &r.grace_ends_at] {
                let shown = shown.as_deref().unwrap();
                assert!(humantime::parse_rfc3339(shown).is_ok(), "{shown}");
            }
        }
    }

    #[test]
    fn report_shows_details_with_the_url_redacted() {
        let mut a = activation(ActivationState::Active, 0);
        a.last_sync_ok_at = Some(crate::accounts::rfc3339_unix(1400));
        let (_tmp, dir, keys) = setup(Some(a));
        dir.write_atomic(
            crate::accounts::LICENSE_SERVER_FILE,
            b"https://lic.example/v1/license/SECRET-TOKEN-123\n",
            0o600,
        )
        .unwrap();
        let r = report(&dir, &keys, at(1500)).unwrap();
        assert_eq!(r.status, Status::Active);
        assert_eq!(r.license_id.as_deref(), Some("lic-42"));
        assert_eq!(r.customer.as_deref(), Some("ACME"));
        assert_eq!(r.expires_at.as_deref(), Some("1970-01-01T00:33:20Z"));
        assert_eq!(r.grace_ends_at.as_deref(), Some("1970-01-01T00:50:00Z"));
        assert_eq!(r.device_uuid.as_deref(), Some(DEV));
        assert_eq!(r.activation_id.as_deref(), Some(ACT));
        assert_eq!(
            r.license_server.as_deref(),
            Some("https://lic.example/v1/license/SEC…(redacted)")
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("SECRET-TOKEN-123"));
        assert!(json.contains(r#""status":"active""#), "{json}");
    }
}
