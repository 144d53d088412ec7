//! The server's persistent state: licenses, activations (seats), seen usage `report_id`s and the admin
//! token, kept in `state.json` in the state dir and replaced atomically after every change, so a
//! restart (or a kill) keeps seats. Must not: speak HTTP or sign anything.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error, io_err};

pub const STATE_FILE: &str = "state.json";
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Writes `bytes` to `path` atomically with `mode`: temp file in the same directory, fsync, rename,
/// fsync the directory. Readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(tmp.path(), e))?;
    tmp.write_all(bytes).map_err(|e| io_err(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// One license, as created by `create-license`. Durations are whole seconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct License {
    pub id: String,
    /// The secret part of the delivery URL.
    pub token: String,
    pub seats: u32,
    pub created_at: i64,
    /// Creation time + entitlement.
    pub entitlement_end: i64,
    pub sync_window: i64,
    pub grace: i64,
    pub offline_allowance: i64,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeatState {
    Active,
    Deactivated,
}

/// One device's seat on one license. A deactivated record is kept (for `list-activations` and the
/// `410 deactivated` answer) until the device activates again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Activation {
    pub license_id: String,
    pub device_uuid: String,
    pub activation_id: String,
    /// Kept in clear so a retried activation can hand the same secret back (a client whose earlier
    /// response was lost must still be able to sync); `state.json` is mode 0600.
    pub device_secret: String,
    pub state: SeatState,
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub client_version: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    pub activated_at: i64,
    #[serde(default)]
    pub deactivated_at: Option<i64>,
    #[serde(default)]
    pub last_sync_at: Option<i64>,
    /// Every `seq` received in a sync, in arrival order (shows whether a device's syncs serialize).
    #[serde(default)]
    pub sync_seqs: Vec<u64>,
    /// Usage totals over all accepted reports.
    #[serde(default)]
    pub usage: BTreeMap<String, u64>,
    /// Accepted `report_id`s: a report seen again is acknowledged but not counted twice.
    #[serde(default)]
    pub report_ids: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub admin_token: String,
    #[serde(default)]
    pub licenses: Vec<License>,
    #[serde(default)]
    pub activations: Vec<Activation>,
}

impl State {
    pub fn license_by_token(&self, token: &str) -> Option<&License> {
        self.licenses.iter().find(|l| l.token == token)
    }

    /// A license named by its id or by its TOKEN (admins have either at hand).
    pub fn license_by_id_or_token(&self, key: &str) -> Option<&License> {
        self.licenses.iter().find(|l| l.id == key || l.token == key)
    }

    pub fn activation_mut(&mut self, license_id: &str, device: &str) -> Option<&mut Activation> {
        self.activations
            .iter_mut()
            .find(|a| a.license_id == license_id && a.device_uuid == device)
    }

    pub fn active_seats(&self, license_id: &str) -> usize {
        self.activations
            .iter()
            .filter(|a| a.license_id == license_id && a.state == SeatState::Active)
            .count()
    }
}

/// The state and the file it lives in.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    pub state: State,
}

impl Store {
    /// Loads `state.json`, or starts empty with a fresh admin token; (re)writes `admin-token` (0600).
    pub fn open(state_dir: &Path) -> Result<Store, Error> {
        let path = state_dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::BadState {
                path: path.clone(),
                problem: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                admin_token: super::random_token(32),
                ..State::default()
            },
            Err(e) => return Err(io_err(&path, e)),
        };
        let store = Store { path, state };
        store.save()?;
        write_atomic(
            &state_dir.join(ADMIN_TOKEN_FILE),
            format!("{}\n", store.state.admin_token).as_bytes(),
            0o600,
        )?;
        Ok(store)
    }

    /// Persists the current state; call after every change, before answering.
    pub fn save(&self) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        write_atomic(&self.path, &bytes, 0o600)
    }
}
