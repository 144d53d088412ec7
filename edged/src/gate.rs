//! The license gate: which methods need a license, the check against the loaded license at the
//! moment of the call, and the documented rejection (-32001).
//!
//! Owns: the access table and the rejection text (a documented contract: keep it exact). Must not:
//! read license files (that happens once, at start-up, in [`crate::license`]) or run methods.

use std::time::SystemTime;

use licensectl::Evaluation;
use serde_json::json;

use crate::license::License;
use crate::rpc::{LICENSE_REQUIRED, RpcError};

/// Whether a method needs a license.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Served without a license (all Delta Chat methods: reading, plain-text send, secure join, invite).
    Open,
    /// Needs status `active` or `grace_period`: everything that encrypts, sends, grants, revokes or
    /// hand-shakes a Privitty file.
    Licensed,
}

/// Prefix of Privitty methods; every other method is a Delta Chat method and open.
pub const PRIVITTY_PREFIX: &str = "privitty_";

/// The Privitty methods edged knows of. A `privitty_*` method not listed here (nor implemented by the
/// file module, whose methods are all licensed) is treated as licensed, so the gate answers it
/// before "method not found" does: an unlicensed device cannot probe for method names.
pub const PRIVITTY_METHODS: &[(&str, Access)] = &[
    ("privitty_license_status", Access::Open),
    ("privitty_send_file", Access::Licensed),
    ("privitty_send_group_file", Access::Licensed),
    ("privitty_revoke_file_access", Access::Licensed),
    ("privitty_get_file_info", Access::Licensed),
    ("privitty_send_file_access", Access::Licensed),
    ("privitty_deny_file_access", Access::Licensed),
    ("privitty_init_access_grant_request", Access::Licensed),
    ("privitty_decrypt_file", Access::Licensed),
    // Read-only status queries stay open (the peer protocol page, decision 6).
    ("privitty_is_chat_encrypted", Access::Open),
    ("privitty_get_peer_capabilities", Access::Open),
    ("privitty_get_file_display_status", Access::Open),
    ("privitty_get_file_access_info", Access::Open),
];

/// Looks a method up in the table.
pub fn access(method: &str) -> Access {
    if !method.starts_with(PRIVITTY_PREFIX) {
        return Access::Open;
    }
    PRIVITTY_METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map_or(Access::Licensed, |(_, a)| *a)
}

/// Checks one call. `Ok(true)` = allowed and licensed (count it on success), `Ok(false)` = open.
pub fn check(method: &str, license: &dyn License, now: SystemTime) -> Result<bool, RpcError> {
    match access(method) {
        Access::Open => Ok(false),
        Access::Licensed => {
            let eval = license.evaluate(now);
            if eval.status.allows_gated() {
                Ok(true)
            } else {
                Err(rejection(&eval))
            }
        }
    }
}

/// The documented -32001 answer.
pub fn rejection(eval: &Evaluation) -> RpcError {
    RpcError::new(
        LICENSE_REQUIRED,
        format!(
            "Privitty license required: status is '{}'. Run `privitty-edge license activate <url>` to install or renew.",
            eval.status.as_str()
        ),
    )
    .with_data(json!({
        "status": eval.status.as_str(),
        "reason": eval.reason.map(|r| r.as_str()),
        "expires_at": eval.expires_at,
        "grace_ends_at": eval.grace_ends_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::Fixed;
    use licensectl::{Reason, Status};

    fn eval(status: Status) -> Evaluation {
        Evaluation {
            status,
            reason: (status == Status::NoLicense).then_some(Reason::NotActivated),
            expires_at: (status != Status::NoLicense).then_some(1_000),
            grace_ends_at: (status != Status::NoLicense).then_some(2_000),
        }
    }

    const OPEN: &[&str] = &[
        "get_config",
        "get_info",
        "get_connectivity",
        "get_chatlist_entries",
        "get_chatlist_items_by_entries",
        "get_messages",
        "send_msg",
        "secure_join",
        "get_chat_securejoin_qr_code",
        "create_contact",
        "privitty_license_status",
        "privitty_is_chat_encrypted",
        "privitty_get_peer_capabilities",
        "privitty_get_file_display_status",
        "privitty_get_file_access_info",
    ];
    const GATED: &[&str] = &[
        "privitty_send_file",
        "privitty_send_group_file",
        "privitty_revoke_file_access",
        "privitty_send_file_access",
        "privitty_deny_file_access",
        "privitty_init_access_grant_request",
        "privitty_decrypt_file",
        "privitty_made_up_method",
    ];

    #[test]
    fn every_row_under_every_status() {
        for status in [
            Status::Active,
            Status::GracePeriod,
            Status::Expired,
            Status::NoLicense,
        ] {
            let lic = Fixed(eval(status));
            for m in OPEN {
                assert_eq!(
                    check(m, &lic, SystemTime::now()),
                    Ok(false),
                    "{m} under {status}"
                );
            }
            for m in GATED {
                let got = check(m, &lic, SystemTime::now());
                if status.allows_gated() {
                    assert_eq!(got, Ok(true), "{m} under {status}");
                } else {
                    let err = got.expect_err(m);
                    assert_eq!(err.code, LICENSE_REQUIRED);
                    assert_eq!(
                        err.message,
                        format!(
                            "Privitty license required: status is '{status}'. Run `privitty-edge license activate <url>` to install or renew."
                        )
                    );
                    let data = err.data.expect("data");
                    assert_eq!(data["status"], status.as_str());
                }
            }
        }
    }

    #[test]
    fn rejection_data_names_reason_and_times() {
        let err = rejection(&eval(Status::NoLicense));
        assert_eq!(
            err.data.unwrap(),
            json!({"status":"no_license","reason":"not_activated","expires_at":null,"grace_ends_at":null})
        );
        let err = rejection(&eval(Status::Expired));
        assert_eq!(
            err.data.unwrap(),
            json!({"status":"expired","reason":null,"expires_at":1000,"grace_ends_at":2000})
        );
    }
}
