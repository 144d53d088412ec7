//! The `privitty-edge` / `licensectl` command line.

/// Runs the CLI and returns the process exit code (documented in the README).
pub fn main() -> std::process::ExitCode {
    todo!("licensectl: cli::main")
}
