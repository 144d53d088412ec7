//! The method policy: every method of the pinned engine (`deltachat-rpc-server --openrpc`, 2.65.0:
//! 181 methods) in one table — allowed, denied by default, or allowed with its path parameters
//! confined to the files directory.
//!
//! Owns: [`ENGINE_METHODS`], the denial error (which names `PRIVITTY_RPC_ALLOW`), and rewriting the
//! path parameters of a call to their resolved place inside the files directory. Must not: run
//! methods or decide about the license (that is [`crate::gate`]).
//!
//! Trust boundary: a client that passed authentication still gets only this table. A method the
//! table does not name is not served (an engine upgrade cannot widen the API by itself: a test
//! compares the table with the engine's OpenRPC document).

use serde_json::{Value, json};

use crate::files::{FilesDir, PathError};
use crate::rpc::RpcError;

/// A denied method (the setting that allows it is named in the message and `data`).
pub const POLICY_DENIED: i64 = -32003;
/// A path parameter outside the files directory, or otherwise unusable.
pub const PATH_REFUSED: i64 = -32602;
/// The setting that lets denied methods through.
pub const ALLOW_SETTING: &str = privitty_base::env::RPC_ALLOW;

/// Where a path hides in a method's positional params.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathArg {
    /// A file read by the engine (string; `null` passes).
    In(usize),
    /// A file written by the engine.
    Out(usize),
    /// The `file` member of a `MessageData` object.
    MsgFile(usize),
    /// `set_config [acct, key, value]` when key is `selfavatar`.
    SelfAvatar,
    /// `batch_set_config [acct, {key: value}]`: the `selfavatar` member.
    SelfAvatarIn(usize),
    /// A single directory name the engine joins to its own folder (no `/`, no `..`).
    PlainName(usize),
}

/// What the policy does with a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Allow,
    /// Denied unless named in `PRIVITTY_RPC_ALLOW`; the text says why.
    Deny(&'static str),
    /// Allowed, with these params confined to the files directory.
    Paths(&'static [PathArg]),
}

use Class::{Allow, Deny, Paths};

const EXPORTS: &str = "it copies keys or the whole account out of the gateway";
const IMPORTS: &str = "it replaces keys or the whole account from a file";
const ACCOUNTS: &str = "an edge gateway has exactly one account, managed by privitty-edged";
const EVENTS: &str = "it takes events away from GET /events, which privitty-edged feeds";
const NETWORK: &str = "it makes the engine reach a URL or host chosen by the caller";
const REALTIME: &str = "realtime channels and calls reach public relay servers on the internet";
const SLEEP: &str = "it only holds an engine task busy";

/// Every engine method, sorted as the engine lists them. Keep in step with the pinned engine: the
/// test `policy_covers_the_engine_exactly` fails on any difference.
pub const ENGINE_METHODS: &[(&str, Class)] = &[
    ("sleep", Deny(SLEEP)),
    ("check_email_validity", Allow),
    ("get_system_info", Allow),
    ("get_next_event", Deny(EVENTS)),
    ("get_next_event_batch", Deny(EVENTS)),
    ("add_account", Deny(ACCOUNTS)),
    ("migrate_account", Deny(ACCOUNTS)),
    ("remove_account", Deny(ACCOUNTS)),
    ("get_all_account_ids", Allow),
    ("select_account", Deny(ACCOUNTS)),
    ("get_selected_account_id", Allow),
    ("set_accounts_order", Deny(ACCOUNTS)),
    ("get_all_accounts", Allow),
    ("start_io_for_all_accounts", Allow),
    ("stop_io_for_all_accounts", Allow),
    ("background_fetch", Allow),
    ("stop_background_fetch", Allow),
    ("start_io", Allow),
    ("stop_io", Allow),
    ("get_account_info", Allow),
    ("get_account_file_size", Allow),
    ("is_configured", Allow),
    ("get_info", Allow),
    ("get_storage_usage_report_string", Allow),
    ("get_blob_dir", Allow),
    ("get_migration_error", Allow),
    ("copy_to_blob_dir", Paths(&[PathArg::In(1)])),
    ("set_config", Paths(&[PathArg::SelfAvatar])),
    ("batch_set_config", Paths(&[PathArg::SelfAvatarIn(1)])),
    ("set_config_from_qr", Deny(NETWORK)),
    ("check_qr", Allow),
    ("get_config", Allow),
    ("batch_get_config", Allow),
    ("get_all_ui_config_keys", Allow),
    ("set_stock_strings", Allow),
    ("configure", Allow),
    ("add_pseudo_transport", Allow),
    ("add_or_update_transport", Allow),
    ("add_transport", Allow),
    ("add_transport_from_qr", Deny(NETWORK)),
    ("init_transports", Deny(NETWORK)),
    ("list_transports", Allow),
    ("delete_transport", Allow),
    ("stop_ongoing_process", Allow),
    ("export_self_keys", Deny(EXPORTS)),
    ("import_self_keys", Deny(IMPORTS)),
    ("get_fresh_msgs", Allow),
    ("get_fresh_msg_cnt", Allow),
    ("get_next_msgs", Allow),
    ("wait_next_msgs", Allow),
    ("estimate_auto_deletion_count", Allow),
    ("get_chatlist_entries", Allow),
    ("get_similar_chat_ids", Allow),
    ("get_chatlist_items_by_entries", Allow),
    ("get_full_chat_by_id", Allow),
    ("get_basic_chat_info", Allow),
    ("accept_chat", Allow),
    ("block_chat", Allow),
    ("delete_chat", Allow),
    ("get_chat_encryption_info", Allow),
    ("get_chat_securejoin_qr_code", Allow),
    ("get_chat_securejoin_qr_code_svg", Allow),
    ("secure_join", Allow),
    ("secure_join_with_ux_info", Allow),
    ("leave_group", Allow),
    ("remove_contact_from_chat", Allow),
    ("add_contact_to_chat", Allow),
    ("get_chat_contacts", Allow),
    ("get_past_chat_contacts", Allow),
    ("create_group_chat", Allow),
    ("create_group_chat_unencrypted", Allow),
    ("create_broadcast_list", Allow),
    ("create_broadcast", Allow),
    ("set_chat_name", Allow),
    ("set_chat_description", Allow),
    ("get_chat_description", Allow),
    ("set_chat_profile_image", Paths(&[PathArg::In(2)])),
    ("set_chat_visibility", Allow),
    ("set_chat_ephemeral_timer", Allow),
    ("get_chat_ephemeral_timer", Allow),
    ("add_device_message", Paths(&[PathArg::MsgFile(2)])),
    ("marknoticed_all_chats", Allow),
    ("marknoticed_chat", Allow),
    ("markfresh_chat", Allow),
    ("get_first_unread_message_of_chat", Allow),
    ("set_chat_mute_duration", Allow),
    ("is_chat_muted", Allow),
    ("markseen_msgs", Allow),
    ("get_message_ids", Allow),
    ("get_existing_msg_ids", Allow),
    ("get_message_list_items", Allow),
    ("get_message", Allow),
    ("get_message_html", Allow),
    ("get_message_summary_text", Allow),
    ("get_messages", Allow),
    ("get_message_notification_info", Allow),
    ("set_pinned_message_state", Allow),
    ("get_pinned_messages", Allow),
    ("delete_messages", Allow),
    ("delete_messages_for_all", Allow),
    ("get_message_info", Allow),
    ("get_message_info_object", Allow),
    ("get_message_read_receipt_count", Allow),
    ("get_message_read_receipts", Allow),
    ("download_full_message", Allow),
    ("search_messages", Allow),
    ("message_ids_to_search_results", Allow),
    ("save_msgs", Allow),
    ("get_contact", Allow),
    ("create_contact", Allow),
    ("create_chat_by_contact_id", Allow),
    ("block_contact", Allow),
    ("unblock_contact", Allow),
    ("get_blocked_contacts", Allow),
    ("get_contact_ids", Allow),
    ("get_contacts", Allow),
    ("get_contacts_by_ids", Allow),
    ("delete_contact", Allow),
    ("change_contact_name", Allow),
    ("get_contact_encryption_info", Allow),
    ("lookup_contact_id_by_addr", Allow),
    ("parse_vcard", Paths(&[PathArg::In(0)])),
    ("import_vcard", Paths(&[PathArg::In(1)])),
    ("import_vcard_contents", Allow),
    ("make_vcard", Allow),
    ("get_chat_id_by_contact_id", Allow),
    ("get_chat_media", Allow),
    ("export_backup", Deny(EXPORTS)),
    ("import_backup", Deny(IMPORTS)),
    ("provide_backup", Deny(EXPORTS)),
    ("get_backup_qr", Deny(EXPORTS)),
    ("get_backup_qr_svg", Deny(EXPORTS)),
    ("create_qr_svg", Allow),
    ("get_backup", Deny(IMPORTS)),
    ("maybe_network", Allow),
    ("wait_for_all_work_done", Allow),
    ("get_connectivity", Allow),
    ("get_connectivity_html", Allow),
    ("set_location", Allow),
    ("get_locations", Allow),
    ("send_locations_to_chat", Allow),
    ("is_sending_locations", Allow),
    ("is_sending_locations_to_chat", Allow),
    ("stop_sending_locations", Allow),
    ("send_webxdc_status_update", Allow),
    ("send_webxdc_realtime_data", Deny(REALTIME)),
    ("send_webxdc_realtime_advertisement", Deny(REALTIME)),
    ("leave_webxdc_realtime", Deny(REALTIME)),
    ("get_webxdc_status_updates", Allow),
    ("get_webxdc_info", Allow),
    ("get_webxdc_href", Allow),
    ("get_webxdc_blob", Allow),
    ("set_webxdc_integration", Paths(&[PathArg::In(1)])),
    ("init_webxdc_integration", Allow),
    ("place_outgoing_call", Deny(REALTIME)),
    ("accept_incoming_call", Deny(REALTIME)),
    ("end_call", Deny(REALTIME)),
    ("call_info", Deny(REALTIME)),
    ("ice_servers", Deny(REALTIME)),
    ("get_http_response", Deny(NETWORK)),
    ("forward_messages", Allow),
    ("forward_messages_to_account", Deny(ACCOUNTS)),
    ("resend_messages", Allow),
    ("send_sticker", Paths(&[PathArg::In(2)])),
    ("send_reaction", Allow),
    ("get_message_reactions", Allow),
    ("send_msg", Paths(&[PathArg::MsgFile(2)])),
    ("send_edit_request", Allow),
    ("can_send", Allow),
    ("save_msg_file", Paths(&[PathArg::Out(2)])),
    ("remove_draft", Allow),
    ("get_draft", Allow),
    ("misc_get_sticker_folder", Allow),
    ("misc_save_sticker", Paths(&[PathArg::PlainName(2)])),
    ("misc_get_stickers", Allow),
    ("misc_send_text_message", Allow),
    ("misc_send_msg", Paths(&[PathArg::In(3)])),
    ("misc_set_draft", Paths(&[PathArg::In(3)])),
    ("misc_send_draft", Allow),
    ("get_app_version", Allow),
    ("is_sending_finished", Allow),
];

/// Path params of the Privitty file methods (ours, not the engine's).
pub const PRIVITTY_PATHS: &[(&str, &[PathArg])] = &[
    ("privitty_send_file", &[PathArg::In(3)]),
    ("privitty_send_group_file", &[PathArg::In(2)]),
];

/// The engine setting edged keeps at `0` (realtime channels reach public relays on the internet),
/// unless the operator allowed a realtime method.
pub const REALTIME_KEY: &str = "webxdc_realtime_enabled";

/// The policy in force: the table plus the operator's `PRIVITTY_RPC_ALLOW`.
#[derive(Clone, Debug)]
pub struct Policy {
    allowed_by_operator: Vec<&'static str>,
}

/// What the policy says about one call.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Run it (after [`Policy::confine`] when it has paths).
    Run(Option<&'static [PathArg]>),
    /// Not an engine method at all.
    Unknown,
    Denied(RpcError),
}

impl Policy {
    /// Checks `PRIVITTY_RPC_ALLOW` (comma-separated method names); unknown or already-allowed
    /// names are configuration errors, so a typo never goes unnoticed.
    pub fn new(allow: &[String]) -> Result<Policy, String> {
        let mut allowed_by_operator = Vec::new();
        for name in allow.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            match ENGINE_METHODS.iter().find(|(m, _)| *m == name) {
                Some((m, Deny(_))) => allowed_by_operator.push(*m),
                Some(_) => {
                    return Err(format!(
                        "{name} is allowed already; list only methods the policy denies"
                    ));
                }
                None => {
                    return Err(format!(
                        "{name} is not a method of the engine; see the method table in the README"
                    ));
                }
            }
        }
        Ok(Policy {
            allowed_by_operator,
        })
    }

    /// Whether the operator allowed a realtime method (then `webxdc_realtime_enabled` is theirs).
    pub fn realtime_allowed(&self) -> bool {
        self.allowed_by_operator
            .iter()
            .any(|m| class(m) == Some(Deny(REALTIME)))
    }

    /// Refuses `set_config`/`batch_set_config` of `webxdc_realtime_enabled` unless realtime is
    /// allowed: a client must not turn on what the policy keeps off.
    pub fn check_settings(&self, method: &str, params: &[Value]) -> Result<(), RpcError> {
        let sets_realtime = match method {
            "set_config" => params.get(1).and_then(Value::as_str) == Some(REALTIME_KEY),
            "batch_set_config" => params
                .get(1)
                .and_then(Value::as_object)
                .is_some_and(|m| m.contains_key(REALTIME_KEY)),
            _ => false,
        };
        if sets_realtime && !self.realtime_allowed() {
            return Err(RpcError::new(
                POLICY_DENIED,
                format!(
                    "{REALTIME_KEY} is kept at 0 by the gateway's method policy: {REALTIME}. An operator \
                     can allow realtime with {ALLOW_SETTING}=send_webxdc_realtime_data,send_webxdc_realtime_advertisement,leave_webxdc_realtime"
                ),
            )
            .with_data(json!({"setting": ALLOW_SETTING, "config": REALTIME_KEY})));
        }
        Ok(())
    }

    /// The decision for a method that is not one of edged's own.
    pub fn decide(&self, method: &str) -> Decision {
        match class(method) {
            None => Decision::Unknown,
            Some(Allow) => Decision::Run(None),
            Some(Paths(p)) => Decision::Run(Some(p)),
            Some(Deny(_)) if self.allowed_by_operator.contains(&method) => Decision::Run(None),
            Some(Deny(why)) => Decision::Denied(denied(method, why)),
        }
    }
}

/// The table's class of an engine method (a hash lookup: the table is scanned once, at first use).
pub fn class(method: &str) -> Option<Class> {
    static INDEX: std::sync::LazyLock<std::collections::HashMap<&'static str, Class>> =
        std::sync::LazyLock::new(|| ENGINE_METHODS.iter().copied().collect());
    INDEX.get(method).copied()
}

fn denied(method: &str, why: &str) -> RpcError {
    RpcError::new(
        POLICY_DENIED,
        format!(
            "{method} is denied by the gateway's method policy: {why}. An operator can allow it with \
             {ALLOW_SETTING}={method} (comma-separated list) on privitty-edged"
        ),
    )
    .with_data(json!({"method": method, "setting": ALLOW_SETTING}))
}

/// Rewrites the path params of a call to their resolved place inside the files directory, or says
/// why one is refused. Blocking (`stat`/`realpath`): call it off the async runtime.
pub fn confine(
    method: &str,
    args: &[PathArg],
    params: &mut [Value],
    files: &FilesDir,
) -> Result<(), RpcError> {
    for arg in args {
        let refuse = |e: PathError| {
            RpcError::new(PATH_REFUSED, format!("invalid params: {method}: {e}"))
                .with_data(json!({"files_dir": files.root()}))
        };
        match *arg {
            PathArg::In(i) => {
                if let Some(Value::String(p)) = params.get_mut(i) {
                    *p = path_text(files.input(p).map_err(refuse)?);
                }
            }
            PathArg::Out(i) => {
                if let Some(Value::String(p)) = params.get_mut(i) {
                    *p = path_text(files.output(p).map_err(refuse)?);
                }
            }
            PathArg::MsgFile(i) => {
                if let Some(Value::Object(m)) = params.get_mut(i)
                    && let Some(Value::String(p)) = m.get_mut("file")
                {
                    *p = path_text(files.input(p).map_err(refuse)?);
                }
            }
            PathArg::SelfAvatar => {
                if params.get(1).and_then(Value::as_str) == Some("selfavatar")
                    && let Some(Value::String(p)) = params.get_mut(2)
                {
                    *p = path_text(files.input(p).map_err(refuse)?);
                }
            }
            PathArg::SelfAvatarIn(i) => {
                if let Some(Value::Object(m)) = params.get_mut(i)
                    && let Some(Value::String(p)) = m.get_mut("selfavatar")
                {
                    *p = path_text(files.input(p).map_err(refuse)?);
                }
            }
            PathArg::PlainName(i) => {
                if let Some(Value::String(name)) = params.get(i) {
                    let plain = !name.is_empty()
                        && name != "."
                        && name != ".."
                        && !name.contains('/')
                        && !name.contains('\0');
                    if !plain {
                        return Err(RpcError::new(
                            PATH_REFUSED,
                            format!(
                                "invalid params: {method}: {name:?} must be a plain name (no `/`, not `.` or `..`)"
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn path_text(p: std::path::PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_operator_allow_list_is_checked() {
        let mut names: Vec<_> = ENGINE_METHODS.iter().map(|(m, _)| *m).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ENGINE_METHODS.len());
        let p = Policy::new(&["export_backup".into()]).unwrap();
        assert_eq!(p.decide("export_backup"), Decision::Run(None));
        assert!(matches!(p.decide("get_http_response"), Decision::Denied(_)));
        assert!(
            Policy::new(&["get_info".into()])
                .unwrap_err()
                .contains("allowed already")
        );
        assert!(
            Policy::new(&["nope".into()])
                .unwrap_err()
                .contains("not a method")
        );
        assert_eq!(Policy::new(&[]).unwrap().decide("nope"), Decision::Unknown);
    }

    #[test]
    fn policy_covers_the_engine_exactly() {
        let Some(engine) = crate::test_util::pinned_engine() else {
            return;
        };
        let out = std::process::Command::new(&engine)
            .arg("--openrpc")
            .output()
            .expect("run the engine");
        assert!(out.status.success(), "{out:?}");
        let doc: Value = serde_json::from_slice(&out.stdout).expect("OpenRPC JSON");
        let engine_methods: Vec<&str> = doc["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .map(|m| m["name"].as_str().expect("name"))
            .collect();
        let unclassified: Vec<_> = engine_methods
            .iter()
            .filter(|m| class(m).is_none())
            .collect();
        assert!(
            unclassified.is_empty(),
            "engine methods missing from ENGINE_METHODS (classify each: Allow, Deny or Paths): {unclassified:?}"
        );
        let gone: Vec<_> = ENGINE_METHODS
            .iter()
            .map(|(m, _)| m)
            .filter(|m| !engine_methods.contains(m))
            .collect();
        assert!(
            gone.is_empty(),
            "ENGINE_METHODS names methods the engine no longer has: {gone:?}"
        );
        assert_eq!(
            engine_methods.len(),
            181,
            "the pinned engine 2.65.0 has 181 methods"
        );
        // Every param the engine names like a path is confined (or the method is denied).
        for m in doc["methods"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap();
            for (i, p) in m["params"].as_array().unwrap().iter().enumerate() {
                let pname = p["name"].as_str().unwrap().to_ascii_lowercase();
                let pathlike = pname.contains("path") || pname == "destination" || pname == "file";
                if !pathlike || name == "secure_join_with_ux_info" || name == "get_webxdc_blob" {
                    continue;
                }
                match class(name).unwrap() {
                    Deny(_) => {}
                    Paths(args) => assert!(
                        args.iter()
                            .any(|a| matches!(a, PathArg::In(j) | PathArg::Out(j) if *j == i)),
                        "{name} param {i} ({pname}) is a path that is not confined"
                    ),
                    Allow => panic!("{name} param {i} ({pname}) is a path: confine or deny it"),
                }
            }
        }
    }

    #[test]
    fn the_denial_names_the_setting() {
        let Decision::Denied(e) = Policy::new(&[]).unwrap().decide("get_http_response") else {
            panic!()
        };
        assert_eq!(e.code, POLICY_DENIED);
        assert!(e.message.contains("PRIVITTY_RPC_ALLOW=get_http_response"));
        assert_eq!(e.data.unwrap()["setting"], ALLOW_SETTING);
    }

    #[test]
    fn paths_are_rewritten_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = FilesDir::open(&dir.path().join("files")).unwrap();
        std::fs::write(files.root().join("r.csv"), "x").unwrap();
        let mut params = vec![json!(1), json!(10), json!({"file": "r.csv", "text": "hi"})];
        confine("send_msg", &[PathArg::MsgFile(2)], &mut params, &files).unwrap();
        assert_eq!(
            params[2]["file"],
            json!(files.root().join("r.csv").to_str().unwrap())
        );
        let mut params = vec![json!(1), json!(10), json!({"file": "/proc/1/environ"})];
        let e = confine("send_msg", &[PathArg::MsgFile(2)], &mut params, &files).unwrap_err();
        assert_eq!(e.code, PATH_REFUSED);
        assert!(e.message.contains("outside the files directory"), "{e:?}");
        // A text-only message and a null image pass untouched.
        let mut params = vec![json!(1), json!(10), json!({"text": "hi"})];
        confine("send_msg", &[PathArg::MsgFile(2)], &mut params, &files).unwrap();
        let mut params = vec![json!(1), json!(10), json!(null)];
        confine(
            "set_chat_profile_image",
            &[PathArg::In(2)],
            &mut params,
            &files,
        )
        .unwrap();
        // selfavatar only for that key.
        let mut params = vec![json!(1), json!("selfavatar"), json!("/etc/shadow")];
        assert!(confine("set_config", &[PathArg::SelfAvatar], &mut params, &files).is_err());
        let mut params = vec![json!(1), json!("displayname"), json!("/etc/shadow")];
        confine("set_config", &[PathArg::SelfAvatar], &mut params, &files).unwrap();
        let mut params = vec![json!(1), json!({"selfavatar": "../../x"})];
        assert!(
            confine(
                "batch_set_config",
                &[PathArg::SelfAvatarIn(1)],
                &mut params,
                &files
            )
            .is_err()
        );
        let mut params = vec![json!(1), json!(5), json!("../../etc")];
        assert!(
            confine(
                "misc_save_sticker",
                &[PathArg::PlainName(2)],
                &mut params,
                &files
            )
            .is_err()
        );
        let mut params = vec![json!(1), json!(5), json!("/tmp/out")];
        assert!(confine("save_msg_file", &[PathArg::Out(2)], &mut params, &files).is_err());
    }
}
