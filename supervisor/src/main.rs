use std::process::ExitCode;

use supervisor::config::{Config, ConfigError, exit};
use supervisor::pid1::{Pid1, hardening};

fn main() -> ExitCode {
    // Before anything can change it: `-p` compares with it to catch a parent that died early.
    let parent = nix::unistd::getppid();
    if let Err(e) = supervisor::pid1::block_signals() {
        // Not fatal: only a signal in the first milliseconds could be missed.
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
    licensectl::logging::init(config.log_filter());

    // Plain mode has nothing to run concurrently: one thread keeps PID 1 small.
    let runtime = if config.plain {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("privitty-init: cannot start the async runtime: {e}");
            return code(exit::FAILURE);
        }
    };
    let exit_code = runtime.block_on(async {
        let mut pid1 = match Pid1::install() {
            Ok(pid1) => pid1,
            Err(e) => {
                tracing::error!("{e}");
                return exit::FAILURE;
            }
        };
        if config.plain {
            supervisor::plain::run(&config, &mut pid1).await
        } else {
            supervisor::managed::run(&config, &mut pid1).await
        }
    });
    // Dropping the runtime would wait for blocking tasks, such as a license operation waiting
    // for the accounts-dir lock: the process tree is gone, so nothing is left worth waiting for.
    runtime.shutdown_background();
    code(exit_code)
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}
