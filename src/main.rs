//! The `hubrelay` binary: every role and admin command in one executable.

fn main() -> std::process::ExitCode {
    hubrelay::cli::main()
}
