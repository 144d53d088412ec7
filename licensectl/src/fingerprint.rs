//! The device fingerprint a local viewer presents to `POST /auth` (edged's viewer API): what it is
//! made of, where it is stored, and reading it back.
//!
//! Owns: the formula, the file `<accounts>/device.fingerprint` (0600, created once at first boot by
//! privitty-edged or by `privitty-edge device-fingerprint`, whichever runs first, and never
//! recomputed: a container gets a new MAC address when it is re-created, and viewers set up with
//! the fingerprint must keep working), and finding the inputs on the host. Must not: decide who
//! may view (edged does), or print the fingerprint anywhere but the CLI's standard output.
//!
//! The formula: `SHA-256("<mac>\n<machine>")` as 64 lowercase hex digits, where
//! - `<mac>` is the primary MAC address (the interface of the default route, else the first
//!   interface by name that is not loopback), lowercase with colons, or empty when there is none;
//! - `<machine>` is the machine id (`/etc/machine-id`, else `/var/lib/dbus/machine-id`: 32 lowercase
//!   hex digits), or, where there is none (a container), `device:<device.uuid>`: the device identity
//!   the license is bound to. A MAC address alone is never used, since it is easy to guess.
//!
//! Trust boundary: the host files are read size-capped and validated; the stored file lives in the
//! untrusted data volume and is read like every license file there (no symlink, no FIFO, capped).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::accounts::{AccountsDir, read_optional};
use crate::error::Error;

/// The fingerprint's file in the accounts directory.
pub const FINGERPRINT_FILE: &str = "device.fingerprint";
/// Where the machine id is looked for, in order.
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// What a fingerprint was computed from (reported when it is created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// The primary MAC address and the machine id (a host, or a container given the host's id).
    MacAndMachineId,
    /// The machine id alone (no interface with a MAC address).
    MachineId,
    /// The primary MAC address and the device identity (no machine id: most containers).
    MacAndDeviceId,
    /// The device identity alone.
    DeviceId,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::MacAndMachineId => "mac+machine-id",
            Basis::MachineId => "machine-id",
            Basis::MacAndDeviceId => "mac+device-uuid",
            Basis::DeviceId => "device-uuid",
        }
    }
}

/// Where the host's identifiers are read (the real paths, or a test's).
#[derive(Clone, Debug)]
pub struct HostSources {
    /// `/sys/class/net`: one directory per interface, with `address`.
    pub net_dir: PathBuf,
    /// `/proc/net/route`: names the default route's interface.
    pub route_file: PathBuf,
    pub machine_id_files: Vec<PathBuf>,
}

impl HostSources {
    pub fn system() -> HostSources {
        HostSources {
            net_dir: PathBuf::from("/sys/class/net"),
            route_file: PathBuf::from("/proc/net/route"),
            machine_id_files: MACHINE_ID_FILES.iter().map(PathBuf::from).collect(),
        }
    }

    /// The primary MAC address: the default route's interface, else the first interface by name
    /// with a non-zero address that is not loopback.
    pub fn primary_mac(&self) -> Option<String> {
        let mac_of = |iface: &str| {
            if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
                return None;
            }
            small_text(&self.net_dir.join(iface).join("address")).and_then(|a| normalize_mac(&a))
        };
        if let Some(mac) = default_route_interface(&self.route_file).and_then(|i| mac_of(&i)) {
            return Some(mac);
        }
        let mut names: Vec<String> = std::fs::read_dir(&self.net_dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        names.iter().find_map(|n| mac_of(n))
    }

    /// The machine id (32 lowercase hex digits), from the first file that holds a valid one.
    pub fn machine_id(&self) -> Option<String> {
        self.machine_id_files.iter().find_map(|p| {
            let id = small_text(p)?.trim().to_ascii_lowercase();
            (id.len() == 32
                && id.bytes().all(|b| b.is_ascii_hexdigit())
                && id.bytes().any(|b| b != b'0'))
            .then_some(id)
        })
    }
}

/// A text file of at most 4 KiB (host files: `/sys`, `/proc`, `/etc`), `None` when unreadable.
fn small_text(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text).ok()?;
    Some(text)
}

/// `aa:bb:cc:dd:ee:ff` in lowercase; `None` for anything else or the all-zero address.
fn normalize_mac(text: &str) -> Option<String> {
    let mac = text.trim().to_ascii_lowercase();
    let parts: Vec<&str> = mac.split(':').collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    (valid && parts.iter().any(|p| *p != "00")).then_some(mac)
}

/// The interface of the default route (destination 0.0.0.0, mask 0, up) in `/proc/net/route`.
fn default_route_interface(route_file: &Path) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    let text = small_text(route_file)?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000") && flags & RTF_UP != 0)
            .then(|| f[0].to_string())
    })
}

/// The fingerprint of these inputs (see the module doc for the formula).
pub fn compute(mac: Option<&str>, machine_id: Option<&str>, device_uuid: &str) -> (String, Basis) {
    let basis = match (mac.is_some(), machine_id.is_some()) {
        (true, true) => Basis::MacAndMachineId,
        (false, true) => Basis::MachineId,
        (true, false) => Basis::MacAndDeviceId,
        (false, false) => Basis::DeviceId,
    };
    let machine = match machine_id {
        Some(id) => id.to_string(),
        None => format!("device:{device_uuid}"),
    };
    let input = format!("{}\n{machine}", mac.unwrap_or(""));
    (hex::encode(Sha256::digest(input.as_bytes())), basis)
}

/// Whether `text` is a fingerprint: 64 lowercase hex digits.
pub fn is_valid(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The stored fingerprint (`None` when not created yet).
pub fn read(dir: &AccountsDir) -> Result<Option<String>, Error> {
    let path = dir.file(FINGERPRINT_FILE);
    let Some(bytes) = read_optional(&path, 1024)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    if !is_valid(&text) {
        return Err(Error::CorruptFile {
            path,
            problem: "it does not hold 64 lowercase hex digits".into(),
            remedy: "delete it and run `privitty-edge device-fingerprint` to store a new one (viewers set up with the old one must then be given the new one)",
        });
    }
    Ok(Some(text))
}

/// A fingerprint and whether this call stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub fingerprint: String,
    /// `Some` when this call computed and stored it.
    pub created: Option<Basis>,
}

/// The stored fingerprint, computing and storing it (0600, atomically) when it does not exist yet.
/// Without a machine id it needs the device identity, which is then created like `license
/// device-id` does (never while an activation depends on a missing one).
///
/// The license lock is not taken for the fingerprint itself: an activation holds that lock across
/// its request to the license server, and privitty-edged's start must not wait for one. Two first
/// boots racing here (privitty-edged and the CLI) compute the same value from the same host, so
/// whichever rename lands last writes the same bytes.
pub fn ensure(dir: &AccountsDir, host: &HostSources) -> Result<Stored, Error> {
    if let Some(fingerprint) = read(dir)? {
        return Ok(Stored {
            fingerprint,
            created: None,
        });
    }
    dir.create()?;
    let mac = host.primary_mac();
    let machine_id = host.machine_id();
    let device = match machine_id {
        Some(_) => String::new(),
        None => dir.ensure_device_uuid()?,
    };
    let (fingerprint, basis) = compute(mac.as_deref(), machine_id.as_deref(), &device);
    dir.write_atomic(
        FINGERPRINT_FILE,
        format!("{fingerprint}\n").as_bytes(),
        0o600,
    )?;
    tracing::info!(basis = basis.as_str(), dir = %dir.path().display(), "stored the device fingerprint");
    Ok(Stored {
        fingerprint,
        created: Some(basis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dir: &Path) -> HostSources {
        HostSources {
            net_dir: dir.join("net"),
            route_file: dir.join("route"),
            machine_id_files: vec![dir.join("machine-id"), dir.join("dbus-machine-id")],
        }
    }

    fn iface(dir: &Path, name: &str, mac: &str) {
        let d = dir.join("net").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
    }

    const ROUTE_HEAD: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    #[test]
    fn the_formula_is_sha256_of_mac_newline_machine() {
        let (fp, basis) = compute(
            Some("02:42:ac:11:00:02"),
            Some("0123456789abcdef0123456789abcdef"),
            "ignored",
        );
        assert_eq!(basis, Basis::MacAndMachineId);
        assert_eq!(
            fp,
            hex::encode(Sha256::digest(
                b"02:42:ac:11:00:02\n0123456789abcdef0123456789abcdef"
            ))
        );
        let uuid = "7b0c3c2e-9f1c-4c55-8f0e-2b1d0c4a5e6f";
        let (fp2, basis) = compute(Some("02:42:ac:11:00:02"), None, uuid);
        assert_eq!(basis, Basis::MacAndDeviceId);
        assert_eq!(
            fp2,
            hex::encode(Sha256::digest(format!("02:42:ac:11:00:02\ndevice:{uuid}")))
        );
        let (fp3, basis) = compute(None, None, uuid);
        assert_eq!(basis, Basis::DeviceId);
        assert_ne!(fp2, fp3);
        assert!(is_valid(&fp) && is_valid(&fp2) && is_valid(&fp3));
    }

    #[test]
    fn primary_mac_prefers_the_default_route_then_names_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let h = host(tmp.path());
        assert_eq!(h.primary_mac(), None, "no interfaces");
        iface(tmp.path(), "lo", "00:00:00:00:00:00");
        iface(tmp.path(), "eth1", "AA:BB:CC:DD:EE:01");
        iface(tmp.path(), "eth0", "00:00:00:00:00:00");
        iface(tmp.path(), "wlan0", "aa:bb:cc:dd:ee:02");
        assert_eq!(h.primary_mac().as_deref(), Some("aa:bb:cc:dd:ee:01"));
        std::fs::write(
            tmp.path().join("route"),
            format!(
                "{ROUTE_HEAD}wlan0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\nwlan0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
            ),
        )
        .unwrap();
        assert_eq!(h.primary_mac().as_deref(), Some("aa:bb:cc:dd:ee:02"));
    }

    #[test]
    fn machine_id_is_validated_and_falls_back_to_dbus() {
        let tmp = tempfile::tempdir().unwrap();
        let h = host(tmp.path());
        assert_eq!(h.machine_id(), None);
        std::fs::write(tmp.path().join("machine-id"), "uninitialized\n").unwrap();
        std::fs::write(
            tmp.path().join("dbus-machine-id"),
            "0123456789ABCDEF0123456789ABCDEF\n",
        )
        .unwrap();
        assert_eq!(
            h.machine_id().as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn stored_once_mode_0600_and_never_recomputed() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let dir = AccountsDir::new(&data);
        let h = host(tmp.path());
        iface(tmp.path(), "eth0", "02:42:ac:11:00:02");
        // No machine id: the device identity is created and used.
        let first = ensure(&dir, &h).unwrap();
        assert_eq!(first.created, Some(Basis::MacAndDeviceId));
        let uuid = dir.device_uuid().unwrap().expect("device.uuid created");
        assert_eq!(
            first.fingerprint,
            compute(Some("02:42:ac:11:00:02"), None, &uuid).0
        );
        let mode = std::fs::metadata(data.join(FINGERPRINT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A new MAC (a re-created container) changes nothing.
        iface(tmp.path(), "eth0", "02:42:ac:11:00:09");
        let again = ensure(&dir, &h).unwrap();
        assert_eq!(again.fingerprint, first.fingerprint);
        assert_eq!(again.created, None);
        // A damaged file is reported with what to do, not silently replaced.
        std::fs::write(data.join(FINGERPRINT_FILE), "nonsense\n").unwrap();
        let err = ensure(&dir, &h).unwrap_err().to_string();
        assert!(err.contains("device-fingerprint"), "{err}");
    }

    #[test]
    fn a_planted_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::write(&elsewhere, format!("{}\n", "a".repeat(64))).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join(FINGERPRINT_FILE)).unwrap();
        assert!(read(&dir).is_err());
    }
}
