//! Logging on stderr: the level `-v` picks, and the same level for the worker processes a
//! command starts.

use std::sync::OnceLock;

/// The filter `-v` chose, when `RUST_LOG` did not set one.
static CHOSEN: OnceLock<&'static str> = OnceLock::new();

/// Starts logging: `RUST_LOG` if set, else warn, debug (`-v`) or trace (`-vv`).
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => {
            let _ = CHOSEN.set(default);
            tracing_subscriber::EnvFilter::new(default)
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or a CI capture gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The level `-v` chose for this process (None when `RUST_LOG` chose it), for workers
/// started elsewhere (a Slurm array).
pub fn chosen() -> Option<&'static str> {
    CHOSEN.get().copied()
}

/// Makes a child process log as this one does: `-v` becomes its `RUST_LOG` (a `RUST_LOG`
/// of this process is inherited as it is).
pub fn pass_on(cmd: &mut std::process::Command) {
    if let Some(level) = chosen() {
        cmd.env("RUST_LOG", level);
    }
}
