//! `headroom plan MODEL [KNOBS] [REQUEST] [--budget SIZE] [--json]`: predicted bytes per device
//! and the verdict, with knob changes that would make it fit.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use headroom_engine::plan::{Plan, plan_model};
use headroom_engine::{Knobs, ModelRef};

use super::args::{KnobArgs, RequestArgs, parse_size};
use super::{human_bytes, print_json};

/// Arguments of `plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// A model path or builtin:NAME.
    pub model: String,
    #[command(flatten)]
    pub request: RequestArgs,
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Memory budget of the run's device (default: its free memory now).
    #[arg(long, value_parser = parse_size)]
    pub budget: Option<u64>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Plans and prints.
pub fn run(a: &PlanArgs) -> Result<ExitCode> {
    let mut knobs = Knobs::default();
    a.knobs.apply(&mut knobs)?;
    let model = ModelRef::parse(&a.model);
    let mut request = super::run_cmd::native_request(&model);
    a.request.apply(&mut request)?;
    request.validate()?;
    let p = plan_model(&model, &knobs, &request, a.budget)?;
    if a.json {
        print_json(&serde_json::to_value(&p)?);
    } else {
        print_human(&p);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(p: &Plan) {
    println!("verdict: {}", p.verdict.name());
    for d in &p.per_device {
        let budget = d.budget_bytes.map_or("unknown budget".into(), |b| format!("of {}", human_bytes(b)));
        println!(
            "  {:<7} {:>11} {budget}  (weights {}, activations {} at {}, runtime {})",
            d.device,
            human_bytes(d.total_bytes),
            human_bytes(d.weights_bytes),
            human_bytes(d.activation_bytes),
            d.peak_stage,
            human_bytes(d.overhead_bytes)
        );
        for (c, b) in &d.components {
            println!("            {c:<28} {}", human_bytes(*b));
        }
    }
    if !p.suggestions.is_empty() {
        println!("it fits with:");
        for s in &p.suggestions {
            let changes: Vec<String> = s.changes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("  {:<48} → {:>11}  ({})", changes.join(","), human_bytes(s.total_bytes), s.cost);
        }
    }
    for n in &p.notes {
        println!("note: {n}");
    }
}
