//! `headroom inspect PATH [--json]`: what a model file is, before loading it.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use headroom_engine::ModelRef;
use headroom_engine::formats::{self, Inspection};

use super::{human_bytes, print_json};

/// Arguments of `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A .safetensors/.gguf/.ckpt/.pth file, a diffusers folder, or builtin:NAME.
    pub model: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// How many of the largest tensors to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

/// Inspects and prints.
pub fn run(a: &InspectArgs) -> Result<ExitCode> {
    let path = ModelRef::parse(&a.model).resolve()?;
    let insp = formats::inspect(&path)?;
    if a.json {
        print_json(&to_json(&insp));
    } else {
        print_human(&insp, a.top);
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON contract: `format`, `family`, `parameters`, `bytes_by_precision`, `tensors`, plus more;
/// `runs_with` is the family of this build that would run it (`family`, `confidence`, `reason`),
/// or null.
pub fn to_json(insp: &Inspection) -> serde_json::Value {
    let tensors: Vec<_> = insp.components.iter().flat_map(|c| c.tensors.iter()).collect();
    let runs_with = headroom_engine::families::recognise(insp).map(|(r, _)| r);
    serde_json::json!({
        "runs_with": runs_with,
        "path": insp.path,
        "format": insp.format,
        "family": insp.family.id,
        "family_label": insp.family.label,
        "family_reason": insp.family.reason,
        "parameters": insp.parameters(),
        "bytes_by_precision": insp.bytes_by_precision(),
        "dtypes": insp.dtype_histogram(),
        "components": insp.components.iter().map(|c| serde_json::json!({
            "name": c.name, "parameters": c.parameters, "tensors": c.tensors.len(),
        })).collect::<Vec<_>>(),
        "tensors": tensors,
        "metadata": insp.metadata,
        "warnings": insp.warnings,
        "files": insp.files,
    })
}

fn print_human(insp: &Inspection, top: usize) {
    println!("{}", insp.path.display());
    println!("  format     {}", serde_json::to_value(insp.format).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default());
    println!("  family     {} ({})", insp.family.label, insp.family.reason);
    match headroom_engine::families::recognise(insp) {
        Some((r, _)) => println!("  runs with  {} ({:.0}% sure: {})", r.family, r.confidence * 100.0, r.reason),
        None => println!("  runs with  nothing in this build"),
    }
    println!("  parameters {} ({:.1} M)", insp.parameters(), insp.parameters() as f64 / 1e6);
    for c in &insp.components {
        println!("    {:<14} {:>14} params  {:>5} tensors", c.name, c.parameters, c.tensors.len());
    }
    let hist = insp.dtype_histogram();
    println!("  dtypes     {}", hist.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "));
    println!("  size at each precision:");
    for (p, b) in insp.bytes_by_precision() {
        println!("    {p:<6} {:>12}", human_bytes(b));
    }
    println!("  largest tensors:");
    for t in insp.largest(top) {
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        println!("    {:<60} {:<8} [{}]", t.name, t.dtype, shape.join(", "));
    }
    for w in &insp.warnings {
        println!("  warning: {w}");
    }
}
