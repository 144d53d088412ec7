fn main() -> std::process::ExitCode {
    licensectl::cli::main()
}
