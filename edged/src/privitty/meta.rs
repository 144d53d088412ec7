//! What one protected file is: whose it is, its policy and its original, as both the `.prv`
//! header ([`super::format::Header`]) and the key store's record ([`super::store::FileRecord`])
//! carry it.
//!
//! Owns that one description, so the header and the record cannot drift apart field by field. It
//! is a leaf: `format` and `store` both build on it, and it uses neither. Its field names are keys
//! of the record JSON (`store` flattens it into the record, `PRV-FORMAT.md`): renaming one changes
//! the format on disk. The header's bytes stay `format`'s.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The description of one protected file, fixed when it is encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub file_id: Uuid,
    pub account_id: u32,
    pub chat_id: u32,
    /// `None` for a group file.
    pub peer_contact_id: Option<u32>,
    pub allow_download: bool,
    pub allow_forward: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` = never expires.
    pub expires_at: Option<i64>,
    pub original_name: String,
    pub original_size: u64,
}
