//! The server's license-signing key and the license JWTs it issues (license-protocol.md, "The license
//! JWT"). Owns: generating the Ed25519 key once into the state dir, the `kid`, and compact JWS encoding.
//! Must not: decide what a license grants (the claims come from `state`), or write anything but the two
//! key files.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::state::write_atomic;
use super::{Error, io_err};

/// Private key file in the state dir (PKCS#8 PEM, mode 0600).
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
/// Public key file in the state dir: what devices trust (`PRIVITTY_LICENSE_PUBKEY`).
pub const PUBKEY_FILE: &str = "license-pubkey.pem";

/// The `typ` header every license carries.
pub const JWT_TYP: &str = "privitty-lic+jwt";
pub const ISSUER: &str = "privitty-license";
pub const AUDIENCE: &str = "privitty-edge";

/// `kid` for a raw Ed25519 public key: the first 16 hex digits of SHA-256 over its 32 bytes.
pub fn key_id(raw: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(raw)[..8])
}

/// The claims of a license JWT, in the order the protocol lists them.
#[derive(Clone, Debug, Serialize)]
pub struct Claims {
    pub ver: u32,
    pub iss: &'static str,
    pub aud: &'static str,
    pub sub: String,
    pub jti: String,
    pub iat: i64,
    pub sync_by: i64,
    pub exp: i64,
    pub dev: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub seats: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nce: Option<String>,
}

/// An Ed25519 signing key with its `kid`.
#[derive(Debug)]
pub struct LicenseSigner {
    key: SigningKey,
    kid: String,
}

impl LicenseSigner {
    /// A fresh key that lives only in memory (the `wrong-key` fault signs with one of these).
    pub fn ephemeral() -> LicenseSigner {
        LicenseSigner::from_key(SigningKey::generate(&mut rand_core::OsRng))
    }

    fn from_key(key: SigningKey) -> LicenseSigner {
        let kid = key_id(key.verifying_key().as_bytes());
        LicenseSigner { key, kid }
    }

    /// Loads `signing-key.pem` from the state dir, generating it on first start, and (re)writes
    /// `license-pubkey.pem` so the public half always matches the private one.
    pub fn load_or_create(state_dir: &Path) -> Result<LicenseSigner, Error> {
        let path = state_dir.join(SIGNING_KEY_FILE);
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::BadKeyFile {
                path: path.clone(),
                problem: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand_core::OsRng);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| Error::BadKeyFile {
                        path: path.clone(),
                        problem: e.to_string(),
                    })?;
                write_atomic(&path, pem.as_bytes(), 0o600)?;
                tracing::info!(path = %path.display(), "generated a new license-signing key");
                key
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let signer = LicenseSigner::from_key(key);
        let pub_path = pubkey_path(state_dir);
        write_atomic(&pub_path, signer.public_pem().as_bytes(), 0o644)?;
        Ok(signer)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("an ed25519 public key always encodes")
    }

    /// Encodes and signs a compact JWS with the protocol's header.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "typ": JWT_TYP, "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"))
        );
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

pub fn pubkey_path(state_dir: &Path) -> PathBuf {
    state_dir.join(PUBKEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn signed_token_verifies_and_kid_is_16_hex() {
        let signer = LicenseSigner::ephemeral();
        assert_eq!(signer.kid().len(), 16);
        assert!(signer.kid().chars().all(|c| c.is_ascii_hexdigit()));
        let claims = Claims {
            ver: 1,
            iss: ISSUER,
            aud: AUDIENCE,
            sub: "lic-1".into(),
            jti: "j".into(),
            iat: 1,
            sync_by: 2,
            exp: 3,
            dev: "d".into(),
            act: None,
            customer: None,
            seats: 1,
            features: vec![],
            nce: None,
        };
        let jwt = signer.sign(&claims);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["typ"], JWT_TYP);
        assert_eq!(header["kid"], signer.kid());
        let body: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert!(
            body.get("act").is_none(),
            "offline licenses carry no act: {body}"
        );
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        signer
            .key
            .verifying_key()
            .verify(input.as_bytes(), &sig)
            .unwrap();
    }
}
