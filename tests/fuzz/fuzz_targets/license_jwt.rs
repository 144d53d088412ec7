//! Fuzzes `licensectl::jwt::verify`, the license JWT verifier: `privitty.lic` is a file in the
//! data volume and a license server's answer, both outside the trust boundary.
//!
//! Input: a control byte, then either a raw token, or a JWS header and payload (separated by
//! `0xFF`) that the target signs with its fixed trusted key, so edits of the JSON text reach every
//! check behind the signature; `0xFF` and 4-byte edits of the signed token may follow.
//!
//! Control byte: bits 0-1 mode (0 raw, 1 signed, 2 signed by an untrusted key under the trusted
//! `kid`, 3 signed then edited), bits 2-3 the device UUID, bits 4-5 the activation id (see
//! `privitty_edge_fuzz::license`).
//!
//! Oracles: an accepted token carries a strict Ed25519 signature of the trusted key and claims
//! that satisfy every documented rule and the binding; a forgery or an empty key set is never
//! accepted; an oversized or empty token is `corrupt`; a signed, unedited token whose canonical
//! header and payload satisfy the rules is accepted with exactly those claims.

#![no_main]

use libfuzzer_sys::fuzz_target;
use licensectl::Reason;
use licensectl::TrustedKeys;
use licensectl::jwt::{self, Binding, LicenseClaims};
use privitty_edge_fuzz::input::{Cursor, text};
use privitty_edge_fuzz::{license, mutate};

/// The rules of a verified license, stated from the protocol (not the verifier's code).
fn follows_rules(c: &LicenseClaims, binding: &Binding<'_>) -> bool {
    c.ver == jwt::VERSION
        && c.iss == jwt::ISSUER
        && c.aud == jwt::AUDIENCE
        && !c.sub.is_empty()
        && !c.jti.is_empty()
        && c.iat <= c.sync_by
        && c.sync_by <= c.exp
        && c.dev == binding.device_uuid.trim()
        && binding
            .activation_id
            .is_none_or(|a| c.act.as_deref() == Some(a))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let control = input.u8();
    let mode = control & 3;
    let binding = Binding {
        device_uuid: license::device(control >> 2),
        activation_id: license::activation_id(control >> 4),
    };
    let mut expected: Option<LicenseClaims> = None;
    let token = if mode == 0 {
        text(input.rest()).into_owned()
    } else {
        let (header, payload) = (input.section(), input.section());
        let key = if mode == 2 {
            license::other_key()
        } else {
            license::key()
        };
        let signed = license::sign_bytes(header, payload, &key);
        if mode == 3 {
            let mut bytes = signed.into_bytes();
            mutate::apply(&mut bytes, input.rest());
            text(&bytes).into_owned()
        } else {
            if mode == 1 && header == license::header_json().as_bytes() {
                // A struct parse alone skips what it ignores (UTF-8 inside unknown strings, the
                // range of unknown numbers): the payload must be a JSON document first.
                expected = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|_| serde_json::from_slice::<LicenseClaims>(payload).ok())
                    .filter(|c| follows_rules(c, &binding))
                    .filter(|_| signed.len() <= jwt::MAX_LICENSE_BYTES);
            }
            signed
        }
    };

    let result = jwt::verify(&token, &license::trusted(), &binding);
    if let Ok(claims) = &result {
        assert_ne!(mode, 2, "a token signed by an untrusted key was accepted");
        assert!(
            license::strictly_signed(&token),
            "accepted without a strict signature of the trusted key: {token:?}"
        );
        assert!(
            follows_rules(claims, &binding),
            "accepted claims that break a rule: {claims:?}"
        );
    }
    let trimmed = token.trim();
    if trimmed.is_empty() || trimmed.len() > jwt::MAX_LICENSE_BYTES {
        assert_eq!(result, Err(Reason::Corrupt), "size {}", trimmed.len());
    }
    if let Some(claims) = expected {
        assert_eq!(result, Ok(claims), "a valid license was refused");
    }
    assert!(
        jwt::verify(&token, &TrustedKeys::default(), &binding).is_err(),
        "accepted with no trusted key"
    );
});
