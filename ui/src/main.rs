//! `headroom`: with no arguments opens the desktop app; subcommands are the headless CLI.

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let paths: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    headroom_ui::app::run_app(paths)
}
