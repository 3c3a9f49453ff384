//! `headroom sweep MODEL [REQUEST] --knob KEY --values V1,V2,… --out DIR [--json] [--csv FILE]`:
//! the same request once per value of one knob, each measured (peak memory, time, weight bytes)
//! and compared with the full-precision reference run (`Knobs::reference`: every component f32,
//! no offload or slicing), so the quality–memory frontier can be read off the rows.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use headroom_engine::{Knobs, ModelRef, compare};

use super::args::{KnobArgs, PreflightArgs, RequestArgs};
use super::compare_cmd::{quality, total_ms};
use super::print_json;
use super::run_cmd::{Outcome, execute};

/// Arguments of `sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// A model path or builtin:NAME.
    pub model: String,
    #[command(flatten)]
    pub request: RequestArgs,
    /// Knobs every run shares; the swept one is set on top.
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// The knob to sweep, by its profile key: `precision.unet`, `offload.gpu_blocks`,
    /// `slicing.attention_slice`, `slicing.vae_tile`, …
    #[arg(long)]
    pub knob: String,
    /// Its values, in the order to run them: `f32,f16,q8_0,q4k`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub values: Vec<String>,
    #[command(flatten)]
    pub preflight: PreflightArgs,
    /// Folder for the runs (`reference/` and one folder per value).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the rows as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Print one JSON object on stdout: `knob` and `rows`.
    #[arg(long)]
    pub json: bool,
}

/// One value's run and its numbers.
struct Row {
    value: String,
    outcome: Outcome,
    /// Quality against the reference (`psnr_db`, `ssim`, … or `snr_db`, `log_spectral_distance`).
    quality: Vec<(&'static str, f64)>,
}

impl Row {
    /// The row as the JSON contract has it: `value`, `output`, the quality numbers, and
    /// `peak_ram_bytes`, `peak_vram_bytes`, `time_ms`, `weight_bytes`.
    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("value".into(), self.value.clone().into());
        m.insert("output".into(), self.outcome.outputs.first().map(|p| p.display().to_string()).into());
        for (k, v) in &self.quality {
            m.insert(k.to_string(), finite_number(k, *v));
        }
        let t = &self.outcome.telemetry;
        m.insert("peak_ram_bytes".into(), t.peak_ram_bytes.into());
        m.insert("peak_vram_bytes".into(), t.peak_vram_bytes.into());
        m.insert("peak_heap_bytes".into(), t.peak_heap_bytes.into());
        m.insert("time_ms".into(), total_ms(&self.outcome).into());
        m.insert("weight_bytes".into(), self.outcome.weight_bytes.into());
        m.insert("profile".into(), self.outcome.profile_path.display().to_string().into());
        serde_json::Value::Object(m)
    }
}

/// A quality number as JSON: decibels of identical outputs are `compare::IDENTICAL_DB`, anything
/// else not finite is null.
fn finite_number(key: &str, v: f64) -> serde_json::Value {
    let v = if key.ends_with("_db") { compare::finite_db(v) } else { v };
    if !v.is_finite() {
        serde_json::Value::Null
    } else if key == "max_abs_diff" {
        (v as u64).into()
    } else {
        v.into()
    }
}

/// Runs the reference and every value, and prints the rows.
pub fn run(args: &SweepArgs) -> Result<ExitCode> {
    let model = ModelRef::parse(&args.model);
    let mut request = super::run_cmd::native_request(&model);
    args.request.apply(&mut request)?;
    request.validate()?;
    let mut shared = Knobs::default();
    args.knobs.apply(&mut shared)?;
    let settings = args
        .values
        .iter()
        .map(|v| {
            let mut k = shared;
            k.set(&args.knob, v).map_err(|e| anyhow::anyhow!("sweep: {}={v}: {e}", args.knob))?;
            Ok((v.trim().to_string(), k))
        })
        .collect::<Result<Vec<_>>>()?;
    if settings.is_empty() {
        bail!("sweep: --values names no value");
    }
    let reference = shared.reference();
    for (v, k) in &settings {
        args.preflight.check(&format!("{} ({}={v})", args.model, args.knob), &model, &request, k)?;
    }
    let show = !args.json;
    let reference_run = execute(&model, &request, &reference, &args.out.join("reference"), show)?;
    let Some(reference_output) = reference_run.outputs.first().cloned() else {
        bail!("sweep: the reference run wrote no output");
    };
    let mut rows = Vec::with_capacity(settings.len());
    for (value, knobs) in settings {
        let dir = args.out.join(folder_name(&args.knob, &value));
        let outcome = execute(&model, &request, &knobs, &dir, show)?;
        let Some(output) = outcome.outputs.first() else {
            bail!("sweep: the run with {}={value} wrote no output", args.knob);
        };
        let quality = quality(&reference_output, output)?;
        rows.push(Row { value, outcome, quality });
    }
    if let Some(csv) = &args.csv {
        write_csv(csv, &rows)?;
    }
    if args.json {
        print_json(&serde_json::json!({
            "knob": args.knob,
            "reference": { "output": reference_output, "knobs": reference.to_pairs().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>() },
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        }));
    } else {
        print_table(&args.knob, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// A folder name for one value: `precision.unet=q4k` → `precision.unet-q4k`.
fn folder_name(knob: &str, value: &str) -> String {
    format!("{knob}-{value}").chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

/// The columns the rows share, in order: value, quality keys, then the measurements.
fn columns(rows: &[Row]) -> Vec<String> {
    let mut cols = vec!["value".to_string(), "output".to_string()];
    if let Some(first) = rows.first() {
        cols.extend(first.quality.iter().map(|(k, _)| (*k).to_string()));
    }
    cols.extend(["peak_ram_bytes", "peak_vram_bytes", "peak_heap_bytes", "time_ms", "weight_bytes"].map(String::from));
    cols
}

/// Writes the rows as CSV (atomically).
fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let cols = columns(rows);
    let mut text = cols.join(",") + "\n";
    for r in rows {
        let j = r.to_json();
        let cells: Vec<String> = cols
            .iter()
            .map(|c| match &j[c] {
                serde_json::Value::String(s) => format!("\"{}\"", s.replace('"', "\"\"")),
                serde_json::Value::Null => String::new(),
                v => v.to_string(),
            })
            .collect();
        text += &(cells.join(",") + "\n");
    }
    headroom_engine::fsutil::write_atomic(path, text.as_bytes()).with_context(|| format!("{}: cannot write the CSV", path.display()))
}

fn print_table(knob: &str, rows: &[Row]) {
    let q = rows.first().map(|r| r.quality.iter().map(|(k, _)| *k).collect::<Vec<_>>()).unwrap_or_default();
    println!("{knob:<16} {} {:>12} {:>10} {:>12}", q.iter().map(|k| format!("{k:>14}")).collect::<String>(), "peak RAM", "time", "weights");
    for r in rows {
        let t = &r.outcome.telemetry;
        let qs: String = r.quality.iter().map(|(k, v)| format!("{:>14}", finite_number(k, *v))).collect();
        println!(
            "{:<16} {qs} {:>12} {:>8} ms {:>12}",
            r.value,
            super::human_bytes(t.peak_ram_bytes.max(t.peak_vram_bytes)),
            total_ms(&r.outcome),
            super::human_bytes(r.outcome.weight_bytes)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decibels of identical outputs are 99, never infinite; other non-finite numbers are null.
    #[test]
    fn numbers_are_finite() {
        assert_eq!(finite_number("psnr_db", f64::INFINITY), serde_json::json!(99.0));
        assert_eq!(finite_number("psnr_db", 31.5), serde_json::json!(31.5));
        assert_eq!(finite_number("ssim", f64::NAN), serde_json::Value::Null);
        assert_eq!(folder_name("precision.unet", "q4k"), "precision.unet-q4k");
        assert_eq!(folder_name("offload.gpu_blocks", "all/x"), "offload.gpu_blocks-all_x");
    }
}
