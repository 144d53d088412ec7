//! `privitty-init`: see [`supervisor::main`].

fn main() -> std::process::ExitCode {
    supervisor::main()
}
