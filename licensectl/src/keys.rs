//! Trusted license-signing keys: built into the binaries at build time, `/etc/privitty/license-keys/*.pem`,
//! and `PRIVITTY_LICENSE_PUBKEY` (PEM text or a path; several keys allowed). Never a key from the data volume.

use std::path::PathBuf;

use crate::Error;

pub const SYSTEM_KEYS_DIR: &str = "/etc/privitty/license-keys";

/// Ed25519 public keys by `kid` (first 16 hex digits of SHA-256 over the raw 32-byte key).
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, [u8; 32])>,
}

/// Where keys come from; `from_env` reads the documented places.
#[derive(Clone, Debug, Default)]
pub struct KeySources {
    pub system_dir: Option<PathBuf>,
    pub pubkey_env: Option<String>,
}

impl KeySources {
    pub fn from_env() -> KeySources {
        KeySources {
            system_dir: Some(PathBuf::from(SYSTEM_KEYS_DIR)),
            pubkey_env: std::env::var(crate::env::LICENSE_PUBKEY).ok().filter(|s| !s.trim().is_empty()),
        }
    }
}

impl TrustedKeys {
    pub fn load(sources: &KeySources) -> Result<TrustedKeys, Error> {
        let _ = sources;
        todo!("licensectl: TrustedKeys::load")
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// `kid` for a raw Ed25519 public key.
pub fn key_id(raw: &[u8; 32]) -> String {
    let _ = raw;
    todo!("licensectl: key_id")
}
