//! `headroom`: with no arguments opens the desktop app; subcommands are the headless CLI.

use std::process::ExitCode;

use clap::Parser;

use headroom_ui::app;
mod cli;

/// Counts heap bytes so every run reports its exact peak heap (two relaxed atomics per
/// allocation; model tensors are few and large, so the cost does not show).
#[global_allocator]
static ALLOC: headroom_engine::telemetry::CountingAlloc = headroom_engine::telemetry::CountingAlloc;

fn main() -> ExitCode {
    // SAFETY: first thing in main; no other thread exists yet
    unsafe { headroom_engine::nn::cpu::use_one_pool() };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = cli::Cli::parse();
    match args.command {
        Some(command) => {
            // a reader that stops early (`headroom inspect M | head`) ends the command quietly,
            // as it does other Unix tools, instead of a panic on the next write
            // SAFETY: restores the default action of one signal before any output is written
            #[cfg(unix)]
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            cli::run(command)
        }
        None => match app::run_app(args.paths) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("headroom: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
