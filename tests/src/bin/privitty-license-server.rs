//! `privitty-license-server`: the reference license server (see tests/LICENSE-SERVER.md).

use clap::Parser as _;
use privitty_tests::license_server::cli::{Cli, run};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    privitty_base::logging::init("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
