//! The app's data: [`SavedState`] (persisted between sessions) and [`Runtime`] (handles, caches
//! and what the engine last said; never persisted).

use std::path::{Path, PathBuf};
use std::time::Instant;

use headroom_engine::{Knobs, Request};
use serde::{Deserialize, Serialize};

use super::backend::{Backend, Comparison, Media, ModelSummary, PlanView, RunRecord};
use super::command::AppCommand;
use crate::audio::Player;

/// What is remembered between sessions (`settings.json` in the data directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SavedState {
    /// The model last loaded (path or `builtin:NAME`).
    pub last_model: Option<String>,
    /// Most recent first, at most [`SavedState::MAX_RECENT`].
    pub recent_models: Vec<String>,
    pub knobs: Knobs,
    pub request: Request,
    /// Keep the seed between runs; unlocked draws a new one per Generate.
    pub seed_locked: bool,
    /// Memory budget for the plan in GiB; 0 means the devices' free memory.
    pub budget_gib: f32,
    /// ABX trials per test.
    pub abx_trials: u32,
}

impl SavedState {
    /// How many recent models are remembered.
    pub const MAX_RECENT: usize = 8;

    /// Puts `model` first in the recent list.
    pub fn remember(&mut self, model: &str) {
        self.recent_models.retain(|m| m != model);
        self.recent_models.insert(0, model.to_string());
        self.recent_models.truncate(Self::MAX_RECENT);
    }

    /// The budget for the planner, `None` for "free memory".
    pub fn budget_bytes(&self) -> Option<u64> {
        (self.budget_gib > 0.0).then_some((self.budget_gib as f64 * (1u64 << 30) as f64) as u64)
    }

    /// Where the settings are kept: `settings.json` in the user's data directory (beside
    /// eframe's `app.ron`, which keeps only the window and egui's memory).
    pub fn default_path() -> Option<PathBuf> {
        headroom_engine::paths::data_dir().map(|d| d.join("settings.json"))
    }

    /// Reads saved settings; a missing or unreadable file is `None` (the caller falls back).
    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("{}: settings not read ({e}); using defaults", path.display());
                None
            }
        }
    }

    /// Writes the settings atomically (temp file, fsync, rename), so two instances saving at
    /// once leave one whole file, never a mix.
    ///
    /// # Errors
    /// The folder cannot be created or the file cannot be written; one line naming the file.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create ({e})", dir.display()))?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| format!("{}: {e}", path.display()))?;
        headroom_engine::fsutil::write_atomic(path, &json).map_err(|e| e.to_string())
    }
}

impl Default for SavedState {
    fn default() -> Self {
        Self {
            last_model: None,
            recent_models: Vec::new(),
            knobs: Knobs::default(),
            request: Request {
                prompt: "a large red circle on the left and a small blue star, on a yellow background".into(),
                ..Request::default()
            },
            seed_locked: true,
            budget_gib: 0.0,
            abx_trials: 10,
        }
    }
}

/// A model dropped or picked but not loaded: its summary and plan, shown first.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub model: String,
    /// `None` while the chores thread inspects it.
    pub summary: Option<Result<ModelSummary, String>>,
}

/// The model the worker has loaded.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub model: String,
    /// It makes audio (a mel-spectrogram model).
    pub audio: bool,
    pub family: String,
    pub weight_bytes: u64,
    pub load_ms: u64,
    /// The knobs it was loaded with (a change means reloading before the next run).
    pub knobs: Knobs,
    /// Its components as its family declares them.
    pub components: Vec<headroom_engine::families::ComponentSpec>,
    /// The request fields it takes.
    pub fields: Vec<headroom_engine::families::FieldSpec>,
}

/// A run in progress.
#[derive(Clone, Debug)]
pub struct RunProgress {
    pub stage: String,
    pub step: u32,
    pub total: u32,
    pub started: Instant,
}

/// One output shown in the center: the run, its decoded media and its texture.
pub struct OutputCard {
    pub record: RunRecord,
    /// The decoded output; `None` while the chores thread reads it.
    pub media: Option<Result<Media, String>>,
    pub texture: Option<egui::TextureHandle>,
    /// Min/max envelope of an audio output, for drawing.
    pub envelope: Vec<(f32, f32)>,
    /// The result of reproducing an earlier run: `Ok(())` identical, `Err(drift)` otherwise.
    pub reproduction: Option<Result<(), Vec<String>>>,
}

/// The center area's tabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CenterTab {
    #[default]
    Output,
    History,
    Ab,
    Sweep,
}

/// How the image view scales.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ImageScale {
    /// Fit the panel.
    Fit,
    /// This many screen points per pixel (1.0 is 1:1).
    Zoom(f32),
}

/// An ABX blind test in progress.
#[derive(Clone, Debug, Default)]
pub struct Abx {
    /// Per trial: true when X is A.
    pub x_is_a: Vec<bool>,
    /// Answers so far: true when right.
    pub answers: Vec<bool>,
}

/// A/B comparison state.
pub struct AbState {
    /// Output indices of A and B.
    pub a: Option<usize>,
    pub b: Option<usize>,
    /// Wipe position as a fraction of the width: A shows left of it, B right of it.
    pub wipe: f32,
    pub comparison: Option<Result<Comparison, String>>,
    pub heatmap: Option<egui::TextureHandle>,
    pub show_heatmap: bool,
    pub abx: Option<Abx>,
}

impl Default for AbState {
    fn default() -> Self {
        Self {
            a: None,
            b: None,
            wipe: 0.5,
            comparison: None,
            heatmap: None,
            show_heatmap: false,
            abx: None,
        }
    }
}

/// A message for the status line.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub text: String,
    pub is_error: bool,
}

/// A run to compare against when its reproduction arrives.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub original: RunRecord,
}

/// A knob sweep: the runs still to make (the reference first), and the rows made so far.
#[derive(Clone, Debug, Default)]
pub struct SweepState {
    /// The knob's profile key, as chosen.
    pub knob: String,
    /// Its values as typed, comma-separated.
    pub values: String,
    /// Runs still to make: (value, knobs); the reference is labelled [`SWEEP_REFERENCE`].
    pub queue: std::collections::VecDeque<(String, Knobs)>,
    /// The value of the run in flight.
    pub current: Option<String>,
    /// How many runs the sweep makes in all (the reference included).
    pub total: usize,
    /// The reference run's output index.
    pub reference: Option<usize>,
    pub rows: Vec<SweepRow>,
    /// The x axis of the frontier: time instead of peak memory.
    pub by_time: bool,
}

/// What the sweep's reference run is called in its rows.
pub const SWEEP_REFERENCE: &str = "reference (f32)";

/// One value's run in a sweep.
#[derive(Clone, Debug)]
pub struct SweepRow {
    pub value: String,
    /// Its output's index.
    pub output: usize,
    /// Quality against the reference (PSNR dB, SSIM … or SNR dB, log-spectral distance dB).
    pub quality: Vec<(String, f64)>,
    /// The quality is being measured (on the chores thread).
    pub measuring: bool,
    pub peak_bytes: u64,
    pub time_ms: u64,
}

impl SweepState {
    /// True while runs are left or one is in flight.
    pub fn running(&self) -> bool {
        self.current.is_some() || !self.queue.is_empty()
    }
}


/// Handles and caches: everything not saved.
pub struct Runtime {
    pub backend: Box<dyn Backend>,
    /// Slow reads (inspect, plan, restore, history, media, metrics), off the UI thread.
    pub chores: super::chores::Chores,
    /// Commands pushed by widgets this frame, run at its end.
    pub commands: Vec<AppCommand>,
    pub candidate: Option<Candidate>,
    pub loaded: Option<LoadedModel>,
    /// A load was asked for and has not answered.
    pub loading: Option<String>,
    /// The plan for the current model + knobs + request, and what it was computed for (while a
    /// new one is computed, the last one stays shown).
    pub plan: Option<Result<PlanView, String>>,
    pub plan_key: String,
    /// What the plan asked of the chores thread is for.
    pub plan_asked: String,
    pub run: Option<RunProgress>,
    pub preview: Option<egui::TextureHandle>,
    pub preview_wave: Vec<(f32, f32)>,
    pub outputs: Vec<OutputCard>,
    pub selected: Option<usize>,
    /// History cards, newest first (`None` until first read).
    pub history: Option<Vec<RunRecord>>,
    /// The history folder is being read (on the chores thread).
    pub history_reading: bool,
    /// Words every shown history card must contain (model, prompt, seed or `key=value` knobs).
    pub history_filter: String,
    /// Run events for the gauges: (sampler seconds, label).
    pub run_marks: Vec<(f64, String)>,
    pub notices: Vec<Notice>,
    pub tab: CenterTab,
    pub scale: ImageScale,
    pub player: Option<Player>,
    /// The output loaded into the player.
    pub audio_output: Option<usize>,
    pub ab: AbState,
    pub expect: Option<Expectation>,
    /// The output a "Compare with f32" run in flight is compared with.
    pub compare_with: Option<usize>,
    /// The knobs and request the user had chosen, lent to compare or sweep runs that set their
    /// own; given back when those end.
    pub lent: Option<(Knobs, Request)>,
    pub sweep: SweepState,
    /// Where outputs and profiles go.
    pub out_dir: PathBuf,
    /// Files are being dragged over the window.
    pub hovering_files: bool,
    /// Milliseconds the app spent on each recent frame: its logic (engine events, plan) and its
    /// drawing, not the painting that follows.
    pub frame_ms: Vec<f32>,
    /// The same, only for frames built while a run was in flight.
    pub run_frame_ms: Vec<f32>,
    /// When this frame's logic began.
    pub frame_start: Option<std::time::Instant>,
    /// State of the seed dice.
    pub rng_state: u64,
}

impl Runtime {
    /// Marks a run event (`start`, a stage name, `done`) on the gauges at the latest sample's time.
    pub fn mark_run_event(&mut self, label: impl Into<String>) {
        let t = self.backend.memory_history().last().map_or(0.0, |p| p.t_secs);
        self.run_marks.push((t, label.into()));
    }

    /// Fresh runtime state around a back end.
    pub fn new(backend: Box<dyn Backend>, out_dir: PathBuf) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Self {
            chores: super::chores::Chores::threaded(backend.reader()),
            backend,
            commands: Vec::new(),
            candidate: None,
            loaded: None,
            loading: None,
            plan: None,
            plan_key: String::new(),
            plan_asked: String::new(),
            run: None,
            preview: None,
            preview_wave: Vec::new(),
            outputs: Vec::new(),
            selected: None,
            history: None,
            history_reading: false,
            history_filter: String::new(),
            run_marks: Vec::new(),
            notices: Vec::new(),
            tab: CenterTab::Output,
            scale: ImageScale::Fit,
            player: None,
            audio_output: None,
            ab: AbState::default(),
            expect: None,
            compare_with: None,
            lent: None,
            sweep: SweepState::default(),
            out_dir,
            hovering_files: false,
            frame_ms: Vec::new(),
            run_frame_ms: Vec::new(),
            frame_start: None,
            rng_state: seed,
        }
    }

    /// A status-line message.
    pub fn notify(&mut self, text: impl Into<String>) {
        self.notices.push(Notice {
            text: text.into(),
            is_error: false,
        });
    }

    /// A status-line error.
    pub fn error(&mut self, text: impl Into<String>) {
        self.notices.push(Notice {
            text: text.into(),
            is_error: true,
        });
    }

    /// The next number of a splitmix64 sequence (seed dice, ABX order).
    pub fn random_u64(&mut self) -> u64 {
        self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The components of the model the knobs are for (the loaded one, else the candidate), as
    /// its family declares them; empty before a model is known.
    pub fn components(&self) -> &[headroom_engine::families::ComponentSpec] {
        match (&self.loaded, &self.candidate) {
            (Some(l), _) => &l.components,
            (None, Some(Candidate { summary: Some(Ok(s)), .. })) => &s.knob_components,
            _ => &[],
        }
    }

    /// The request fields of the model a run is about (the inspected candidate, else the loaded
    /// one), as its family declares them; empty before a model is known.
    pub fn fields(&self) -> &[headroom_engine::families::FieldSpec] {
        match (&self.candidate, &self.loaded) {
            (Some(Candidate { summary: Some(Ok(s)), .. }), _) => &s.fields,
            (_, Some(l)) => &l.fields,
            _ => &[],
        }
    }

    /// The model the plan and Generate are about: the loaded one, else the candidate.
    pub fn current_model(&self) -> Option<&str> {
        self.loaded
            .as_ref()
            .map(|l| l.model.as_str())
            .or(self.candidate.as_ref().map(|c| c.model.as_str()))
    }

    /// p50 and p99 of recent frame times in milliseconds.
    pub fn frame_percentiles(&self) -> Option<(f32, f32)> {
        percentiles(&self.frame_ms)
    }

    /// p50 and p99 of the frame times while runs were in flight.
    pub fn run_frame_percentiles(&self) -> Option<(f32, f32)> {
        percentiles(&self.run_frame_ms)
    }

    /// Records one frame's time (the last 2000 of each kind are kept).
    pub fn record_frame(&mut self, ms: f32) {
        let running = self.run.is_some();
        for (v, keep) in [(&mut self.frame_ms, true), (&mut self.run_frame_ms, running)] {
            if keep {
                if v.len() >= 2000 {
                    v.remove(0);
                }
                v.push(ms);
            }
        }
    }
}

/// p50 and p99 (nearest rank) of `ms`; `None` when empty.
fn percentiles(ms: &[f32]) -> Option<(f32, f32)> {
    if ms.is_empty() {
        return None;
    }
    let mut v = ms.to_vec();
    v.sort_by(f32::total_cmp);
    let at = |q: f32| v[((v.len() - 1) as f32 * q).round() as usize];
    Some((at(0.5), at(0.99)))
}
