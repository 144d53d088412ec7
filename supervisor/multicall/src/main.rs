//! `privitty`: the image's one executable. Run under the name `privitty-init` (or `tini`,
//! `dumb-init`), `privitty-edged`, `privitty-edge` or `licensectl` — the last component of argv[0],
//! a symlink's name — it is that program, with its own options, `--help`, output and exit codes.
//!
//! Why one executable: the three binaries each carried tokio, hyper, rustls, reqwest and the
//! license library (14.1 MB of a 41.2 MB image); linked once, they exist once. PID 1 pays nothing
//! for the daemon's code it never runs: file pages it does not touch are not resident (see
//! supervisor/README.md, "Where the memory goes").
//!
//! Owns: the dispatch on the name. Must not: hold any program's logic; each program's entry is the
//! same function its own binary calls (edged's `main.rs` is compiled in as `daemon`).

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

#[path = "../../../edged/src/main.rs"]
mod daemon;

/// A program this executable can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Program {
    Init,
    Edged,
    Edge,
    Licensectl,
}

/// The names it answers to (`tini` and `dumb-init`: privitty-init in plain mode).
const NAMES: [(&str, Program); 6] = [
    ("privitty-init", Program::Init),
    ("tini", Program::Init),
    ("dumb-init", Program::Init),
    ("privitty-edged", Program::Edged),
    ("privitty-edge", Program::Edge),
    ("licensectl", Program::Licensectl),
];

/// The program for `arg0` (a path: its last component counts).
fn program(arg0: &OsStr) -> Option<Program> {
    let name = Path::new(arg0).file_name()?;
    NAMES.iter().find(|(n, _)| name == *n).map(|(_, p)| *p)
}

fn main() -> ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    match program(&arg0) {
        Some(Program::Init) => supervisor::main(),
        Some(Program::Edged) => daemon::main(),
        Some(Program::Edge) => licensectl::cli::main_as(licensectl::cli::Name::PrivittyEdge),
        Some(Program::Licensectl) => licensectl::cli::main_as(licensectl::cli::Name::Licensectl),
        None => {
            let names: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
            eprintln!(
                "{}: run this executable under one of its names ({}), e.g. through a symlink: \
                 ln -s {} privitty-edge",
                arg0.to_string_lossy(),
                names.join(", "),
                arg0.to_string_lossy()
            );
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_path_component_picks_the_program() {
        for (arg0, expected) in [
            ("privitty-init", Some(Program::Init)),
            ("/usr/local/bin/privitty-init", Some(Program::Init)),
            ("/sbin/tini", Some(Program::Init)),
            ("dumb-init", Some(Program::Init)),
            ("/usr/local/bin/privitty-edged", Some(Program::Edged)),
            ("privitty-edge", Some(Program::Edge)),
            ("./licensectl", Some(Program::Licensectl)),
            ("privitty", None),
            ("privitty-edge-old", None),
            ("", None),
        ] {
            assert_eq!(program(OsStr::new(arg0)), expected, "{arg0:?}");
        }
    }
}
