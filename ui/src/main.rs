//! `headroom`: with no arguments opens the desktop app; subcommands are the headless CLI.

use std::process::ExitCode;

use clap::Parser;

use headroom_ui::app;
mod cli;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = cli::Cli::parse();
    match args.command {
        Some(command) => cli::run(command),
        None => match app::run_app(args.paths) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("headroom: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
