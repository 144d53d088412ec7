//! `privitty-edged`: parse, set up logging, run, map the outcome to the documented exit code
//! (0 clean stop, 1 runtime failure, 2 configuration or usage error). The image's multi-call
//! executable (supervisor/multicall) compiles this same file in and calls its `main`.

use std::process::ExitCode;

use clap::Parser;

pub(crate) fn main() -> ExitCode {
    // Everything edged and the engine create (the message database, keys, the files directory)
    // is for the service user alone; under privitty-init this is already the inherited umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let args = match edged::Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    privitty_base::logging::init("info");
    let path = std::env::var_os("PATH");
    let config = match edged::Config::from_args(args, path.as_deref(), edged::config::hostname()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("privitty-edged: {e}");
            return ExitCode::from(2);
        }
    };
    match edged::run_standalone(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("privitty-edged: {:#}", anyhow::Error::from(e));
            ExitCode::from(1)
        }
    }
}
