//! End-to-end tests: run the real `headroom` binary.

use std::process::Command;

/// The binary starts and reports its version.
#[test]
fn version_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(headroom_engine::VERSION));
}
