//! Trusted license-signing keys: built into the binaries at build time, `/etc/privitty/license-keys/*.pem`,
//! and `PRIVITTY_LICENSE_PUBKEY` (PEM text or a path; several keys allowed). Never a key from the data volume.
//!
//! Owns: loading and identifying (`kid`) Ed25519 public keys. Must not: read the accounts directory.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use crate::error::Error;
use privitty_base::env;

pub const SYSTEM_KEYS_DIR: &str = "/etc/privitty/license-keys";

/// Keys compiled in: PEM text from the build-time environment variable of the same name.
pub const BUILTIN_KEYS_PEM: &str = match option_env!("PRIVITTY_BUILTIN_LICENSE_KEYS") {
    Some(pem) => pem,
    None => "",
};

const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";
/// Key files are tiny; anything bigger is not a key file.
const MAX_KEY_FILE_BYTES: u64 = 256 * 1024;

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
            pubkey_env: std::env::var(env::LICENSE_PUBKEY)
                .ok()
                .filter(|s| !s.trim().is_empty()),
        }
    }
}

impl TrustedKeys {
    /// Built-in keys, then `system_dir/*.pem` (sorted; a missing directory is fine), then
    /// `pubkey_env` (PEM text when it contains a PEM header, else a path to a PEM file).
    pub fn load(sources: &KeySources) -> Result<TrustedKeys, Error> {
        let mut keys = TrustedKeys::default();
        keys.add_pem(BUILTIN_KEYS_PEM, "the built-in keys", false)?;
        if let Some(dir) = &sources.system_dir {
            for path in pem_files(dir)? {
                let text = read_key_file(&path, false)?;
                keys.add_pem(&text, &path.display().to_string(), false)?;
            }
        }
        if let Some(value) = &sources.pubkey_env {
            let name = env::LICENSE_PUBKEY;
            if value.contains("-----BEGIN") {
                keys.add_pem(value, name, true)?;
            } else {
                let path = PathBuf::from(value.trim());
                let text = read_key_file(&path, true)?;
                let source = format!("{} (from {name})", path.display());
                keys.add_pem(&text, &source, true)?;
                if !text.contains(PEM_BEGIN) {
                    return Err(bad_key(&source, "it contains no PUBLIC KEY block", true));
                }
            }
        }
        Ok(keys)
    }

    /// Keys from PEM text holding one or more `PUBLIC KEY` blocks; `source` names it in errors.
    pub fn from_pem(pem: &str, source: &str) -> Result<TrustedKeys, Error> {
        let mut keys = TrustedKeys::default();
        keys.add_pem(pem, source, false)?;
        Ok(keys)
    }

    /// Adds a raw Ed25519 public key (tests, embedding).
    pub fn insert_raw(&mut self, raw: [u8; 32]) -> String {
        let kid = key_id(&raw);
        if !self.keys.iter().any(|(k, _)| *k == kid) {
            self.keys.push((kid.clone(), raw));
        }
        kid
    }

    /// The raw key for `kid` (hex digits in either case: a server may print them upper case).
    pub fn get(&self, kid: &str) -> Option<&[u8; 32]> {
        self.keys
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(kid))
            .map(|(_, raw)| raw)
    }

    /// The key ids, in load order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn add_pem(&mut self, pem: &str, source: &str, from_env: bool) -> Result<(), Error> {
        let mut rest = pem;
        let mut found = 0;
        while let Some(start) = rest.find(PEM_BEGIN) {
            let Some(len) = rest[start..].find(PEM_END) else {
                return Err(bad_key(
                    source,
                    "a PUBLIC KEY block has no END line",
                    from_env,
                ));
            };
            let block = &rest[start..start + len + PEM_END.len()];
            let key = VerifyingKey::from_public_key_pem(block).map_err(|e| {
                bad_key(
                    source,
                    &format!("not an Ed25519 public key in SPKI PEM form ({e})"),
                    from_env,
                )
            })?;
            self.insert_raw(key.to_bytes());
            found += 1;
            rest = &rest[start + len + PEM_END.len()..];
        }
        if found == 0 && pem.contains("-----BEGIN") {
            return Err(bad_key(
                source,
                "it holds no PUBLIC KEY block (a private key or certificate?)",
                from_env,
            ));
        }
        Ok(())
    }
}

fn bad_key(source: &str, problem: &str, from_env: bool) -> Error {
    Error::BadKey {
        source_name: source.to_string(),
        problem: problem.to_string(),
        from_env,
    }
}

fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::read(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::read(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "pem") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_key_file(path: &Path, from_env: bool) -> Result<String, Error> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| {
        if from_env {
            bad_key(
                &format!("{} ({})", path.display(), env::LICENSE_PUBKEY),
                &format!(
                    "cannot read it ({e}); set the variable to PEM text or the path of a PEM file"
                ),
                true,
            )
        } else {
            Error::read(path, e)
        }
    })?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| {
            bad_key(
                &path.display().to_string(),
                &format!("cannot read it as text ({e})"),
                from_env,
            )
        })?;
    Ok(text)
}

/// `kid` for a raw Ed25519 public key.
pub fn key_id(raw: &[u8; 32]) -> String {
    let digest = Sha256::digest(raw);
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

    fn pem_for(seed: u8) -> (String, [u8; 32]) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let vk = sk.verifying_key();
        (vk.to_public_key_pem(LineEnding::LF).unwrap(), vk.to_bytes())
    }

    #[test]
    fn kid_is_16_hex_of_sha256() {
        let raw = [7u8; 32];
        let kid = key_id(&raw);
        assert_eq!(kid.len(), 16);
        assert_eq!(kid, hex::encode(Sha256::digest(raw))[..16]);
    }

    #[test]
    fn env_text_with_several_keys_and_a_path_both_load() {
        let (a, ra) = pem_for(1);
        let (b, rb) = pem_for(2);
        let both = format!("{a}\n{b}");
        let keys = TrustedKeys::load(&KeySources {
            system_dir: None,
            pubkey_env: Some(both.clone()),
        })
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.get(&key_id(&ra)).is_some() && keys.get(&key_id(&rb)).is_some());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, &both).unwrap();
        let keys = TrustedKeys::load(&KeySources {
            system_dir: None,
            pubkey_env: Some(path.display().to_string()),
        })
        .unwrap();
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn system_dir_reads_pem_files_only() {
        let (a, ra) = pem_for(3);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pem"), &a).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a key").unwrap();
        let keys = TrustedKeys::load(&KeySources {
            system_dir: Some(dir.path().into()),
            pubkey_env: None,
        })
        .unwrap();
        assert_eq!(keys.kids().collect::<Vec<_>>(), vec![key_id(&ra)]);
        let missing = dir.path().join("absent");
        assert!(
            TrustedKeys::load(&KeySources {
                system_dir: Some(missing),
                pubkey_env: None
            })
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn bad_pem_names_its_source() {
        let bad = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let e = TrustedKeys::load(&KeySources {
            system_dir: None,
            pubkey_env: Some(bad.into()),
        })
        .unwrap_err();
        assert!(e.to_string().contains(env::LICENSE_PUBKEY), "{e}");
        assert_eq!(e.kind(), ErrorKind::Usage);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.pem"), bad).unwrap();
        let e = TrustedKeys::load(&KeySources {
            system_dir: Some(dir.path().into()),
            pubkey_env: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("broken.pem"), "{e}");
        assert_eq!(e.kind(), ErrorKind::LocalFiles);

        let e = TrustedKeys::load(&KeySources {
            system_dir: None,
            pubkey_env: Some("/nonexistent/k.pem".into()),
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/k.pem"), "{e}");

        let private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(
            TrustedKeys::load(&KeySources {
                system_dir: None,
                pubkey_env: Some(private.into())
            })
            .is_err()
        );
    }
}
