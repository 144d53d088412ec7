//! The control app `privitty-ctl.xdc`: a zip with `manifest.toml` and an `index.html` that tells a
//! human in a stock client what the app is (sources in `edged/ctl-app/`).
//!
//! Owns the bytes of the app; the same build always writes the same bytes (no timestamps), so the
//! file is rewritten only when a new build changes it.

use std::io::{Cursor, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::privitty::{PrivittyError, read_capped, write_atomic};

const MANIFEST: &str = include_str!("../../ctl-app/manifest.toml");
const INDEX: &str = include_str!("../../ctl-app/index.html");

/// The app's bytes.
pub fn bytes() -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644);
    for (name, text) in [("manifest.toml", MANIFEST), ("index.html", INDEX)] {
        zip.start_file(name, options).expect("zip in memory");
        zip.write_all(text.as_bytes()).expect("zip in memory");
    }
    zip.finish().expect("zip in memory").into_inner()
}

/// Writes the app to `path` unless it already holds these bytes.
pub fn write(path: &Path) -> Result<(), PrivittyError> {
    let want = bytes();
    if read_capped(path, 1024 * 1024)?.as_deref() == Some(&want[..]) {
        return Ok(());
    }
    write_atomic(path, &want, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_app_is_a_zip_with_index_html_and_stable_bytes() {
        let a = super::bytes();
        assert_eq!(a, super::bytes(), "same bytes every time");
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(a)).unwrap();
        let mut names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["index.html", "manifest.toml"]);
        let index = zip.by_name("index.html").unwrap();
        assert!(index.size() > 500);
    }
}
