//! `licensectl`: the same program as `privitty-edge`, with the license commands at the top level
//! (`licensectl status|activate|sync|deactivate`).

fn main() -> std::process::ExitCode {
    licensectl::cli::main_as(licensectl::cli::Name::Licensectl)
}
