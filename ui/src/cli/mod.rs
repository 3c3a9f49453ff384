//! The headless CLI: the same engine as the app, driven from a terminal or a script.
//!
//! Every subcommand takes `--json`, which prints exactly one JSON object on stdout (the keys in
//! DESIGN.md's CLI contract); errors print one line for a person on stderr, and in `--json` mode
//! an `{"error", "detail"}` object on stdout too, with a non-zero exit code.

mod args;
mod bench_cmd;
mod compare_cmd;
mod inspect;
mod plan_cmd;
mod progress;
mod run_cmd;
mod sweep_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};


/// Headroom: run heavy image and audio models in the memory you have.
#[derive(Parser, Debug)]
#[command(name = "headroom", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Model or output files to open in the desktop app (as if dropped on it).
    pub paths: Vec<PathBuf>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show what a model file is: format, family, tensors, parameters, bytes per precision.
    Inspect(inspect::InspectArgs),
    /// Predict memory per device for a model with knobs and a request, and say whether it fits.
    Plan(plan_cmd::PlanArgs),
    /// Write the initial noise the engine would use for a seed and shape.
    Noise(run_cmd::NoiseArgs),
    /// Generate outputs and their profiles.
    Run(run_cmd::RunArgs),
    /// Rerun a profile (or an output with one embedded) and compare the result.
    Reproduce(run_cmd::ReproduceArgs),
    /// Run twice with different knobs and compare quality, time and memory.
    Ab(compare_cmd::AbArgs),
    /// Time and measure one model under several knob settings (default: the mini model).
    Bench(bench_cmd::BenchArgs),
    /// Run one request once per value of a knob and compare each with the f32 reference.
    Sweep(sweep_cmd::SweepArgs),
}

/// Runs a subcommand, printing its result or its error, and returns the exit code.
pub fn run(command: Command) -> ExitCode {
    let (json, result) = match command {
        Command::Inspect(a) => (a.json, inspect::run(&a)),
        Command::Plan(a) => (a.json, plan_cmd::run(&a)),
        Command::Noise(a) => (a.json, run_cmd::noise(&a)),
        Command::Run(a) => (a.json, run_cmd::run(&a)),
        Command::Reproduce(a) => (a.json, run_cmd::reproduce(&a)),
        Command::Ab(a) => (a.json, compare_cmd::run(&a)),
        Command::Bench(a) => (a.json, bench_cmd::run(&a)),
        Command::Sweep(a) => (a.json, sweep_cmd::run(&a)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report_error(json, &e);
            ExitCode::FAILURE
        }
    }
}

/// An error as the one line stderr gets: `headroom: MESSAGE`, its causes after it in parentheses.
fn error_line(e: &anyhow::Error) -> String {
    let message = e.to_string();
    let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string().replace('\n', "; ")).collect();
    if causes.is_empty() {
        format!("headroom: {message}")
    } else {
        format!("headroom: {message} ({})", causes.join("; "))
    }
}

/// Prints an error: one line on stderr, and the JSON error object on stdout in `--json` mode.
fn report_error(json: bool, e: &anyhow::Error) {
    let message = e.to_string();
    let detail: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    eprintln!("{}", error_line(e));
    if json {
        println!("{}", serde_json::json!({ "error": message, "detail": detail.join("; ") }));
    }
}

/// Prints one JSON value on stdout.
fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

pub use headroom_engine::human_bytes;

#[cfg(test)]
mod tests {
    /// An error with causes (a worker's out-of-memory error and its stage) is still one line.
    #[test]
    fn errors_print_in_one_line() {
        let e = anyhow::anyhow!("during decode\nwith tile 0").context("out of memory on cpu: try slicing.vae_tile=32");
        let line = super::error_line(&e);
        assert_eq!(line, "headroom: out of memory on cpu: try slicing.vae_tile=32 (during decode; with tile 0)");
        assert_eq!(super::error_line(&anyhow::anyhow!("plain")), "headroom: plain");
    }
}
