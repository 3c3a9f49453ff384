//! The one seam between the app and the engine: the [`Backend`] (worker and sampler, driven from
//! the UI thread) and [`Reader`] (slow reads, run on the chores thread) traits in the UI's own
//! words, the view types they return, and [`runs_dir`]. The real implementation is
//! [`super::engine_link::EngineBackend`]; tests plug in a fake. Drawing code never calls the
//! engine directly, so connecting a new engine piece means editing `engine_link.rs` only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use headroom_engine::media::{Audio, Image};
use headroom_engine::families::{ComponentSpec, FieldSpec};
use headroom_engine::worker::protocol::Preview;
use headroom_engine::{Knobs, Request};

/// What inspecting a model file says, before anything is loaded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSummary {
    /// The model as the user named it (path or `builtin:NAME`).
    pub model: String,
    /// File format, e.g. `safetensors`, `diffusers folder`, `gguf`.
    pub format: String,
    /// The family guess, e.g. `Stable Diffusion 1.x`.
    pub family: String,
    /// Why the guess was made.
    pub family_reason: String,
    /// Total parameters.
    pub parameters: u64,
    /// Weight bytes if stored at each precision (`f32`, `f16`, `q4k`, …).
    pub bytes_by_precision: BTreeMap<String, u64>,
    /// Per component: name and parameters.
    pub components: Vec<(String, u64)>,
    /// The components as the family that runs it declares them (their knobs); empty when no
    /// family of this build runs it.
    pub knob_components: Vec<ComponentSpec>,
    /// The request fields it takes, as its family declares them (empty: no family runs it).
    pub fields: Vec<FieldSpec>,
    /// Things a person should know (unknown tensors, odd dtypes).
    pub warnings: Vec<String>,
    /// The model makes audio (a mel-spectrogram model, by its manifest).
    pub audio: bool,
}

/// The planner's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything fits as the knobs are.
    Fits,
    /// Fits only with the suggested knob changes.
    FitsWith,
    /// Does not fit even with them.
    DoesNotFit,
}

impl Verdict {
    /// The verdict in words, as the plan bar shows it.
    pub fn words(self) -> &'static str {
        match self {
            Verdict::Fits => "fits",
            Verdict::FitsWith => "fits with changes",
            Verdict::DoesNotFit => "does not fit",
        }
    }
}

/// Predicted use of one device against its budget.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceUse {
    /// `cpu`, `cuda:0`, …
    pub device: String,
    /// Predicted peak bytes on it.
    pub bytes: u64,
    /// What it may use.
    pub budget_bytes: u64,
}

/// Knob changes that make a plan fit: what the plan bar's button says, and what it applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Fix {
    /// The changes, the predicted peak and the cost, in words.
    pub words: String,
    /// The changes as `key=value,…` with profile names (`Knobs::apply_list` takes them).
    pub changes: String,
}

/// A plan as the plan bar draws it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanView {
    pub verdict: Verdict,
    pub weights_bytes: u64,
    pub activation_bytes: u64,
    pub per_device: Vec<DeviceUse>,
    /// Knob changes that would make it fit, best first.
    pub suggestions: Vec<Fix>,
    /// How many offloadable units (the UNet's blocks) the model has, where it has them (the
    /// resident-units slider's end).
    pub units: Option<u32>,
}

/// One reading of the memory sampler.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPoint {
    /// Seconds since the sampler started.
    pub t_secs: f64,
    pub ram_used_bytes: u64,
    pub ram_total_bytes: u64,
    pub process_rss_bytes: u64,
    /// Per GPU: (name, used bytes, total bytes).
    pub gpus: Vec<(String, u64, u64)>,
}

/// Whether GPU memory can be read.
#[derive(Clone, Debug, PartialEq)]
pub enum GpuInfo {
    /// This many GPUs are sampled.
    Available(u32),
    /// Why not, for a person ("no NVIDIA GPU found: …").
    Unavailable(String),
}

/// A finished run as the output and history cards show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRecord {
    /// The profile file that reproduces it.
    pub profile_path: PathBuf,
    /// Output files (PNG or WAV).
    pub outputs: Vec<PathBuf>,
    /// The model as named in the profile.
    pub model: String,
    pub request: Request,
    pub knobs: Knobs,
    /// SHA-256 of the first output.
    pub sha256: Option<String>,
    pub peak_ram_bytes: u64,
    pub peak_vram_bytes: u64,
    /// The run's heap peak (0 where not counted): what the run held, without memory the process
    /// freed earlier and kept.
    pub peak_heap_bytes: u64,
    /// What the run's telemetry says a person should know: knobs computed another way than they
    /// read (a quantized weight widened to f32 per layer, bf16 computed in f32 on the CPU), a
    /// prompt cut short — the explanations of surprises in time and memory.
    pub notes: Vec<String>,
    /// Stage name and milliseconds.
    pub timings_ms: Vec<(String, u64)>,
}

impl RunRecord {
    /// Total milliseconds over all stages.
    pub fn total_ms(&self) -> u64 {
        self.timings_ms.iter().map(|(_, ms)| ms).sum()
    }
}

/// What could be taken back from a dropped output or profile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoredView {
    pub request: Request,
    /// Knobs, when the file carried ours.
    pub knobs: Option<Knobs>,
    /// The model the file names, if any.
    pub model_hint: Option<String>,
    /// Fields restored, in words.
    pub mapped: Vec<String>,
    /// Fields seen but not understood, in words.
    pub unmapped: Vec<String>,
}

/// A decoded output.
#[derive(Clone, Debug, PartialEq)]
pub enum Media {
    Image(Image),
    Audio(Audio),
}

/// Two outputs compared: named numbers and, for images, a difference heatmap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// (name, value) rows, e.g. ("PSNR dB", 38.2).
    pub numbers: Vec<(String, f64)>,
    pub heatmap: Option<Image>,
}

/// What the engine thread reports, in the UI's words.
#[derive(Clone, Debug)]
pub enum EngineEvent {
    /// A model finished loading, or the loaded one took new knobs: `reread` is `None` when the
    /// whole model was read, else the components read again (empty: none, the knobs changed no
    /// weight).
    Loaded {
        model: String,
        family: String,
        weight_bytes: u64,
        load_ms: u64,
        reread: Option<Vec<String>>,
        /// Its components as its family declares them.
        components: Vec<ComponentSpec>,
        /// The request fields it takes.
        fields: Vec<FieldSpec>,
    },
    /// The model was unloaded.
    Unloaded,
    /// Step `step` of `total` in `stage`.
    Progress {
        stage: String,
        step: u32,
        total: u32,
    },
    /// A look at the current step.
    Preview(Preview),
    /// A run finished and wrote its files.
    Output(Box<RunRecord>),
    /// A run stopped because it was cancelled.
    Cancelled,
    /// Something failed: one line for a person, then the detail.
    Error { message: String, detail: String },
}

/// What the app reads and computes without the worker: model headers, plans, profiles, outputs
/// and their comparison. Any of it can take long (a large checkpoint's headers, a big image's
/// SSIM), so the app runs it on its chores thread ([`super::chores`]), never in a frame; hence
/// `Send + Sync`. Errors are one line for a person.
pub trait Reader: Send + Sync {
    /// Reads a model's headers: format, family, parameters, bytes per precision.
    fn inspect(&self, model: &str) -> Result<ModelSummary, String>;
    /// Predicts memory for a model + knobs + request (budget `None`: the devices' free memory).
    fn plan(
        &self,
        model: &str,
        knobs: &Knobs,
        request: &Request,
        budget_bytes: Option<u64>,
    ) -> Result<PlanView, String>;
    /// Reads what an output PNG/WAV or a profile TOML says about the run that made it.
    fn restore(&self, path: &Path) -> Result<RestoredView, String>;
    /// Reads a saved profile as a history card.
    fn read_run(&self, profile_path: &Path) -> Result<RunRecord, String>;
    /// Decodes an output file.
    fn read_media(&self, path: &Path) -> Result<Media, String>;
    /// Compares two outputs (A/B numbers and heatmap).
    fn compare(&self, a: &Media, b: &Media) -> Result<Comparison, String>;
    /// What differs between a run and its reproduction (empty: nothing).
    fn drift(&self, original: &RunRecord, again: &RunRecord) -> Vec<String>;
}

/// The engine as the UI thread drives it: the worker (load, generate, cancel, its events) and
/// the memory sampler, all answering at once; the slow reads are the [`Reader`]'s.
pub trait Backend {
    /// The reader the chores thread uses (shared, so it may keep caches).
    fn reader(&self) -> Arc<dyn Reader>;
    /// Asks the worker to load a model with these knobs.
    fn load(&self, model: &str, knobs: &Knobs) -> Result<(), String>;
    /// Asks the worker to generate; outputs and profiles go under `out_dir`.
    fn generate(&self, request: &Request, out_dir: &Path) -> Result<(), String>;
    /// Stops the current run at the next step.
    fn cancel(&self);
    /// The next event from the worker, if any (never blocks).
    fn try_recv(&self) -> Option<EngineEvent>;
    /// True while the worker is loading or generating.
    fn is_busy(&self) -> bool;
    /// Recent memory readings, oldest first.
    fn memory_history(&self) -> Vec<MemoryPoint>;
    /// Whether GPU memory can be read.
    fn gpu_info(&self) -> GpuInfo;
}

/// Where runs and profiles are kept: the engine's runs folder (`$HEADROOM_DATA/runs`, else
/// `$XDG_DATA_HOME/headroom/runs` or `~/.local/share/headroom/runs`), else `./headroom-runs`.
pub fn runs_dir() -> PathBuf {
    headroom_engine::paths::runs_dir().unwrap_or_else(|| PathBuf::from("headroom-runs"))
}

/// The ABX p-value: the chance of `correct` or more right out of `trials` by guessing.
pub use headroom_engine::compare::binomial_p_value;
