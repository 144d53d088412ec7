//! Positional JSON-RPC parameter checks for the Privitty methods.
//!
//! Owns exact typing (an integer is never a string, a float or a boolean) and the wording of
//! -32602 messages, which name the parameter, its position and what is expected. It must not
//! touch files or the key store.

use std::path::PathBuf;

use serde_json::Value;
use uuid::Uuid;

use super::error::PrivittyError;

/// Longest accepted `duration_minutes`: 100 years, far beyond any sensible expiry yet small
/// enough that adding it to a timestamp never overflows.
pub const MAX_DURATION_MINUTES: u64 = 100 * 365 * 24 * 60;

/// The parameters of one call, with their documented names for error messages.
#[derive(Debug)]
pub struct Params<'a> {
    method: &'a str,
    values: &'a [Value],
    names: &'static [&'static str],
}

impl<'a> Params<'a> {
    /// Checks the count first, so every later accessor can index safely.
    pub fn new(
        method: &'a str,
        values: &'a [Value],
        names: &'static [&'static str],
    ) -> Result<Params<'a>, PrivittyError> {
        if values.len() != names.len() {
            return Err(PrivittyError::InvalidParams(format!(
                "{method} takes {} parameters [{}], got {}",
                names.len(),
                names.join(", "),
                values.len()
            )));
        }
        Ok(Params {
            method,
            values,
            names,
        })
    }

    fn bad(&self, index: usize, expected: &str) -> PrivittyError {
        PrivittyError::InvalidParams(format!(
            "{} parameter {} `{}` must be {expected}, got {}",
            self.method,
            index + 1,
            self.names[index],
            describe(&self.values[index])
        ))
    }

    /// An integer in `min..=u32::MAX` (Delta Chat account, chat and contact ids are u32).
    pub fn id(&self, index: usize, min: u32) -> Result<u32, PrivittyError> {
        self.values[index]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= min)
            .ok_or_else(|| self.bad(index, &format!("an integer from {min} to {}", u32::MAX)))
    }

    pub fn bool(&self, index: usize) -> Result<bool, PrivittyError> {
        self.values[index]
            .as_bool()
            .ok_or_else(|| self.bad(index, "a boolean (true or false)"))
    }

    /// Seconds of access; 0 = without end.
    pub fn seconds(&self, index: usize) -> Result<u64, PrivittyError> {
        self.values[index]
            .as_u64()
            .filter(|n| *n <= MAX_DURATION_MINUTES * 60)
            .ok_or_else(|| {
                self.bad(
                    index,
                    &format!(
                        "an integer from 0 (no end) to {}",
                        MAX_DURATION_MINUTES * 60
                    ),
                )
            })
    }

    /// Minutes until expiry; 0 = never.
    pub fn minutes(&self, index: usize) -> Result<u64, PrivittyError> {
        self.values[index]
            .as_u64()
            .filter(|n| *n <= MAX_DURATION_MINUTES)
            .ok_or_else(|| {
                self.bad(
                    index,
                    &format!(
                        "an integer number of minutes from 0 (no expiry) to {MAX_DURATION_MINUTES}"
                    ),
                )
            })
    }

    /// An absolute path with a final file name component (no trailing `/`, `.` or `..`).
    pub fn absolute_path(&self, index: usize) -> Result<PathBuf, PrivittyError> {
        let text = self.values[index]
            .as_str()
            .ok_or_else(|| self.bad(index, "a string with an absolute file path"))?;
        let path = PathBuf::from(text);
        if text.contains('\0') {
            return Err(self.bad(index, "a path without NUL bytes"));
        }
        if !path.is_absolute() {
            return Err(self.bad(index, "an absolute path (starting with /)"));
        }
        let named = path.file_name().is_some() && !text.ends_with('/') && !text.ends_with("/.");
        if !named {
            return Err(self.bad(index, "the path of a file, not of a directory"));
        }
        Ok(path)
    }

    /// A file id as returned by `privitty_send_file` (a UUID string).
    pub fn file_id(&self, index: usize) -> Result<Uuid, PrivittyError> {
        self.values[index]
            .as_str()
            .and_then(|s| Uuid::try_parse(s).ok())
            .ok_or_else(|| {
                self.bad(
                    index,
                    "a file id string as returned by privitty_send_file (a UUID)",
                )
            })
    }
}

/// A short description of a JSON value for error messages. The string parameters here (paths,
/// file ids) are not secret, so short ones are quoted to show what was received.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() <= 120 => Value::String(s.clone()).to_string(),
        Value::String(s) => format!("a string of {} characters", s.chars().count()),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}
