//! The files directory (`PRIVITTY_FILES_DIR`, default `<accounts>/files`): the one place where paths
//! given by API clients may point.
//!
//! Owns: creating the directory (0700), and resolving a client's path into one inside it — relative
//! paths are taken relative to it, absolute ones must already be inside it; symlinks are resolved
//! and the result must still be inside (a link pointing out is refused), inputs must be regular
//! files (a FIFO would hang the engine), outputs must not be symlinks. Must not: open or create
//! the files themselves (the engine and the Privitty module do that, on the resolved path).
//!
//! Trust boundary: paths come from network clients. A process running as the gateway's own user can
//! still swap a checked path for a link between the check and the engine's open; the directory is
//! 0700 so no other user can.

use std::path::{Component, Path, PathBuf};

/// Where client-given paths may point.
#[derive(Clone, Debug)]
pub struct FilesDir {
    /// Canonical (no symlinks, absolute).
    root: PathBuf,
}

/// Why a client's path is refused; the message tells the client what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error(
        "path {given:?} is outside the files directory {root}: put the file there (the gateway reads and writes client files only inside it; relative paths are taken relative to it)"
    )]
    Outside { given: String, root: String },
    #[error("path {given:?} does not exist in the files directory {root}")]
    NotFound { given: String, root: String },
    #[error("path {given:?} is not a regular file")]
    NotRegular { given: String },
    #[error("path {given:?} is a symlink; the gateway does not write through links")]
    Symlink { given: String },
    #[error("path {given:?} must name a file (no trailing `/`, `.` or `..`)")]
    NotAFileName { given: String },
    #[error("path {given:?} cannot be checked: {problem}")]
    Io { given: String, problem: String },
}

impl FilesDir {
    /// Creates the directory (0700, parents as needed) when missing and resolves it. An existing
    /// directory that is group- or world-accessible is narrowed to 0700 when we own it.
    pub fn open(path: &Path) -> std::io::Result<FilesDir> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            return Err(std::io::Error::other(format!(
                "{} is a symlink; make it a directory (the files directory is never reached through a link)",
                path.display()
            )));
        }
        if !meta.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        if meta.mode() & 0o077 != 0 && meta.uid() == nix::unistd::geteuid().as_raw() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(FilesDir {
            root: std::fs::canonicalize(path)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn outside(&self, given: &str) -> PathError {
        PathError::Outside {
            given: given.to_string(),
            root: self.root.display().to_string(),
        }
    }

    fn joined(&self, given: &str) -> PathBuf {
        let p = Path::new(given);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// An existing regular file inside the directory; returns its canonical path.
    pub fn input(&self, given: &str) -> Result<PathBuf, PathError> {
        if given.is_empty() {
            return Err(PathError::NotAFileName {
                given: given.to_string(),
            });
        }
        let resolved = match std::fs::canonicalize(self.joined(given)) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Say "outside" for paths that are outside whether or not they exist, so a
                // client cannot probe the rest of the file system.
                return Err(if self.lexically_inside(given) {
                    PathError::NotFound {
                        given: given.to_string(),
                        root: self.root.display().to_string(),
                    }
                } else {
                    self.outside(given)
                });
            }
            Err(_) if !self.lexically_inside(given) => return Err(self.outside(given)),
            Err(e) => {
                return Err(PathError::Io {
                    given: given.to_string(),
                    problem: e.to_string(),
                });
            }
        };
        if !resolved.starts_with(&self.root) || resolved == self.root {
            return Err(self.outside(given));
        }
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_file() => Ok(resolved),
            Ok(_) => Err(PathError::NotRegular {
                given: given.to_string(),
            }),
            Err(e) => Err(PathError::Io {
                given: given.to_string(),
                problem: e.to_string(),
            }),
        }
    }

    /// A file to be written inside the directory: its parent must exist inside, its name must be a
    /// plain name, and it must not be a symlink (it may exist: the writer decides about replacing).
    pub fn output(&self, given: &str) -> Result<PathBuf, PathError> {
        let joined = self.joined(given);
        let name = match joined.components().next_back() {
            Some(Component::Normal(n)) if !given.ends_with('/') => n.to_owned(),
            _ => {
                return Err(PathError::NotAFileName {
                    given: given.to_string(),
                });
            }
        };
        let parent = joined.parent().unwrap_or(Path::new("/"));
        let parent = match std::fs::canonicalize(parent) {
            Ok(p) => p,
            Err(_) if !self.lexically_inside(given) => return Err(self.outside(given)),
            Err(e) => {
                return Err(PathError::Io {
                    given: given.to_string(),
                    problem: format!("its directory: {e}"),
                });
            }
        };
        if !parent.starts_with(&self.root) {
            return Err(self.outside(given));
        }
        let target = parent.join(name);
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => Err(PathError::Symlink {
                given: given.to_string(),
            }),
            Ok(m) if !m.is_file() => Err(PathError::NotRegular {
                given: given.to_string(),
            }),
            _ => Ok(target),
        }
    }

    /// Whether `given`, read without touching the file system, stays inside the root.
    fn lexically_inside(&self, given: &str) -> bool {
        let joined = self.joined(given);
        let mut depth_below_root: Option<usize> = None;
        let mut stack: Vec<Component<'_>> = Vec::new();
        for c in joined.components() {
            match c {
                Component::ParentDir => {
                    stack.pop();
                }
                Component::CurDir => {}
                other => stack.push(other),
            }
        }
        let normal: PathBuf = stack.iter().collect();
        if normal.starts_with(&self.root) {
            depth_below_root = Some(normal.components().count() - self.root.components().count());
        }
        depth_below_root.is_some_and(|d| d > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, FilesDir) {
        let dir = tempfile::tempdir().unwrap();
        let files = FilesDir::open(&dir.path().join("files")).unwrap();
        (dir, files)
    }

    #[test]
    fn created_0700_and_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("files");
        FilesDir::open(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        FilesDir::open(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(FilesDir::open(&link).is_err());
    }

    #[test]
    fn inputs() {
        let (dir, files) = setup();
        let root = files.root().to_path_buf();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/b.txt"), "b").unwrap();
        assert_eq!(files.input("a.txt").unwrap(), root.join("a.txt"));
        assert_eq!(files.input("sub/../a.txt").unwrap(), root.join("a.txt"));
        let abs = root.join("sub/b.txt");
        assert_eq!(files.input(abs.to_str().unwrap()).unwrap(), abs);
        // Outside, existing or not, looks the same.
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        for bad in [
            "/etc/passwd",
            "/proc/1/environ",
            "../secret",
            "/nonexistent/x",
            "../nope",
        ] {
            assert!(
                matches!(files.input(bad), Err(PathError::Outside { .. })),
                "{bad}"
            );
        }
        // A link inside that points out is refused; one that stays inside is fine.
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        assert!(matches!(files.input("out"), Err(PathError::Outside { .. })));
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("in")).unwrap();
        assert_eq!(files.input("in").unwrap(), root.join("a.txt"));
        // Directories and FIFOs are not inputs.
        assert!(matches!(
            files.input("sub"),
            Err(PathError::NotRegular { .. })
        ));
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(matches!(
            files.input("fifo"),
            Err(PathError::NotRegular { .. })
        ));
        assert!(matches!(
            files.input("missing"),
            Err(PathError::NotFound { .. })
        ));
        assert!(matches!(files.input("."), Err(PathError::Outside { .. })));
    }

    #[test]
    fn outputs() {
        let (dir, files) = setup();
        let root = files.root().to_path_buf();
        assert_eq!(files.output("new.bin").unwrap(), root.join("new.bin"));
        assert!(matches!(
            files.output("/tmp/x"),
            Err(PathError::Outside { .. })
        ));
        assert!(matches!(
            files.output("../x"),
            Err(PathError::Outside { .. })
        ));
        assert!(matches!(
            files.output("dir/"),
            Err(PathError::NotAFileName { .. })
        ));
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        assert!(matches!(
            files.output("up/x"),
            Err(PathError::Outside { .. })
        ));
        std::os::unix::fs::symlink("/etc/passwd", root.join("l")).unwrap();
        assert!(matches!(files.output("l"), Err(PathError::Symlink { .. })));
    }
}
