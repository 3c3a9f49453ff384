//! The worker's commands and events: the whole contract between a front end (GUI or CLI) and the
//! engine thread. Front ends send [`Command`]s and draw [`Event`]s; they never hold a tensor.

use std::path::PathBuf;

use crate::knobs::Knobs;
use crate::media::{Audio, Image};
use crate::model::ModelRef;
use crate::plan::Plan;
use crate::profile::Profile;
use crate::request::Request;
use crate::telemetry::RunTelemetry;

/// What a front end asks the worker to do.
#[derive(Clone, Debug)]
pub enum Command {
    /// Load a model with these knobs, replacing any loaded one.
    Load { model: ModelRef, knobs: Knobs },
    /// Drop the loaded model and free its memory.
    Unload,
    /// Generate with the loaded model; outputs and their profiles are written under `out_dir`.
    Generate { request: Request, out_dir: PathBuf },
    /// Stop the current run at the next step boundary.
    Cancel,
    /// Predict memory for a model + knobs + request against a budget (None: the device's free memory).
    Plan { model: ModelRef, knobs: Knobs, request: Request, budget_bytes: Option<u64> },
    /// Stop the worker thread.
    Shutdown,
}

/// A stage of a run, for progress, timings and per-stage memory peaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Reading weights and placing them.
    Load,
    /// Encoding the prompt.
    Text,
    /// The denoising loop.
    Denoise,
    /// Latents to pixels (and spectrogram to audio).
    Decode,
    /// Writing files.
    Save,
}

impl Stage {
    /// The name used in `timings_ms` and the GUI.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Load => "load",
            Stage::Text => "text",
            Stage::Denoise => "denoise",
            Stage::Decode => "decode",
            Stage::Save => "save",
        }
    }
}

/// A cheap look at a run in progress.
#[derive(Clone, Debug)]
pub enum Preview {
    /// A small RGB image (for instance latents mapped to colour).
    Image(Image),
    /// A waveform envelope: min/max pairs over equal slices of the clip.
    Waveform(Vec<(f32, f32)>),
}

/// One finished output of a run, before it is written.
#[derive(Clone, Debug)]
pub enum Artifact {
    Image(Image),
    Audio(Audio),
}

/// What the worker tells a front end.
#[derive(Clone, Debug)]
pub enum Event {
    /// A model finished loading, or the loaded one took new knobs (`Family::retune`): `reread`
    /// is `None` when the whole model was read, else the components read again (empty when the
    /// knobs changed no weight, e.g. slicing).
    Loaded {
        model: ModelRef,
        family: String,
        weight_bytes: u64,
        load_ms: u64,
        reread: Option<Vec<String>>,
        /// The model's components as its family declares them (what the knobs panel offers).
        components: Vec<crate::families::ComponentSpec>,
        /// The request fields it takes (what the request panel offers).
        fields: Vec<crate::families::FieldSpec>,
    },
    /// The model was unloaded.
    Unloaded,
    /// Work in progress: step `step` of `total` in `stage`.
    Progress { stage: Stage, step: u32, total: u32 },
    /// A preview of the current step.
    Preview(Preview),
    /// Timings and memory peaks of the run (sent when a run ends, successful or not).
    Telemetry(RunTelemetry),
    /// Files written by a run, with the profile that reproduces them.
    Output { paths: Vec<PathBuf>, profile_path: PathBuf, profile: Box<Profile> },
    /// The answer to [`Command::Plan`].
    Planned(Box<Plan>),
    /// A run stopped because it was cancelled.
    Cancelled,
    /// Something failed: `message` is one line for a person, `detail` the rest.
    Error { message: String, detail: String },
}
