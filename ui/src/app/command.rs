//! What widgets ask for: [`AppCommand`]s pushed during the frame and run at its end, so drawing
//! code never changes shared state directly.

use std::path::PathBuf;

use headroom_engine::{Knobs, Request};

use super::HeadroomApp;
use super::backend::{RunRecord, Verdict};
use super::state::{Abx, Candidate, CenterTab, ImageScale};

/// A change asked for by a widget.
#[derive(Clone, Debug)]
pub enum AppCommand {
    /// Show the file dialog to pick a model file, or a diffusers folder when `folder`.
    OpenModelDialog { folder: bool },
    /// Inspect a model and plan it, showing both before anything is loaded.
    InspectModel(String),
    /// Load a model; `force` loads even when the plan says it does not fit.
    LoadModel { model: String, force: bool },
    /// Forget the inspected-but-not-loaded model.
    DismissCandidate,
    /// Replace the knobs (the plan follows).
    SetKnobs(Box<Knobs>),
    /// Apply knob changes given as `key=value,…` with profile names (a plan's fix).
    ApplyKnobs(String),
    /// Rerun output `i`'s request with the full-precision reference knobs and open A/B with the
    /// pair when it is done.
    CompareWithReference(usize),
    /// Run the current request once per value of a knob (profile key, comma-separated values),
    /// after the full-precision reference; rows appear in the Sweep tab.
    StartSweep { knob: String, values: String },
    /// Stop a sweep: the run in flight is cancelled, the rest dropped.
    StopSweep,
    /// Open a saved run as an output and compare it with its full-precision reference.
    CompareRun(Box<RunRecord>),
    /// Replace the request.
    SetRequest(Request),
    /// Keep the seed between runs (true) or draw a new one per run (false).
    SetSeedLocked(bool),
    /// The planning budget in GiB (0: the devices' free memory).
    SetBudget(f32),
    /// Draw a new random seed now.
    RandomizeSeed,
    /// Start a run with the current request, loading the model with the current knobs first if needed.
    Generate,
    /// Stop the current run at the next step.
    Cancel,
    /// Files dropped on the window: outputs and profiles are restored, anything else is inspected as a model.
    OpenPaths(Vec<PathBuf>),
    /// Restore the request (and knobs and model when known) from an output or profile file.
    RestoreFrom(PathBuf),
    /// Restore a history run's request, knobs and model.
    RestoreRun(Box<RunRecord>),
    /// Run a history entry again and say whether the output is identical.
    Reproduce(Box<RunRecord>),
    /// Show an output (and its history run) in the center.
    OpenRun(Box<RunRecord>),
    /// Show output number N in the center.
    SelectOutput(usize),
    /// Save output number N under a name the user picks.
    SaveOutputAs(usize),
    /// Switch the center tab.
    ShowTab(CenterTab),
    /// Change how the image view scales.
    SetScale(ImageScale),
    /// Play output number N (audio) from its position.
    PlayAudio(usize),
    /// Play output N from its start, even when it is the clip already loaded and paused: the
    /// ABX test's plays, so that X starts like A and B and its position gives nothing away.
    PlayAudioFromStart(usize),
    /// Pause audio playback.
    PauseAudio,
    /// Move the play position to a fraction of the clip.
    SeekAudio(f32),
    /// Loop playback on or off.
    SetLoop(bool),
    /// Choose output N as side A (`b: false`) or B (`b: true`).
    SetAbSide { b: bool, output: usize },
    /// Move the A/B wipe (0: all B, 1: all A; A shows left of it).
    SetWipe(f32),
    /// Show the difference heatmap instead of the wipe.
    ShowHeatmap(bool),
    /// Begin an ABX blind test with this many trials.
    StartAbx(u32),
    /// Answer the current ABX trial: true means "X is A".
    AnswerAbx(bool),
    /// Read the history folder again.
    RefreshHistory,
    /// Clear the status messages.
    ClearNotices,
}

impl HeadroomApp {
    /// Runs the commands pushed this frame, in order.
    pub fn run_commands(&mut self, ctx: &egui::Context) {
        let commands = std::mem::take(&mut self.rt.commands);
        for cmd in commands {
            self.run_command(ctx, cmd);
        }
    }

    fn run_command(&mut self, ctx: &egui::Context, cmd: AppCommand) {
        let rt = &mut self.rt;
        match cmd {
            AppCommand::OpenModelDialog { folder } => {
                let shown = std::time::Instant::now();
                let dialog = rfd::FileDialog::new();
                let picked = if folder {
                    dialog.pick_folder()
                } else {
                    dialog
                        .add_filter("models", &["safetensors", "gguf", "ckpt", "pth", "json"])
                        .pick_file()
                };
                match picked {
                    Some(p) => self.inspect(p.display().to_string()),
                    // Nobody cancels a dialog this fast: none was shown.
                    None if shown.elapsed() < std::time::Duration::from_millis(300) => rt.error(
                        "No file dialog could be opened (no file-chooser portal or zenity \
                         here): drop the model on the window, or start Headroom with its path",
                    ),
                    None => {}
                }
            }
            AppCommand::InspectModel(m) => self.inspect(m),
            AppCommand::LoadModel { model, force } => self.load(model, force),
            AppCommand::DismissCandidate => rt.candidate = None,
            AppCommand::SetKnobs(k) => self.state.knobs = *k,
            AppCommand::ApplyKnobs(changes) => {
                let mut k = self.state.knobs;
                match k.apply_list(None, &changes) {
                    Ok(()) => {
                        self.state.knobs = k;
                        rt.notify(format!("Knobs set: {changes}"));
                    }
                    Err(e) => rt.error(e.to_string()),
                }
            }
            AppCommand::CompareWithReference(i) => self.compare_with_reference(i),
            AppCommand::StartSweep { knob, values } => self.start_sweep(knob, values),
            AppCommand::StopSweep => {
                rt.sweep.queue.clear();
                if rt.run.is_some() {
                    rt.backend.cancel();
                }
            }
            AppCommand::SetRequest(r) => self.state.request = r,
            AppCommand::SetSeedLocked(on) => self.state.seed_locked = on,
            AppCommand::SetBudget(g) => self.state.budget_gib = g.max(0.0),
            AppCommand::RandomizeSeed => self.state.request.seed = rt.random_u64() % (1u64 << 32),
            AppCommand::Generate => self.generate(),
            AppCommand::Cancel => {
                if rt.run.is_some() {
                    rt.backend.cancel();
                    rt.notify("Cancelling at the next step…");
                }
            }
            AppCommand::OpenPaths(paths) => {
                for p in paths {
                    let ext = p
                        .extension()
                        .and_then(|e| e.to_str())
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    if matches!(ext.as_str(), "png" | "wav" | "toml") {
                        self.restore_from(&p);
                    } else {
                        self.inspect(p.display().to_string());
                    }
                }
            }
            AppCommand::RestoreFrom(p) => self.restore_from(&p),
            AppCommand::RestoreRun(r) => self.restore_run(&r),
            AppCommand::Reproduce(r) => {
                self.restore_run(&r);
                self.rt.expect = Some(super::state::Expectation { original: *r });
                self.generate_with_seed_kept();
            }
            AppCommand::OpenRun(r) => {
                self.open_run(ctx, *r);
            }
            AppCommand::CompareRun(r) => {
                let i = self.open_run(ctx, *r);
                self.compare_with_reference(i);
            }
            AppCommand::SelectOutput(i) => rt.selected = Some(i),
            AppCommand::SaveOutputAs(i) => self.save_output_as(i),
            AppCommand::ShowTab(t) => {
                rt.tab = t;
                if t == CenterTab::History && rt.history.is_none() && !rt.history_reading {
                    self.refresh_history();
                }
            }
            AppCommand::SetScale(s) => rt.scale = s,
            AppCommand::PlayAudio(i) => self.play_audio(i, false),
            AppCommand::PlayAudioFromStart(i) => self.play_audio(i, true),
            AppCommand::PauseAudio => {
                if let Some(p) = &rt.player {
                    p.pause();
                }
            }
            AppCommand::SeekAudio(f) => {
                if let Some(p) = &rt.player {
                    p.seek_fraction(f);
                }
            }
            AppCommand::SetLoop(on) => {
                if let Some(p) = self.player() {
                    p.set_looping(on);
                }
            }
            AppCommand::SetAbSide { b, output } => {
                if b {
                    rt.ab.b = Some(output);
                } else {
                    rt.ab.a = Some(output);
                }
                self.compare_ab(ctx);
            }
            AppCommand::SetWipe(w) => rt.ab.wipe = w.clamp(0.0, 1.0),
            AppCommand::ShowHeatmap(on) => rt.ab.show_heatmap = on,
            AppCommand::StartAbx(n) => {
                let n = n.clamp(1, 100);
                self.state.abx_trials = n;
                let x_is_a = (0..n).map(|_| rt.random_u64() & 1 == 1).collect();
                rt.ab.abx = Some(Abx {
                    x_is_a,
                    answers: Vec::new(),
                });
            }
            AppCommand::AnswerAbx(says_a) => {
                if let Some(abx) = &mut rt.ab.abx {
                    let i = abx.answers.len();
                    if i < abx.x_is_a.len() {
                        abx.answers.push(abx.x_is_a[i] == says_a);
                    }
                }
            }
            AppCommand::RefreshHistory => self.refresh_history(),
            AppCommand::ClearNotices => rt.notices.clear(),
        }
    }

    /// Makes a model the candidate and inspects it on the chores thread; the summary (or the
    /// error, shown in the model card where the summary would be) and the plan follow.
    fn inspect(&mut self, model: String) {
        self.state.remember(&model);
        self.rt.candidate = Some(Candidate { model: model.clone(), summary: None });
        self.rt.plan_key.clear();
        self.rt.plan_asked.clear();
        let m = model.clone();
        self.rt.chores.run(
            format!("Inspecting {}", super::ui_plan::short_name(&model)),
            move |r| r.inspect(&m),
            move |app, _, summary| {
                if let Some(c) = app.rt.candidate.as_mut().filter(|c| c.model == model) {
                    c.summary = Some(summary);
                    // planned again now that the headers are known (or known unreadable)
                    app.rt.plan_key.clear();
                    app.rt.plan_asked.clear();
                }
            },
        );
    }

    /// Whether the plan says the current model will not fit in the memory it may use: the
    /// budget, or what is free now plus what the loaded model frees when it is replaced.
    pub(super) fn plan_refuses(&self) -> bool {
        let Some(Ok(p)) = &self.rt.plan else {
            return false;
        };
        if p.verdict == Verdict::Fits {
            return false;
        }
        let freed = |device: &str| match (&self.rt.loaded, self.state.budget_bytes()) {
            (Some(l), None) if l.knobs.device.to_string() == device => l.weight_bytes,
            _ => 0,
        };
        p.per_device
            .iter()
            .any(|d| d.budget_bytes > 0 && d.bytes > d.budget_bytes + freed(&d.device))
    }

    /// Asks the worker to load a model; a model that does not fit needs `force`.
    fn load(&mut self, model: String, force: bool) {
        if self.plan_refuses() && !force && self.rt.current_model() == Some(model.as_str()) {
            self.rt.error(format!(
                "{model} does not fit in the memory free now: apply a fix from the plan bar, or Load anyway"
            ));
            return;
        }
        match self.rt.backend.load(&model, &self.state.knobs) {
            Ok(()) => {
                self.rt.loading = Some(model.clone());
                self.rt.notify(format!("Loading {model}…"));
            }
            Err(e) => self.rt.error(e),
        }
    }

    /// Starts a run, drawing a new seed first unless the seed is locked.
    pub(super) fn generate(&mut self) {
        if !self.state.seed_locked {
            self.state.request.seed = self.rt.random_u64() % (1u64 << 32);
        }
        self.generate_with_seed_kept();
    }

    fn generate_with_seed_kept(&mut self) {
        let rt = &mut self.rt;
        if rt.run.is_some() {
            rt.error("A run is in progress: cancel it first (Esc)");
            return;
        }
        let Some(model) = rt.current_model().map(str::to_string) else {
            rt.error("No model: drop a model file, choose Open…, or pick a built-in");
            return;
        };
        if let Err(e) = self.state.request.validate() {
            rt.error(e.to_string());
            return;
        }
        let needs_load = rt
            .loaded
            .as_ref()
            .is_none_or(|l| l.model != model || l.knobs != self.state.knobs);
        let refuses = self.plan_refuses();
        let rt = &mut self.rt;
        if needs_load && rt.loading.as_deref() != Some(model.as_str()) {
            if refuses {
                rt.error(format!(
                    "{model} does not fit in the memory free now: apply a fix from the plan bar, or Load anyway first"
                ));
                return;
            }
            if let Err(e) = rt.backend.load(&model, &self.state.knobs) {
                rt.error(e);
                return;
            }
            rt.loading = Some(model.clone());
        }
        if let Err(e) = rt.backend.generate(&self.state.request, &rt.out_dir) {
            rt.error(e);
            return;
        }
        rt.mark_run_event("start");
        rt.run = Some(super::state::RunProgress {
            stage: "queued".into(),
            step: 0,
            total: 0,
            started: std::time::Instant::now(),
        });
        rt.preview = None;
        rt.preview_wave.clear();
    }

    /// Reads an output's or profile's settings on the chores thread, then restores them.
    fn restore_from(&mut self, path: &std::path::Path) {
        let p = path.to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.rt.chores.run(
            format!("Reading {name}"),
            move |r| r.restore(&p),
            move |app, _, restored| app.restored(&name, restored),
        );
    }

    /// Takes what [`HeadroomApp::restore_from`] read: request, knobs, and the model it names.
    fn restored(&mut self, name: &str, restored: Result<super::backend::RestoredView, String>) {
        match restored {
            Ok(r) => {
                self.state.request = r.request;
                if let Some(k) = r.knobs {
                    self.state.knobs = k;
                }
                let mut msg = format!("Restored from {name}: {}", r.mapped.join(", "));
                if !r.unmapped.is_empty() {
                    msg.push_str(&format!("; not restored: {}", r.unmapped.join(", ")));
                }
                self.rt.notify(msg);
                if let Some(m) = r.model_hint
                    && self.rt.current_model() != Some(m.as_str())
                {
                    self.inspect(m);
                }
            }
            Err(e) => self.rt.error(e),
        }
    }

    /// Shows a saved run as an output (the card it already has, or a new one); returns its index.
    fn open_run(&mut self, ctx: &egui::Context, r: RunRecord) -> usize {
        let i = match self.rt.outputs.iter().position(|o| o.record.profile_path == r.profile_path) {
            Some(i) => i,
            None => self.add_output(ctx, r),
        };
        self.rt.selected = Some(i);
        self.rt.tab = CenterTab::Output;
        i
    }

    /// Runs output `i`'s request again with [`headroom_engine::Knobs::reference`] (every component
    /// f32, no offload or slicing); the A/B view opens with the pair when it is done
    /// (`compare_with`), and the knobs and request chosen before come back.
    fn compare_with_reference(&mut self, i: usize) {
        let Some(record) = self.rt.outputs.get(i).map(|o| o.record.clone()) else {
            return;
        };
        let reference = record.knobs.reference();
        if record.knobs == reference {
            self.rt.notify("This output is already the full-precision reference");
            return;
        }
        if self.rt.current_model() != Some(record.model.as_str()) {
            self.rt.error(format!("Compare needs {} loaded: restore its settings from History first", record.model));
            return;
        }
        self.lend();
        self.state.request = record.request.clone();
        self.state.knobs = reference;
        self.generate_with_seed_kept();
        if self.rt.run.is_some() {
            self.rt.compare_with = Some(i);
            self.rt.notify("Running the full-precision reference; A/B opens when it is done");
        } else {
            self.give_back();
        }
    }

    /// Keeps the user's knobs and request while compare or sweep runs set their own.
    fn lend(&mut self) {
        let chosen = (self.state.knobs, self.state.request.clone());
        self.rt.lent.get_or_insert(chosen);
    }

    /// Gives the lent knobs and request back.
    pub(super) fn give_back(&mut self) {
        if let Some((knobs, request)) = self.rt.lent.take() {
            self.state.knobs = knobs;
            self.state.request = request;
        }
    }

    /// Queues the sweep (the reference first, then each value on top of the current knobs) and
    /// starts it; a value the knob does not take is named and nothing runs.
    fn start_sweep(&mut self, knob: String, values: String) {
        if self.rt.run.is_some() || self.rt.sweep.running() {
            self.rt.error("A run is in progress: cancel it first (Esc)");
            return;
        }
        let mut queue = std::collections::VecDeque::new();
        queue.push_back((super::state::SWEEP_REFERENCE.to_string(), self.state.knobs.reference()));
        for v in values.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let mut k = self.state.knobs;
            if let Err(e) = k.set(&knob, v) {
                self.rt.error(format!("Sweep: {knob}={v}: {e}"));
                return;
            }
            queue.push_back((v.to_string(), k));
        }
        if queue.len() < 2 {
            self.rt.error("Sweep: name at least one value, e.g. f32,q8_0,q4k");
            return;
        }
        self.lend();
        self.rt.sweep = super::state::SweepState {
            knob,
            values,
            total: queue.len(),
            queue,
            by_time: self.rt.sweep.by_time,
            ..Default::default()
        };
        self.rt.tab = CenterTab::Sweep;
        self.sweep_next();
    }

    /// Starts the sweep's next run, or ends the sweep (giving the knobs back) when none is left.
    pub(super) fn sweep_next(&mut self) {
        let Some((value, knobs)) = self.rt.sweep.queue.pop_front() else {
            self.end_lent_runs();
            return;
        };
        self.state.knobs = knobs;
        if let Some((_, request)) = &self.rt.lent {
            self.state.request = request.clone();
        }
        self.generate_with_seed_kept();
        if self.rt.run.is_some() {
            self.rt.sweep.current = Some(value);
        } else {
            self.end_lent_runs();
        }
    }

    /// Ends what runs on lent knobs: a sweep (nothing in flight or queued) and a compare; the
    /// knobs and request chosen before them come back.
    pub(super) fn end_lent_runs(&mut self) {
        self.rt.sweep.current = None;
        self.rt.sweep.queue.clear();
        self.rt.compare_with = None;
        self.give_back();
    }

    fn restore_run(&mut self, r: &super::backend::RunRecord) {
        self.state.request = r.request.clone();
        self.state.knobs = r.knobs;
        if self.rt.current_model() != Some(r.model.as_str()) {
            self.inspect(r.model.clone());
        }
        self.rt.notify(format!(
            "Restored seed {} and knobs from {}",
            r.request.seed,
            r.profile_path.display()
        ));
    }

    fn save_output_as(&mut self, i: usize) {
        let Some(src) = self
            .rt
            .outputs
            .get(i)
            .and_then(|o| o.record.outputs.first().cloned())
        else {
            return;
        };
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(dest) = rfd::FileDialog::new().set_file_name(&name).save_file() {
            // Written atomically: a failed save leaves whatever `dest` held before.
            let saved = std::fs::read(&src)
                .map_err(|e| format!("{}: {e}", src.display()))
                .and_then(|bytes| {
                    headroom_engine::fsutil::write_atomic(&dest, &bytes).map_err(|e| e.to_string())
                });
            match saved {
                Ok(()) => self.rt.notify(format!("Saved {}", dest.display())),
                Err(e) => self.rt.error(e),
            }
        }
    }

    /// The audio player, started on first use.
    fn player(&mut self) -> Option<&crate::audio::Player> {
        if self.rt.player.is_none() {
            match crate::audio::Player::spawn(crate::audio::cpal_out::CpalOutput) {
                Ok(p) => self.rt.player = Some(p),
                Err(e) => self.rt.error(format!("audio thread: {e}")),
            }
        }
        self.rt.player.as_ref()
    }

    /// Plays output `i`: resumes it when it is the clip loaded, unless `from_start`, which always
    /// loads it again (rewound to 0).
    fn play_audio(&mut self, i: usize, from_start: bool) {
        let clip = match self.rt.outputs.get(i).map(|o| &o.media) {
            Some(Some(Ok(super::backend::Media::Audio(a)))) => {
                (a.sample_rate, std::sync::Arc::new(a.samples.clone()))
            }
            _ => return,
        };
        let switching = from_start || self.rt.audio_output != Some(i);
        let Some(p) = self.player() else { return };
        if let Some(e) = p.error() {
            let e = e.to_string();
            self.rt.error(e);
            return;
        }
        if switching {
            p.load(clip.0, clip.1);
        }
        p.play();
        self.rt.audio_output = Some(i);
    }
}
