//! The desktop app (being built on the wip/ui branch).

use std::path::PathBuf;

/// Opens the desktop window.
pub fn run_app(_initial_paths: Vec<PathBuf>) -> anyhow::Result<()> {
    anyhow::bail!("the desktop app is not built into this binary yet")
}
