//! Helpers shared by the command-line tests: running `dfp`, and the fast settings the
//! end-to-end tests use (`tests/fast.toml`).

#![allow(dead_code)] // each test file uses its own share of the helpers

use std::process::{Command, Output};

/// Small, fast settings: tiny networks, few epochs, short history.
pub const FAST_CONFIG: &str = include_str!("../../../tests/fast.toml");

/// `dfp` with `args`, run to its end (warnings and errors only on stderr).
pub fn dfp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfp"))
        .args(args)
        .env("DFP_LOG", "warn")
        .output()
        .expect("run dfp")
}

/// `dfp`, to be started by the caller.
pub fn dfp_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dfp"));
    c.env("DFP_LOG", "warn");
    c
}
