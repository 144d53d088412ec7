//! The license side of the fuzz targets: one Ed25519 key derived from a fixed seed (the same in
//! every process, so a crash replays), signing of arbitrary header/payload bytes with it, and the
//! bindings (device UUID, activation id) an input selects.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use licensectl::TrustedKeys;
use sha2::{Digest, Sha256};

/// The device the valid seeds are bound to.
pub const DEV: &str = "0b6a4a39-52f9-4a8e-9b5d-0123456789ab";
/// The activation the valid seeds are bound to.
pub const ACT: &str = "act-fuzz-1";

/// The trusted signing key: SHA-256 of a fixed label.
pub fn key() -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest(b"privitty-edge fuzz license key v1").into())
}

/// A key that is not trusted, for forgeries that name the trusted `kid`.
pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest(b"privitty-edge fuzz untrusted key v1").into())
}

/// The trusted key's `kid`.
pub fn kid() -> String {
    licensectl::keys::key_id(&key().verifying_key().to_bytes())
}

/// The keys the verifier trusts: only [`key`].
pub fn trusted() -> TrustedKeys {
    let mut keys = TrustedKeys::default();
    keys.insert_raw(key().verifying_key().to_bytes());
    keys
}

/// A compact JWS over arbitrary header and payload bytes (not only UTF-8 or JSON), so the
/// fuzzer can edit the JSON text and still reach every check behind the signature.
pub fn sign_bytes(header: &[u8], payload: &[u8], key: &SigningKey) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// The header a license server writes.
pub fn header_json() -> String {
    serde_json::json!({"alg": "EdDSA", "typ": licensectl::jwt::TYP, "kid": kid()}).to_string()
}

/// Claims that verify against [`DEV`] and, with `act`, [`ACT`].
pub fn claims_json(act: bool) -> String {
    let mut claims = serde_json::json!({
        "ver": 1,
        "iss": licensectl::jwt::ISSUER,
        "aud": licensectl::jwt::AUDIENCE,
        "sub": "lic-fuzz",
        "jti": "jti-1",
        "iat": 1_700_000_000,
        "sync_by": 1_700_086_400,
        "exp": 1_700_172_800,
        "dev": DEV,
        "customer": "ACME",
        "seats": 3,
        "features": ["send_file"],
    });
    if act {
        claims["act"] = ACT.into();
    }
    claims.to_string()
}

/// The device UUID an input's selector names: the bound one, the bound one with the whitespace a
/// file may hold, another device, or garbage.
pub fn device(selector: u8) -> &'static str {
    match selector % 4 {
        0 => DEV,
        1 => " 0b6a4a39-52f9-4a8e-9b5d-0123456789ab\n",
        2 => "11111111-2222-4333-8444-555555555555",
        _ => "",
    }
}

/// The activation id an input's selector names (`None`: no `activation.json`).
pub fn activation_id(selector: u8) -> Option<&'static str> {
    match selector % 4 {
        0 => None,
        1 => Some(ACT),
        2 => Some("act-fuzz-2"),
        _ => Some(""),
    }
}

/// `Ok` exactly when `token` (trimmed) carries a strict Ed25519 signature of the trusted key
/// over its first two segments: an independent check of what the verifier accepted.
pub fn strictly_signed(token: &str) -> bool {
    let Some((input, sig)) = token.trim().rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else {
        return false;
    };
    key()
        .verifying_key()
        .verify_strict(input.as_bytes(), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use licensectl::jwt::{Binding, verify};

    #[test]
    fn the_seed_license_verifies_and_a_forgery_does_not() {
        let token = sign_bytes(
            header_json().as_bytes(),
            claims_json(true).as_bytes(),
            &key(),
        );
        let binding = Binding {
            device_uuid: DEV,
            activation_id: Some(ACT),
        };
        assert!(verify(&token, &trusted(), &binding).is_ok());
        assert!(strictly_signed(&token));
        let forged = sign_bytes(
            header_json().as_bytes(),
            claims_json(true).as_bytes(),
            &other_key(),
        );
        assert!(verify(&forged, &trusted(), &binding).is_err());
        assert!(!strictly_signed(&forged));
    }
}
