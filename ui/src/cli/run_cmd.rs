//! `headroom run`, `headroom reproduce` and `headroom noise`: generation through the engine's
//! worker, exactly as the app drives it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use headroom_engine::profile::Profile;
use headroom_engine::telemetry::RunTelemetry;
use headroom_engine::worker::Engine;
use headroom_engine::worker::protocol::{Command, Event};
use headroom_engine::{Knobs, ModelRef, Request, rng};

use super::args::{KnobArgs, PreflightArgs, RequestArgs};
use super::print_json;
use super::progress::Progress;

/// Arguments of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A model path or builtin:NAME (not needed with --profile).
    pub model: Option<String>,
    /// Run a saved profile (a .toml, or an output with one embedded) instead; flags override it.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    #[command(flatten)]
    pub request: RequestArgs,
    #[command(flatten)]
    pub knobs: KnobArgs,
    #[command(flatten)]
    pub preflight: PreflightArgs,
    /// Folder for the outputs and their profiles.
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `reproduce`.
#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// A profile (.toml) or an output (.png/.wav) with one embedded.
    pub file: PathBuf,
    /// Keep the rerun's outputs here (default: a temporary folder, removed afterwards).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub preflight: PreflightArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `noise`.
#[derive(Args, Debug)]
pub struct NoiseArgs {
    /// Seed of the generator.
    #[arg(long)]
    pub seed: u64,
    /// Shape, comma-separated: 1,4,64,64.
    #[arg(long)]
    pub shape: String,
    /// A .safetensors file to write (one f32 tensor named `noise`).
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What one run produced.
pub struct Outcome {
    pub outputs: Vec<PathBuf>,
    pub profile_path: PathBuf,
    pub profile: Profile,
    pub telemetry: RunTelemetry,
    /// Resident weight bytes of the loaded model, as the worker counted them.
    pub weight_bytes: u64,
}

impl Outcome {
    /// The `run` JSON contract: `outputs`, `profile`, `sha256`, `timings_ms`, `peak_ram_bytes`,
    /// `peak_vram_bytes`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "outputs": self.outputs,
            "profile": self.profile_path,
            "sha256": self.profile.result.as_ref().map(|r| r.sha256.clone()).unwrap_or_default(),
            "timings_ms": self.telemetry.timings_ms,
            "peak_ram_bytes": self.telemetry.peak_ram_bytes,
            "peak_vram_bytes": self.telemetry.peak_vram_bytes,
            "peak_heap_bytes": self.telemetry.peak_heap_bytes,
            "peaks_by_stage": self.telemetry.peaks_by_stage,
            "notes": self.telemetry.notes,
            "weight_bytes": self.weight_bytes,
        })
    }
}

/// How long to wait for any event before deciding the worker is stuck.
const EVENT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Loads `model` with `knobs` on a fresh worker and generates `request` into `out`.
///
/// # Errors
/// Whatever the worker reports (bad model, bad request, out of memory), as one line.
pub fn execute(model: &ModelRef, request: &Request, knobs: &Knobs, out: &Path, show_progress: bool) -> Result<Outcome> {
    request.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    let engine = Engine::spawn(|| {});
    let mut progress = Progress::new(show_progress);
    engine.send(Command::Load { model: model.clone(), knobs: *knobs })?;
    engine.send(Command::Generate { request: request.clone(), out_dir: out.to_path_buf() })?;
    let mut telemetry = RunTelemetry::default();
    let mut weight_bytes = 0;
    loop {
        let Some(event) = engine.recv_timeout(EVENT_TIMEOUT) else {
            bail!("the engine stopped answering");
        };
        match event {
            Event::Progress { stage, step, total } => progress.update(stage, step, total),
            Event::Telemetry(t) => telemetry = t,
            Event::Output { paths, profile_path, profile } => {
                progress.finish();
                return Ok(Outcome { outputs: paths, profile_path, profile: *profile, telemetry, weight_bytes });
            }
            Event::Error { message, detail } => {
                progress.finish();
                if detail.is_empty() {
                    bail!("{message}");
                }
                return Err(anyhow::anyhow!("{detail}").context(message));
            }
            Event::Cancelled => bail!("cancelled"),
            Event::Loaded { weight_bytes: w, .. } => weight_bytes = w,
            Event::Unloaded | Event::Preview(_) | Event::Planned(_) => {}
        }
    }
}

/// `headroom run`.
pub fn run(a: &RunArgs) -> Result<ExitCode> {
    let (name, model, mut request, mut knobs) = match (&a.profile, &a.model) {
        (Some(p), _) => {
            let prof = Profile::load(p)?;
            let name = a.model.clone().unwrap_or_else(|| prof.model.source.clone());
            let model = ModelRef::parse(&name);
            (name, model, prof.request.clone(), prof.knobs)
        }
        (None, Some(m)) => {
            let model = ModelRef::parse(m);
            let request = native_request(&model);
            (m.clone(), model, request, Knobs::default())
        }
        (None, None) => bail!("run: name a MODEL (a path or builtin:NAME) or --profile FILE"),
    };
    a.request.apply(&mut request)?;
    a.knobs.apply(&mut knobs)?;
    request.validate()?;
    a.preflight.check(&name, &model, &request, &knobs)?;
    let outcome = execute(&model, &request, &knobs, &a.out, !a.json)?;
    if a.json {
        print_json(&outcome.to_json());
    } else {
        for p in &outcome.outputs {
            println!("{}", p.display());
        }
        println!("{}", outcome.profile_path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The default request for a model: its native size where its manifest gives one.
pub fn native_request(model: &ModelRef) -> Request {
    let mut r = Request::default();
    if let Some((w, h)) = headroom_engine::model::native_size(model) {
        r.width = w;
        r.height = h;
    }
    r
}

/// Exit code of `reproduce` when the rerun differs (errors exit with 1).
const DRIFT_EXIT: u8 = 2;

/// `headroom reproduce`.
pub fn reproduce(a: &ReproduceArgs) -> Result<ExitCode> {
    let recorded = Profile::load(&a.file)?;
    let Some(recorded_result) = recorded.result.clone() else {
        bail!("{}: the profile has no [result] to compare with (it was never run)", a.file.display());
    };
    let temp = a.out.is_none().then(|| std::env::temp_dir().join(format!("headroom-reproduce-{}", std::process::id())));
    let out = a.out.clone().or(temp.clone()).unwrap_or_default();
    let model = ModelRef::parse(&recorded.model.source);
    // knobs naming a component the model does not have: the profile's fault, said before running
    headroom_engine::families::knobs_for(&model, &recorded.knobs)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    a.preflight.check(&recorded.model.source, &model, &recorded.request, &recorded.knobs)?;
    let outcome = execute(&model, &recorded.request, &recorded.knobs, &out, !a.json);
    if let Some(t) = &temp {
        let _ = std::fs::remove_dir_all(t);
    }
    let outcome = outcome?;
    let now = outcome.profile.result.as_ref().map(|r| r.sha256.clone()).unwrap_or_default();
    let now_all = outcome.profile.result.as_ref().map(|r| r.outputs_sha256.clone()).unwrap_or_default();
    // Every output of the batch where the profile recorded them all; older profiles, the first.
    let recorded_all = if recorded_result.outputs_sha256.is_empty() {
        vec![recorded_result.sha256.clone()]
    } else {
        recorded_result.outputs_sha256.clone()
    };
    let mut outputs_drift = Vec::new();
    for (i, rec) in recorded_all.iter().enumerate() {
        let again = if i == 0 { Some(&now) } else { now_all.get(i) };
        if again != Some(rec) {
            let again = again.map_or("(no such output)", String::as_str);
            let which = if i == 0 { "output".to_string() } else { format!("output {i}") };
            outputs_drift.push(format!("{which} sha256: recorded {rec}, now {again}"));
        }
    }
    let identical = outputs_drift.is_empty();
    let fields = recorded.drift(&outcome.profile);
    let explained = recorded.drift_explained(&outcome.profile);
    if a.json {
        let drift: Vec<&String> = outputs_drift.iter().chain(&fields).collect();
        let explained: Vec<&String> = outputs_drift.iter().chain(&explained).collect();
        print_json(&serde_json::json!({
            "identical": identical,
            "drift": drift,
            "drift_explained": explained,
            "sha256": now,
            "outputs_sha256": now_all,
        }));
    } else if identical {
        println!("identical ({} output{})", recorded_all.len(), if recorded_all.len() == 1 { "" } else { "s" });
        for d in &explained {
            println!("  (recorded fields differ: {d})");
        }
    } else {
        println!("drift:");
        for d in outputs_drift.iter().chain(&explained) {
            println!("  {d}");
        }
    }
    Ok(if identical { ExitCode::SUCCESS } else { ExitCode::from(DRIFT_EXIT) })
}

/// `headroom noise`.
pub fn noise(a: &NoiseArgs) -> Result<ExitCode> {
    let shape: Vec<usize> = a
        .shape
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--shape '{}': expected comma-separated whole numbers like 1,4,64,64", a.shape))?;
    if shape.is_empty() || shape.iter().product::<usize>() > (1 << 31) {
        bail!("--shape '{}': expected 1 to 2^31 elements", a.shape);
    }
    rng::write_noise_safetensors(&a.out, a.seed, &shape)?;
    if a.json {
        print_json(&serde_json::json!({ "out": a.out, "seed": a.seed, "shape": shape }));
    } else {
        println!("{}", a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
