//! `headroom bench`: the same request on one model under several knob settings, printing load,
//! per-step and decode milliseconds, peak heap and RSS, and resident weight bytes, each also as a
//! ratio against the first setting. Without `--model` it runs the "mini" model (SD 1.x's
//! architecture at about 50M random parameters), written on first use into the data directory,
//! which `tools/bench_diffusers.py` runs in diffusers for the cross-implementation ratio.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use headroom_engine::families::latent_diffusion::synthetic::{SyntheticSpec, write_folder};
use headroom_engine::nn::cpu;
use headroom_engine::request::Scheduler;
use headroom_engine::{Knobs, ModelRef, Request};

use super::print_json;
use super::run_cmd::execute;

/// The settings run when none are named: each precision, then slicing on at f32.
const DEFAULT_SETTINGS: &[&str] = &[
    "precision=f32",
    "precision=f16",
    "precision=bf16",
    "precision=q8_0",
    "precision=q4k",
    "precision=f32,slicing.attention_slice=128",
    "precision=f32,slicing.vae_tile=16",
];

/// Arguments of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A model path or builtin:NAME (default: the mini model, written on first use).
    #[arg(long)]
    pub model: Option<String>,
    /// Denoising steps per run (the step time is the denoise stage over this).
    #[arg(long, default_value_t = 3)]
    pub steps: u32,
    /// Image width and height.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// A knob setting to run (repeatable), e.g. `precision=q8_0,slicing.attention_slice=64`.
    #[arg(long = "setting")]
    pub settings: Vec<String>,
    /// Worker threads for the CPU kernels (default: one per core, or `RAYON_NUM_THREADS`).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where the mini model lives: `$HEADROOM_DATA/bench/mini-sd` (written when missing).
fn mini_model() -> Result<PathBuf> {
    let root = headroom_engine::paths::data_dir().context("no data directory (set HEADROOM_DATA)")?;
    let dir = root.join("bench").join("mini-sd");
    if !dir.join("model_index.json").is_file() {
        eprintln!("headroom: writing the mini benchmark model to {} (once)", dir.display());
        let tmp = root.join("bench").join(format!(".mini-sd.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let params = write_folder(&tmp, &SyntheticSpec::mini())?;
        eprintln!("headroom: {:.1}M parameters", params as f64 / 1e6);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot move the model into place", dir.display()))?;
    }
    Ok(dir)
}

/// Runs every setting and prints the table.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    if let Some(n) = args.threads {
        cpu::set_threads(n).map_err(anyhow::Error::msg)?;
    }
    let model = match &args.model {
        Some(m) => ModelRef::parse(m),
        None => ModelRef::Path(mini_model()?),
    };
    let settings: Vec<String> = if args.settings.is_empty() {
        DEFAULT_SETTINGS.iter().map(|s| s.to_string()).collect()
    } else {
        args.settings.clone()
    };
    let request = Request {
        prompt: "a photograph of a lighthouse on a cliff at sunset".into(),
        seed: 0,
        steps: args.steps,
        guidance: 7.5,
        scheduler: Scheduler::Ddim,
        width: args.size,
        height: args.size,
        ..Request::default()
    };
    let root = headroom_engine::paths::data_dir().context("no data directory (set HEADROOM_DATA)")?;
    let out = root.join("bench").join(format!("runs.{}", std::process::id()));
    let mut rows = Vec::new();
    for (i, setting) in settings.iter().enumerate() {
        let mut knobs = Knobs::default();
        knobs.apply_list(None, setting)?;
        let o = execute(&model, &request, &knobs, &out.join(i.to_string()), false)
            .with_context(|| format!("setting '{setting}'"))?;
        let plan = headroom_engine::plan::plan_model(&model, &knobs, &request, None)?;
        let t = &o.telemetry.timings_ms;
        let ms = |k: &str| t.get(k).copied().unwrap_or(0) as f64;
        rows.push(serde_json::json!({
            "setting": setting,
            "load_ms": ms("load"),
            "step_ms": o.telemetry.mean_step_after_first_ms().unwrap_or(ms("denoise") / f64::from(args.steps.max(1))),
            "decode_ms": ms("decode"),
            "peak_heap_bytes": o.telemetry.peak_heap_bytes,
            "peak_rss_bytes": o.telemetry.peak_ram_bytes,
            "weight_bytes": o.weight_bytes,
            "planned_peak_bytes": plan.total_bytes,
            "planned_activation_bytes": plan.activation_bytes,
            "planned_peak_stage": plan.per_device.first().map(|d| d.peak_stage.clone()),
            "heap_by_stage": o.telemetry.peaks_by_stage.iter()
                .map(|(k, p)| (k.clone(), serde_json::json!(p.heap_bytes))).collect::<serde_json::Map<_, _>>(),
            "notes": o.telemetry.notes,
        }));
        if !args.json {
            eprintln!("headroom: {setting} done");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    if args.json {
        print_json(&serde_json::json!({
            "model": model.to_string(), "steps": args.steps, "size": args.size,
            "threads": cpu::threads(), "rows": rows
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "model {model}, {}×{}, {} steps, {} threads; step = mean step after the first (ratios against the first row)",
        args.size,
        args.size,
        args.steps,
        cpu::threads()
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11} {:>11}",
        "setting", "load ms", "step ms", "decode ms", "peak heap", "peak RSS", "weights", "planned"
    );
    let num = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let base = rows.first().cloned().unwrap_or_default();
    for r in &rows {
        let ratio = |k: &str| {
            let b = num(&base, k);
            if b > 0.0 { format!("{:.2}×", num(r, k) / b) } else { "-".into() }
        };
        let mib = |k: &str| format!("{:.0} MiB", num(r, k) / 1048576.0);
        println!(
            "{:<44} {:>9.0} {:>9.0} {:>9.0} {:>11} {:>11} {:>11} {:>11}",
            r["setting"].as_str().unwrap_or(""),
            num(r, "load_ms"),
            num(r, "step_ms"),
            num(r, "decode_ms"),
            mib("peak_heap_bytes"),
            mib("peak_rss_bytes"),
            mib("weight_bytes"),
            mib("planned_peak_bytes")
        );
        // the last column: measured peak RSS over the planned peak (the planner's target is ±10%)
        let planned = num(r, "planned_peak_bytes");
        let vs_plan = if planned > 0.0 { format!("RSS {:.2}×", num(r, "peak_rss_bytes") / planned) } else { "-".into() };
        println!(
            "{:<44} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11} {:>11}",
            "",
            ratio("load_ms"),
            ratio("step_ms"),
            ratio("decode_ms"),
            ratio("peak_heap_bytes"),
            ratio("peak_rss_bytes"),
            ratio("weight_bytes"),
            vs_plan
        );
    }
    Ok(ExitCode::SUCCESS)
}
