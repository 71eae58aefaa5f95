//! The `ttlora` command-line tool; all logic lives in the library, this only wires it up.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
