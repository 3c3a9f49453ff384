//! `headroom ab MODEL [REQUEST] --a KNOBS [--b KNOBS] --out DIR` (B defaults to A's f32 reference,
//! `Knobs::reference`, as the app's "Compare with f32"): two runs that differ only in
//! knobs, and the numbers that compare them.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use headroom_engine::{Knobs, ModelRef, compare, media};

use super::args::{KnobArgs, PreflightArgs, RequestArgs};
use super::print_json;
use super::run_cmd::{Outcome, execute};

/// Arguments of `ab`.
#[derive(Args, Debug)]
pub struct AbArgs {
    /// A model path or builtin:NAME.
    pub model: String,
    #[command(flatten)]
    pub request: RequestArgs,
    /// Knobs shared by both runs.
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Run A's knobs: `precision=f32,slicing.attention_slice=0` (profile names).
    #[arg(long = "a", default_value = "")]
    pub a: String,
    /// Run B's knobs: `precision.unet=q4k`. Without it, B is A's full-precision reference (every
    /// component f32, no offload or slicing), as the app's "Compare with f32".
    #[arg(long = "b")]
    pub b: Option<String>,
    #[command(flatten)]
    pub preflight: PreflightArgs,
    /// Folder for both runs (in a/ and b/).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs A and B and prints the comparison.
pub fn run(args: &AbArgs) -> Result<ExitCode> {
    let model = ModelRef::parse(&args.model);
    let mut request = super::run_cmd::native_request(&model);
    args.request.apply(&mut request)?;
    let mut shared = Knobs::default();
    args.knobs.apply(&mut shared)?;
    let mut ka = shared;
    ka.apply_list(None, &args.a)?;
    let kb = match &args.b {
        Some(b) => {
            let mut kb = shared;
            kb.apply_list(None, b)?;
            kb
        }
        None => ka.reference(),
    };
    if ka == kb {
        bail!("ab: --a and --b give the same knobs; name what differs, e.g. --a precision=q4k (B: its f32 reference)");
    }
    request.validate()?;
    args.preflight.check(&format!("{} (A)", args.model), &model, &request, &ka)?;
    args.preflight.check(&format!("{} (B)", args.model), &model, &request, &kb)?;
    let a = execute(&model, &request, &ka, &args.out.join("a"), !args.json)?;
    let b = execute(&model, &request, &kb, &args.out.join("b"), !args.json)?;
    let metrics = metrics(&a, &b)?;
    if args.json {
        print_json(&serde_json::json!({ "a": a.to_json(), "b": b.to_json(), "metrics": metrics }));
    } else {
        println!("A: {}", ka.diff(&kb).iter().map(|k| format!("{k}={}", value_of(&ka, k))).collect::<Vec<_>>().join(","));
        println!("B: {}", ka.diff(&kb).iter().map(|k| format!("{k}={}", value_of(&kb, k))).collect::<Vec<_>>().join(","));
        if let Some(m) = metrics.as_object() {
            for (k, v) in m {
                println!("  {k:<24} {v}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn value_of(k: &Knobs, key: &str) -> String {
    k.get(key).unwrap_or_default()
}

/// Quality of output `b` against output `a`, the numbers `ab` and `sweep` share: images `psnr_db`,
/// `ssim`, `max_abs_diff`; audio `snr_db`, `log_spectral_distance`. PSNR and SNR of identical
/// outputs are infinite, returned as such.
///
/// # Errors
/// An output that cannot be read, or two outputs of different sizes.
pub(super) fn quality(a: &Path, b: &Path) -> Result<Vec<(&'static str, f64)>> {
    if is_ext(a, "png") {
        let (ia, _) = media::read_png(a)?;
        let (ib, _) = media::read_png(b)?;
        Ok(vec![
            ("psnr_db", compare::psnr_db(&ia, &ib)?),
            ("ssim", compare::ssim(&ia, &ib)?),
            ("max_abs_diff", f64::from(compare::max_abs_diff(&ia, &ib)?)),
        ])
    } else {
        let (aa, _) = media::read_wav(a)?;
        let (ab, _) = media::read_wav(b)?;
        Ok(vec![
            ("snr_db", compare::snr_db(&aa, &ab)?),
            ("log_spectral_distance", compare::log_spectral_distance(&aa, &ab)?),
        ])
    }
}

/// Milliseconds of a run without its load.
pub(super) fn total_ms(o: &Outcome) -> u64 {
    o.telemetry.timings_ms.iter().filter(|(k, _)| k.as_str() != "load").map(|(_, v)| *v).sum()
}

fn peak(o: &Outcome) -> u64 {
    o.telemetry.peak_vram_bytes.max(o.telemetry.peak_ram_bytes)
}

fn ratio(b: u64, a: u64) -> f64 {
    if a == 0 { f64::NAN } else { b as f64 / a as f64 }
}

/// The `metrics` object: quality of B against A, and B/A ratios of time, memory and weights.
fn metrics(a: &Outcome, b: &Outcome) -> Result<serde_json::Value> {
    let (Some(pa), Some(pb)) = (a.outputs.first(), b.outputs.first()) else {
        bail!("ab: a run wrote no output");
    };
    let mut m = serde_json::Map::new();
    for (k, v) in quality(pa, pb)? {
        let v = if k == "max_abs_diff" { (v as u64).into() } else { finite(v) };
        m.insert(k.into(), v);
    }
    m.insert("time_ratio".into(), finite(ratio(total_ms(b), total_ms(a))));
    m.insert("peak_memory_ratio".into(), finite(ratio(peak(b), peak(a))));
    m.insert("weight_bytes_ratio".into(), finite(ratio(b.weight_bytes, a.weight_bytes)));
    Ok(serde_json::Value::Object(m))
}

/// JSON has no infinity: identical outputs give a PSNR of `"inf"`.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() { v.into() } else if v > 0.0 { "inf".into() } else { serde_json::Value::Null }
}

fn is_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}
