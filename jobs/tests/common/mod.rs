//! Helpers shared by the command-line tests: running `dfp`, and the fast settings the
//! end-to-end tests use (`tests/fast.toml`).

#![allow(dead_code)] // each test file uses its own share of the helpers

use std::net::TcpListener;
use std::path::Path;
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

/// Asserts that a `dfp` run exited 0, showing its stderr when it did not.
#[track_caller]
pub fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dfp`, to be started by the caller.
pub fn dfp_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dfp"));
    c.env("DFP_LOG", "warn");
    c
}

/// A hostfile of `n` processes on free ports of 127.0.0.1.
pub fn hostfile(path: &Path, n: usize) {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let text: String = listeners
        .iter()
        .map(|l| {
            format!(
                "127.0.0.1:{}\n",
                l.local_addr().expect("its address").port()
            )
        })
        .collect();
    std::fs::write(path, text).expect("write the hostfile");
}
