//! The engine thread: takes commands in order, drives the loaded family, and turns every ending
//! — output, cancellation, error, panic — into events, staying usable after each.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use super::Loader;
use super::events::{CancelToken, EventTx, Observer};
use super::failure::{classify, error_event, panic_text};
use super::output::OutputSink;
use super::protocol::{Command, Event, Stage};
use crate::error::{Error, Result};
use crate::families::{Family, Retuned};
use crate::knobs::{DeviceKind, Knobs};
use crate::model::ModelRef;
use crate::plan::Plan;
use crate::profile::{ModelInfo, Profile, RunResult};
use crate::request::Request;
use crate::telemetry::{GpuHandle, RunRecorder, RunTelemetry};

/// A command with its place in the order of sending (for cancellation).
pub(crate) struct Envelope {
    pub(crate) seq: u64,
    pub(crate) cmd: Command,
}

/// The model in memory and what it was loaded with.
struct Loaded {
    family: Box<dyn Family>,
    knobs: Knobs,
    /// What profiles record about the model (source, SHA-256, family, name).
    info: ModelInfo,
    /// The load's telemetry, given to the first run after the load (its `load` timing).
    load_telemetry: Option<RunTelemetry>,
    /// The planner's view of the model (from its headers), for each run's memory check; `None`
    /// when the headers cannot be read as a model the planner knows.
    shape: Option<crate::plan::ModelShape>,
}

/// Everything the engine thread owns.
pub(crate) struct Worker {
    pub(crate) loader: Loader,
    pub(crate) sink: Box<dyn OutputSink>,
    pub(crate) events: EventTx,
    pub(crate) cancel: CancelToken,
    /// Commands sent but not yet finished (for `Engine::is_busy`).
    pub(crate) pending: Arc<AtomicUsize>,
    loaded: Option<Loaded>,
    gpu: Option<GpuHandle>,
}

impl Worker {
    pub(crate) fn new(
        loader: Loader,
        sink: Box<dyn OutputSink>,
        events: EventTx,
        cancel: CancelToken,
        pending: Arc<AtomicUsize>,
    ) -> Self {
        Worker { loader, sink, events, cancel, pending, loaded: None, gpu: None }
    }

    /// Serves commands until `Shutdown` or until the handle is gone, then drops the model here.
    pub(crate) fn run(mut self, commands: Receiver<Envelope>) {
        // NVML is started on this thread so that `Engine::spawn` returns at once.
        self.gpu = Some(GpuHandle::open());
        while let Ok(Envelope { seq, cmd }) = commands.recv() {
            let counted = !matches!(cmd, Command::Cancel | Command::Shutdown);
            let stop = matches!(cmd, Command::Shutdown);
            // The closing events are sent after the command counts as done, so a front end
            // that sees them also sees `is_busy() == false` (when nothing else is queued).
            let closing = match cmd {
                Command::Load { model, knobs } => self.load(seq, model, knobs),
                Command::Unload => {
                    self.unload();
                    vec![Event::Unloaded]
                }
                Command::Generate { request, out_dir } => self.generate(seq, &request, &out_dir),
                // Applied when it was sent (Engine::cancel); nothing is left to do here.
                Command::Cancel | Command::Shutdown => Vec::new(),
                Command::Plan { model, knobs, request, budget_bytes } => {
                    match plan(&model, &knobs, &request, budget_bytes) {
                        Ok(p) => vec![Event::Planned(Box::new(p))],
                        Err(e) => vec![error_event(&e, "")],
                    }
                }
            };
            if counted {
                self.pending.fetch_sub(1, Ordering::SeqCst);
            }
            for event in closing {
                self.events.send(event);
            }
            if stop {
                break;
            }
        }
        self.unload();
    }

    /// Drops the loaded model, if any; a panic in its `Drop` is logged, not propagated.
    fn unload(&mut self) {
        if let Some(loaded) = self.loaded.take()
            && let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(loaded)))
        {
            log::error!("panic while dropping the model: {}", panic_text(p.as_ref()));
        }
    }

    fn recorder(&self) -> RunRecorder {
        match &self.gpu {
            Some(g) => RunRecorder::start_with_gpus(g),
            None => RunRecorder::start(),
        }
    }

    /// Loads a model; returns the closing events.
    fn load(&mut self, seq: u64, model: ModelRef, knobs: Knobs) -> Vec<Event> {
        if self.cancel.is_cancelled(seq) {
            // Cancelled while queued: keep whatever is loaded.
            return vec![Event::Cancelled];
        }
        // the same model: the family reads again only the components whose knobs changed
        if self.loaded.as_ref().is_some_and(|l| l.info.source == model.to_string())
            && let Some(closing) = self.retune(seq, &model, knobs)
        {
            return closing;
        }
        if self.loaded.is_some() {
            // Free the old model before reading the new one: both rarely fit.
            self.unload();
            self.events.send(Event::Unloaded);
        }
        let mut recorder = self.recorder();
        let mut obs = Observer::loading(&self.events, &mut recorder, &self.cancel, seq, knobs.device);
        let loader = &self.loader;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let sha256 = {
                let obs = &obs;
                crate::model::fingerprint_checked(&model, &|| crate::families::RunObserver::cancelled(obs))?
            };
            let family = loader(&model, &knobs, &mut obs)?;
            let name = family.name().to_string();
            let weight_bytes = family.weight_bytes().iter().map(|(_, b)| b).sum::<u64>();
            let shape = model.resolve().ok().and_then(|p| crate::formats::inspect(&p).ok());
            let shape = shape.map(|i| crate::plan::ModelShape::from_inspection(&i));
            let components = family.components();
            let fields = family.fields();
            Ok::<_, Error>((family, name, weight_bytes, sha256, shape, components, fields))
        }));
        let telemetry = recorder.finish();
        let load_ms = telemetry.timings_ms.get(Stage::Load.name()).copied().unwrap_or(0);
        let mut closing = vec![Event::Telemetry(telemetry.clone())];
        closing.push(match result {
            Ok(Ok((family, name, weight_bytes, sha256, shape, components, fields))) => {
                let load_telemetry = Some(telemetry);
                let info = ModelInfo {
                    source: model.to_string(),
                    sha256,
                    family: name.clone(),
                    name: model.display_name(),
                    components: components.iter().map(|c| c.name.to_string()).collect(),
                    fields: fields.iter().map(|f| f.key.to_string()).collect(),
                };
                self.loaded = Some(Loaded { family, knobs, info, load_telemetry, shape });
                Event::Loaded { model, family: name, weight_bytes, load_ms, reread: None, components, fields }
            }
            Ok(Err(Error::Cancelled)) => Event::Cancelled,
            Ok(Err(e)) => {
                let (e, original) = classify(e, Some(Stage::Load), &knobs);
                error_event(&e, &original)
            }
            Err(p) => Event::Error {
                message: format!("internal error while loading: {}", panic_text(p.as_ref())),
                detail: format!("model {model}; nothing is loaded now"),
            },
        });
        closing
    }

    /// Gives the loaded model (the same as `model`) new knobs through [`Family::retune`]: the
    /// closing events, or `None` when the family cannot and the model must be loaded again. A
    /// partial read is timed and measured as a load (the next run's `load` timing); one that fails
    /// leaves nothing loaded.
    fn retune(&mut self, seq: u64, model: &ModelRef, knobs: Knobs) -> Option<Vec<Event>> {
        let mut recorder = self.recorder();
        let obs = Observer::loading(&self.events, &mut recorder, &self.cancel, seq, knobs.device);
        let cancel = crate::families::RunObserver::cancel_check(&obs);
        let l = self.loaded.as_mut()?;
        let result = catch_unwind(AssertUnwindSafe(|| l.family.retune(&l.knobs, &knobs, &cancel)));
        let telemetry = recorder.finish();
        let load_ms = telemetry.timings_ms.get(Stage::Load.name()).copied().unwrap_or(0);
        match result {
            Ok(Ok(Retuned::No)) => None,
            Ok(Ok(Retuned::Read(components))) => {
                l.knobs = knobs;
                let weight_bytes = l.family.weight_bytes().iter().map(|(_, b)| b).sum::<u64>();
                let family = l.info.family.clone();
                if !components.is_empty() {
                    l.load_telemetry = Some(telemetry.clone());
                }
                Some(vec![
                    Event::Telemetry(telemetry),
                    Event::Loaded {
                        model: model.clone(),
                        family,
                        weight_bytes,
                        load_ms,
                        reread: Some(components),
                        components: l.family.components(),
                        fields: l.family.fields(),
                    },
                ])
            }
            failed => {
                // a component was freed and its replacement not read: the model cannot run
                self.unload();
                let mut closing = vec![Event::Telemetry(telemetry), Event::Unloaded];
                closing.push(match failed {
                    Ok(Err(Error::Cancelled)) => Event::Cancelled,
                    Ok(Err(e)) => {
                        let (e, original) = classify(e, Some(Stage::Load), &knobs);
                        error_event(&e, &original)
                    }
                    Err(p) => Event::Error {
                        message: format!("internal error while reloading: {}", panic_text(p.as_ref())),
                        detail: format!("model {model}; nothing is loaded now"),
                    },
                    Ok(Ok(_)) => unreachable!("handled above"),
                });
                Some(closing)
            }
        }
    }

    /// Runs a request; returns the closing events.
    fn generate(&mut self, seq: u64, request: &Request, out_dir: &Path) -> Vec<Event> {
        if let Err(e) = request.validate() {
            return vec![error_event(&e, "")];
        }
        if self.loaded.is_none() {
            return vec![no_model()];
        }
        if self.cancel.is_cancelled(seq) {
            return vec![Event::Cancelled];
        }
        let mut recorder = self.recorder();
        let Some(loaded) = self.loaded.as_mut() else {
            return vec![no_model()];
        };
        // what each stage will need on the CPU, checked as it begins
        let cpu_stage_bytes = loaded
            .shape
            .as_ref()
            .map(|shape| crate::plan::predict(shape, &loaded.knobs, request, &Default::default()))
            .and_then(|plan| plan.into_iter().find(|d| d.device == DeviceKind::Cpu.to_string()))
            .map(|cpu| cpu.stage_bytes)
            .unwrap_or_default();
        let mut obs = Observer {
            events: &self.events,
            recorder: &mut recorder,
            cancel: &self.cancel,
            seq,
            stage: None,
            cpu_stage_bytes,
            device: loaded.knobs.device,
        };
        let family = &mut loaded.family;
        let result = catch_unwind(AssertUnwindSafe(|| family.generate(request, &mut obs)));
        // the buffer CPU layers widen narrow weights into is as large as the largest layer
        crate::nn::cpu::expand::release();
        let stage = obs.stage;
        let mut telemetry = recorder.finish();
        if let Some(load) = loaded.load_telemetry.take() {
            telemetry.merge(&load);
        }
        let end = match result {
            Ok(Ok(artifacts)) => {
                let started = Instant::now();
                let mut profile = Profile::new(loaded.info.clone(), request.clone(), loaded.knobs);
                profile.result = Some(RunResult {
                    peak_ram_bytes: telemetry.peak_ram_bytes,
                    peak_vram_bytes: telemetry.peak_vram_bytes,
                    peak_heap_bytes: telemetry.peak_heap_bytes.unwrap_or(0),
                    timings_ms: telemetry.timings_ms.clone(),
                    notes: telemetry.notes.clone(),
                    ..RunResult::default()
                });
                let sink = &mut self.sink;
                let written = catch_unwind(AssertUnwindSafe(|| sink.write(&artifacts, &mut profile, out_dir)));
                telemetry.timings_ms.insert(Stage::Save.name().into(), started.elapsed().as_millis() as u64);
                match written {
                    Ok(Ok((paths, profile_path))) => Event::Output { paths, profile_path, profile: Box::new(profile) },
                    Ok(Err(e)) => error_event(&e, "the run finished but its files could not be written"),
                    Err(p) => Event::Error {
                        message: format!("internal error while saving: {}", panic_text(p.as_ref())),
                        detail: String::new(),
                    },
                }
            }
            Ok(Err(Error::Cancelled)) => Event::Cancelled,
            Ok(Err(e)) => {
                let (e, original) = classify(e, stage, &loaded.knobs);
                let at = stage.map(|s| format!("during {}", s.name())).unwrap_or_default();
                let extra: Vec<String> = [original, at].into_iter().filter(|s| !s.is_empty()).collect();
                error_event(&e, &extra.join("\n"))
            }
            Err(p) => {
                let at = stage.map(|s| format!(" during {}", s.name())).unwrap_or_default();
                // A family that panicked may be in any state: do not run it again.
                self.unload();
                return vec![
                    Event::Telemetry(telemetry),
                    Event::Error {
                        message: format!("internal error while generating: {}", panic_text(p.as_ref())),
                        detail: format!(
                            "the model panicked{at}; it was unloaded — load it again to continue"
                        ),
                    },
                    Event::Unloaded,
                ];
            }
        };
        vec![Event::Telemetry(telemetry), end]
    }
}

/// The answer to `Generate` when nothing is loaded.
fn no_model() -> Event {
    Event::Error { message: "no model loaded".into(), detail: "load a model before generating".into() }
}

/// The planner's answer to [`Command::Plan`]. The one place the worker calls the planner.
///
/// # Errors
/// The model cannot be found or read.
fn plan(model: &ModelRef, knobs: &Knobs, request: &Request, budget_bytes: Option<u64>) -> Result<Plan> {
    crate::plan::plan_model(model, knobs, request, budget_bytes)
}
