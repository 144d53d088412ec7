//! Verification of `privitty.lic` (license-protocol.md, "The license JWT"): EdDSA only, `typ`, `kid`,
//! no `crit`, required claims and their consistency, device and activation binding.
//!
//! Owns: the mapping of every check to its `no_license` [`Reason`]. Must not: look at the clock
//! (expiry is the status rules' business, so an expired license still verifies) or read files.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use crate::keys::{TrustedKeys, key_id};
use crate::vocab::Reason;

pub use crate::vocab::MAX_LICENSE_BYTES;
pub const TYP: &str = "privitty-lic+jwt";
pub const ISSUER: &str = "privitty-license";
pub const AUDIENCE: &str = "privitty-edge";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseClaims {
    pub ver: u32,
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub jti: String,
    pub iat: i64,
    pub sync_by: i64,
    pub exp: i64,
    pub dev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<String>,
    // The informational claims never decide whether a license is valid: one of an unexpected
    // type (`"seats": -1` for "unlimited", say) is read as absent instead of rejecting the file.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "informational"
    )]
    pub customer: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "informational"
    )]
    pub seats: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "informational_list"
    )]
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nce: Option<String>,
}

fn informational<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

fn informational_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(informational(d)?.unwrap_or_default())
}

/// What the license must be bound to.
#[derive(Clone, Debug)]
pub struct Binding<'a> {
    pub device_uuid: &'a str,
    /// `activation.json`'s `activation_id`, when that file exists.
    pub activation_id: Option<&'a str>,
}

/// Verifies a compact JWS; the error is the `no_license` reason.
///
/// Order of checks (the first failing one decides the reason): size and shape → `corrupt`;
/// `crit` → `unsupported_version`; `typ` → `corrupt`; `alg` ≠ EdDSA → `invalid_signature`;
/// `kid` missing or unknown → `untrusted_key`; signature → `invalid_signature`; `ver` ≠ 1 →
/// `unsupported_version`; claim types, `iss`, `aud`, `iat ≤ sync_by ≤ exp` → `corrupt`;
/// `dev`, `act` → `wrong_device`.
pub fn verify(
    token: &str,
    keys: &TrustedKeys,
    binding: &Binding<'_>,
) -> Result<LicenseClaims, Reason> {
    let token = token.trim();
    if token.len() > MAX_LICENSE_BYTES || token.is_empty() {
        return Err(Reason::Corrupt);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Corrupt);
    };
    // The header is checked by hand first: jsonwebtoken's own header type would drop `crit` and
    // accept any `typ`, and the exact rules here are the interop contract.
    let header: serde_json::Map<String, serde_json::Value> = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Reason::Corrupt)?;
    if header.contains_key("crit") {
        return Err(Reason::UnsupportedVersion);
    }
    if header.get("typ").and_then(|v| v.as_str()) != Some(TYP) {
        return Err(Reason::Corrupt);
    }
    if header.get("alg").and_then(|v| v.as_str()) != Some("EdDSA") {
        return Err(Reason::InvalidSignature);
    }
    let kid = header
        .get("kid")
        .and_then(|v| v.as_str())
        .ok_or(Reason::UntrustedKey)?;
    let raw = keys.get(kid).ok_or(Reason::UntrustedKey)?;

    // Only the signature check is delegated: jsonwebtoken's header type rejects extra header
    // fields that a server may legitimately add, and its claim validation knows nothing of ours.
    let (signing_input, signature) = token.rsplit_once('.').ok_or(Reason::Corrupt)?;
    let valid = jsonwebtoken::crypto::verify(
        signature,
        signing_input.as_bytes(),
        &DecodingKey::from_ed_der(raw),
        Algorithm::EdDSA,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::Base64(_) => Reason::Corrupt,
        _ => Reason::InvalidSignature,
    })?;
    if !valid {
        return Err(Reason::InvalidSignature);
    }
    let payload_b64 = signing_input
        .split_once('.')
        .map(|(_, p)| p)
        .ok_or(Reason::Corrupt)?;
    let payload: serde_json::Value = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Reason::Corrupt)?;
    match payload.get("ver").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(_) => return Err(Reason::UnsupportedVersion),
        None => return Err(Reason::Corrupt),
    }
    let claims: LicenseClaims = serde_json::from_value(payload).map_err(|_| Reason::Corrupt)?;
    if claims.iss != ISSUER
        || claims.aud != AUDIENCE
        || claims.sub.is_empty()
        || claims.jti.is_empty()
        || !(claims.iat <= claims.sync_by && claims.sync_by <= claims.exp)
    {
        return Err(Reason::Corrupt);
    }
    if claims.dev != binding.device_uuid.trim() {
        return Err(Reason::WrongDevice);
    }
    if let Some(act) = binding.activation_id
        && claims.act.as_deref() != Some(act)
    {
        return Err(Reason::WrongDevice);
    }
    Ok(claims)
}

/// Signs `claims` as a license JWT with the documented header (`kid` derived from the key).
/// For license servers and tests; the device side only verifies.
pub fn sign(claims: &LicenseClaims, key: &ed25519_dalek::SigningKey) -> String {
    let header = serde_json::json!({
        "alg": "EdDSA",
        "typ": TYP,
        "kid": key_id(&key.verifying_key().to_bytes()),
    });
    sign_raw(
        &header.to_string(),
        &serde_json::to_string(claims).expect("claims serialize"),
        key,
    )
}

/// Signs arbitrary header and payload JSON text (to build malformed licenses in tests).
pub fn sign_raw(header_json: &str, payload_json: &str, key: &ed25519_dalek::SigningKey) -> String {
    use ed25519_dalek::Signer;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(payload_json)
    );
    let sig = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use serde_json::json;

    pub const DEV: &str = "0b6a4a39-52f9-4a8e-9b5d-0123456789ab";
    pub const ACT: &str = "act-1";

    pub fn new_key() -> SigningKey {
        SigningKey::generate(&mut rand_core::OsRng)
    }

    pub fn trusted(key: &SigningKey) -> TrustedKeys {
        let mut keys = TrustedKeys::default();
        keys.insert_raw(key.verifying_key().to_bytes());
        keys
    }

    pub fn claims(iat: i64, sync_by: i64, exp: i64) -> LicenseClaims {
        LicenseClaims {
            ver: 1,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "lic-42".into(),
            jti: format!("jti-{iat}"),
            iat,
            sync_by,
            exp,
            dev: DEV.into(),
            act: Some(ACT.into()),
            customer: Some("ACME".into()),
            seats: Some(3),
            features: vec!["send_file".into()],
            nce: None,
        }
    }

    fn binding() -> Binding<'static> {
        Binding {
            device_uuid: DEV,
            activation_id: Some(ACT),
        }
    }

    fn header(key: &SigningKey) -> serde_json::Value {
        json!({"alg":"EdDSA","typ":TYP,"kid":crate::keys::key_id(&key.verifying_key().to_bytes())})
    }

    fn payload() -> serde_json::Value {
        serde_json::to_value(claims(1000, 2000, 3000)).unwrap()
    }

    fn check(token: &str, key: &SigningKey) -> Result<LicenseClaims, Reason> {
        verify(token, &trusted(key), &binding())
    }

    fn with_header(f: impl FnOnce(&mut serde_json::Value)) -> Result<LicenseClaims, Reason> {
        let key = new_key();
        let mut h = header(&key);
        f(&mut h);
        check(
            &sign_raw(&h.to_string(), &payload().to_string(), &key),
            &key,
        )
    }

    fn with_claims(f: impl FnOnce(&mut serde_json::Value)) -> Result<LicenseClaims, Reason> {
        let key = new_key();
        let mut p = payload();
        f(&mut p);
        check(
            &sign_raw(&header(&key).to_string(), &p.to_string(), &key),
            &key,
        )
    }

    #[test]
    fn valid_license_verifies_even_when_long_expired() {
        let key = new_key();
        let token = sign(&claims(1000, 2000, 3000), &key);
        assert_eq!(check(&token, &key).unwrap(), claims(1000, 2000, 3000));
        assert!(
            check(&format!("{token}\n"), &key).is_ok(),
            "a trailing newline is fine"
        );
        // A license issued offline has no `act` and is valid while activation.json does not exist.
        let mut offline = claims(1000, 2000, 3000);
        offline.act = None;
        let token = sign(&offline, &key);
        assert!(
            verify(
                &token,
                &trusted(&key),
                &Binding {
                    device_uuid: DEV,
                    activation_id: None
                }
            )
            .is_ok()
        );
        assert_eq!(check(&token, &key), Err(Reason::WrongDevice));
    }

    #[test]
    fn tampering_is_invalid_signature() {
        let key = new_key();
        let token = sign(&claims(1000, 2000, 3000), &key);
        let parts: Vec<&str> = token.split('.').collect();
        let mut p = payload();
        p["exp"] = json!(999_999);
        let tampered_payload = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(p.to_string()),
            parts[2]
        );
        assert_eq!(
            check(&tampered_payload, &key),
            Err(Reason::InvalidSignature)
        );
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[5] ^= 1;
        let tampered_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(check(&tampered_sig, &key), Err(Reason::InvalidSignature));
        // Signed by another key that claims a trusted kid.
        let other = new_key();
        let forged = sign_raw(&header(&key).to_string(), &payload().to_string(), &other);
        assert_eq!(check(&forged, &key), Err(Reason::InvalidSignature));
    }

    #[test]
    fn other_algorithms_are_invalid_signature() {
        let key = new_key();
        let kid = crate::keys::key_id(&key.verifying_key().to_bytes());
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg":"none","typ":TYP,"kid":kid}).to_string()),
            URL_SAFE_NO_PAD.encode(payload().to_string())
        );
        assert_eq!(check(&none, &key), Err(Reason::InvalidSignature));
        // HS256 keyed with the public key bytes: the classic confusion attack.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                alg: Algorithm::HS256,
                typ: Some(TYP.into()),
                kid: Some(kid.clone()),
                ..Default::default()
            },
            &payload(),
            &jsonwebtoken::EncodingKey::from_secret(&key.verifying_key().to_bytes()),
        )
        .unwrap();
        assert_eq!(check(&hs, &key), Err(Reason::InvalidSignature));
        assert_eq!(
            with_header(|h| h["alg"] = json!("ES256")),
            Err(Reason::InvalidSignature)
        );
        assert_eq!(
            with_header(|h| h["alg"] = json!("Ed25519")),
            Err(Reason::InvalidSignature)
        );
    }

    #[test]
    fn header_rules() {
        assert_eq!(
            with_header(|h| h["kid"] = json!("0011223344556677")),
            Err(Reason::UntrustedKey)
        );
        assert_eq!(
            with_header(|h| drop(h.as_object_mut().unwrap().remove("kid"))),
            Err(Reason::UntrustedKey)
        );
        assert_eq!(
            with_header(|h| h["kid"] = json!(7)),
            Err(Reason::UntrustedKey)
        );
        assert_eq!(
            with_header(|h| h["crit"] = json!(["exp"])),
            Err(Reason::UnsupportedVersion)
        );
        assert_eq!(
            with_header(|h| h["typ"] = json!("JWT")),
            Err(Reason::Corrupt)
        );
        assert_eq!(
            with_header(|h| drop(h.as_object_mut().unwrap().remove("typ"))),
            Err(Reason::Corrupt)
        );
        let r = with_header(|h| {
            let upper = h["kid"].as_str().unwrap().to_ascii_uppercase();
            h["kid"] = json!(upper);
        });
        assert!(r.is_ok(), "hex digits in either case name the key: {r:?}");
        let r = with_header(|h| h["x-extra"] = json!(1));
        assert!(r.is_ok(), "unknown non-crit header fields are fine: {r:?}");
    }

    #[test]
    fn claim_rules() {
        assert_eq!(
            with_claims(|p| p["ver"] = json!(2)),
            Err(Reason::UnsupportedVersion)
        );
        assert_eq!(
            with_claims(|p| p["aud"] = json!("someone-else")),
            Err(Reason::Corrupt)
        );
        assert_eq!(
            with_claims(|p| p["aud"] = json!(["privitty-edge"])),
            Err(Reason::Corrupt)
        );
        assert_eq!(
            with_claims(|p| p["iss"] = json!("evil")),
            Err(Reason::Corrupt)
        );
        assert_eq!(
            with_claims(|p| p["exp"] = json!(999)),
            Err(Reason::Corrupt),
            "exp < iat"
        );
        assert_eq!(
            with_claims(|p| p["sync_by"] = json!(999)),
            Err(Reason::Corrupt),
            "sync_by < iat"
        );
        assert_eq!(
            with_claims(|p| p["sync_by"] = json!(3001)),
            Err(Reason::Corrupt),
            "sync_by > exp"
        );
        assert_eq!(
            with_claims(|p| drop(p.as_object_mut().unwrap().remove("jti"))),
            Err(Reason::Corrupt)
        );
        assert_eq!(
            with_claims(|p| drop(p.as_object_mut().unwrap().remove("ver"))),
            Err(Reason::Corrupt)
        );
        assert_eq!(
            with_claims(|p| p["iat"] = json!("soon")),
            Err(Reason::Corrupt)
        );
        assert_eq!(
            with_claims(|p| p["dev"] = json!("another-device")),
            Err(Reason::WrongDevice)
        );
        assert_eq!(
            with_claims(|p| p["act"] = json!("act-2")),
            Err(Reason::WrongDevice)
        );
        assert_eq!(
            with_claims(|p| drop(p.as_object_mut().unwrap().remove("act"))),
            Err(Reason::WrongDevice)
        );
        assert!(
            with_claims(|p| p["sync_by"] = json!(3000)).is_ok(),
            "sync_by == exp is allowed"
        );
        // Informational claims of an unexpected type are read as absent, never rejected.
        let c = with_claims(|p| {
            p["seats"] = json!(-1);
            p["customer"] = json!({"name": "ACME"});
            p["features"] = json!("send_file");
        })
        .unwrap();
        assert_eq!((c.seats, c.customer, c.features), (None, None, vec![]));
        let c = with_claims(|p| p["seats"] = json!(null)).unwrap();
        assert_eq!(c.seats, None);
    }

    #[test]
    fn garbage_and_oversized_are_corrupt() {
        let key = new_key();
        for junk in ["", "abc", "a.b", "a.b.c.d", "!!!.###.$$$", "e30.e30.e30"] {
            assert_eq!(check(junk, &key), Err(Reason::Corrupt), "{junk:?}");
        }
        let mut p = payload();
        p["pad"] = json!("x".repeat(MAX_LICENSE_BYTES));
        let big = sign_raw(&header(&key).to_string(), &p.to_string(), &key);
        assert_eq!(check(&big, &key), Err(Reason::Corrupt));
    }
}
