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
/// or null, and then `not_supported` says why it cannot run; `stored_bytes` and
/// `stored_bytes_by_type` are the model as stored (tensors of unknown type, `uncounted_tensors`,
/// left out).
pub fn to_json(insp: &Inspection) -> serde_json::Value {
    let tensors: Vec<_> = insp.components.iter().flat_map(|c| c.tensors.iter()).collect();
    let runs_with = headroom_engine::families::recognise(insp).map(|(r, _)| r);
    let not_supported = runs_with.is_none().then(|| headroom_engine::families::not_supported(insp));
    serde_json::json!({
        "runs_with": runs_with,
        "not_supported": not_supported,
        "stored_bytes": insp.stored_bytes(),
        "stored_bytes_by_type": insp.stored_bytes_by_type(),
        "uncounted_tensors": insp.uncounted_tensors(),
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
    println!("  family     {} [{}] ({})", insp.family.label, insp.family.id, insp.family.reason);
    let runs = headroom_engine::families::recognise(insp);
    match &runs {
        Some((r, _)) => println!("  runs with  {} ({:.0}% sure: {})", r.family, r.confidence * 100.0, r.reason),
        None => println!("  runs with  nothing in this build: {}", headroom_engine::families::not_supported(insp)),
    }
    println!("  parameters {} ({:.1} M)", insp.parameters(), insp.parameters() as f64 / 1e6);
    for c in &insp.components {
        println!("    {:<14} {:>14} params  {:>5} tensors", c.name, c.parameters, c.tensors.len());
    }
    println!("  stored     {}", stored_line(insp));
    let hist = insp.dtype_histogram();
    println!("  dtypes     {}", hist.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "));
    // the precision knobs act only where a family runs the model
    if runs.is_some() {
        println!("  size at each precision:");
        for (p, b) in insp.bytes_by_precision() {
            println!("    {p:<6} {:>12}", human_bytes(b));
        }
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

/// The model as stored: the total, then each stored type's bytes, largest first, and how many
/// tensors of unknown type were not counted (`2.96 KiB (F32 2.12 KiB, F16 512 B, …)`).
fn stored_line(insp: &Inspection) -> String {
    let mut by: Vec<(String, u64)> = insp.stored_bytes_by_type().into_iter().collect();
    by.sort_by_key(|(name, b)| (std::cmp::Reverse(*b), name.clone()));
    let mut parts: Vec<String> = by.iter().map(|(t, b)| format!("{t} {}", human_bytes(*b))).collect();
    match insp.uncounted_tensors() {
        0 => {}
        1 => parts.push("1 tensor of an unknown type not counted".into()),
        n => parts.push(format!("{n} tensors of unknown types not counted")),
    }
    format!("{} ({})", human_bytes(insp.stored_bytes()), parts.join(", "))
}
