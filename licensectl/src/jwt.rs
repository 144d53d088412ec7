//! Verification of `privitty.lic` (license-protocol.md, "The license JWT"): EdDSA only, `typ`, `kid`,
//! no `crit`, required claims and their consistency, device and activation binding.

use serde::{Deserialize, Serialize};

use crate::status::Reason;
use crate::TrustedKeys;

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seats: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nce: Option<String>,
}

/// What the license must be bound to.
#[derive(Clone, Debug)]
pub struct Binding<'a> {
    pub device_uuid: &'a str,
    /// `activation.json`'s `activation_id`, when that file exists.
    pub activation_id: Option<&'a str>,
}

/// Verifies a compact JWS; the error is the `no_license` reason.
pub fn verify(token: &str, keys: &TrustedKeys, binding: &Binding<'_>) -> Result<LicenseClaims, Reason> {
    let _ = (token, keys, binding);
    todo!("licensectl: jwt::verify")
}
