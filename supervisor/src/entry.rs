//! The process entry of `privitty-init` (also reached through the multi-call binary under the
//! names `privitty-init`, `tini` and `dumb-init`): parse, set up logging, install the reaper, run
//! the mode, return the exit code. Must not exit the process itself, except for `--help` and
//! `--version` (clap prints and exits).

use std::process::ExitCode;

use crate::config::{Config, ConfigError, exit};
use crate::pid1::{Pid1, hardening};

/// Runs privitty-init with this process's arguments and environment.
pub fn main() -> ExitCode {
    // Before anything can change it: `-p` compares with it to catch a parent that died early.
    let parent = nix::unistd::getppid();
    if let Err(e) = crate::pid1::block_signals() {
        // Not fatal here: `Pid1::install` tries again and fails properly.
        eprintln!("privitty-init: cannot block signals during start-up: {e}");
    }
    // Our environment may hold the license TOKEN: closed to same-uid processes from here on.
    if let Err(e) = hardening::make_undumpable() {
        eprintln!("privitty-init: cannot make the process non-dumpable: {e}");
        return code(exit::FAILURE);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        // --help, --version and usage errors: clap prints and exits 0 or 2.
        Err(ConfigError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("privitty-init: {e}");
            return code(exit::CONFIG);
        }
    };
    // Nothing has been created yet; everything from here on, children's files included, is private.
    if !config.plain {
        hardening::set_private_umask();
    }
    if let Some(sig) = config.parent_death_signal
        && let Err(e) = hardening::set_parent_death_signal(sig, parent)
    {
        eprintln!("privitty-init: cannot set the parent-death signal {sig}: {e}");
        return code(exit::FAILURE);
    }
    privitty_base::logging::init(config.log_filter());

    // Plain mode waits for signals alone; managed mode also polls its sockets and pipes.
    let installed = if config.plain {
        Pid1::install()
    } else {
        Pid1::install_with_fds()
    };
    let mut pid1 = match installed {
        Ok(pid1) => pid1,
        Err(e) => {
            tracing::error!("{e}");
            return code(exit::FAILURE);
        }
    };
    let exit_code = if config.plain {
        crate::plain::run(&config, &mut pid1)
    } else {
        crate::managed::run(&config, &mut pid1)
    };
    code(exit_code)
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}
