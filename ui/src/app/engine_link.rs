//! The real [`Backend`]: the engine's worker, memory sampler, inspect, planner, profiles, media
//! and A/B metrics behind the UI's trait. This is the only file of the app that calls the engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headroom_engine::knobs::DeviceKind;
use headroom_engine::plan::{self, Budgets, ModelShape, Plan};
use headroom_engine::profile::Profile;
use headroom_engine::telemetry::{GpuStatus, MemorySample, Sampler};
use headroom_engine::worker::{Command, Engine, Event, Loader};
use headroom_engine::{Knobs, ModelRef, Request, compare, formats, media};

use super::backend::{
    Backend, Comparison, DeviceUse, EngineEvent, GpuInfo, Media, MemoryPoint, ModelSummary,
    Fix, PlanView, Reader, RestoredView, RunRecord, Verdict,
};
use super::widgets::fmt_bytes;

/// How often the memory gauges are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// The engine as the app sees it: the worker thread and the [`EngineReader`] (which holds the
/// sampler thread).
pub struct EngineBackend {
    engine: Engine,
    reader: Arc<EngineReader>,
}

/// The engine's reads for the chores thread: inspect, the planner (with a cache of model shapes,
/// so the plan follows the knobs without reading headers again, and the sampler's latest reading
/// for the free memory), profiles, media and A/B metrics.
pub struct EngineReader {
    sampler: Sampler,
    shapes: Mutex<HashMap<String, ModelShape>>,
}

impl EngineBackend {
    /// Starts the worker and the memory sampler; both wake the UI through `waker`
    /// (`move || ctx.request_repaint()`).
    pub fn spawn<W: Fn() + Send + Sync + Clone + 'static>(waker: W) -> Self {
        Self::spawn_with(waker, Box::new(headroom_engine::families::load))
    }

    /// Like [`EngineBackend::spawn`] with another way to open models (tests and tools run the
    /// real worker, media and profiles around a stand-in family this way).
    pub fn spawn_with<W: Fn() + Send + Sync + Clone + 'static>(waker: W, loader: Loader) -> Self {
        Self {
            engine: Engine::spawn_with(waker.clone(), loader),
            reader: Arc::new(EngineReader {
                sampler: Sampler::spawn(SAMPLE_INTERVAL, waker),
                shapes: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl EngineReader {
    fn shapes(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelShape>> {
        self.shapes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The model's shape for the planner, inspecting it the first time.
    fn shape(&self, model: &str) -> Result<ModelShape, String> {
        if let Some(s) = self.shapes().get(model) {
            return Ok(s.clone());
        }
        let insp = inspect(model)?;
        let shape = ModelShape::runnable(&insp).map_err(|e| e.to_string())?;
        self.shapes().insert(model.to_string(), shape.clone());
        Ok(shape)
    }

    /// Budgets per device: the given one for the run's device, else what is free now.
    fn budgets(&self, knobs: &Knobs, given: Option<u64>) -> Budgets {
        let sample = self
            .sampler
            .latest()
            .unwrap_or_else(headroom_engine::telemetry::sample_once);
        let mut b = Budgets::default();
        b.0.insert(
            DeviceKind::Cpu,
            sample.ram_total_bytes.saturating_sub(sample.ram_used_bytes),
        );
        if let DeviceKind::Cuda(n) = knobs.device
            && let Some(g) = sample.gpus.iter().find(|g| g.cuda_ordinal == Some(n))
        {
            b.0.insert(knobs.device, g.total_bytes.saturating_sub(g.used_bytes));
        }
        if let Some(g) = given {
            b.0.insert(knobs.device, g);
        }
        b
    }
}

fn inspect(model: &str) -> Result<formats::Inspection, String> {
    let path = ModelRef::parse(model)
        .resolve()
        .map_err(|e| e.to_string())?;
    formats::inspect(&path).map_err(|e| e.to_string())
}

fn plan_view(p: &Plan) -> PlanView {
    PlanView {
        verdict: match p.verdict {
            plan::Verdict::Fits => Verdict::Fits,
            plan::Verdict::FitsWith => Verdict::FitsWith,
            plan::Verdict::DoesNotFit => Verdict::DoesNotFit,
        },
        weights_bytes: p.weights_bytes,
        activation_bytes: p.activation_bytes,
        per_device: p
            .per_device
            .iter()
            .map(|d| DeviceUse {
                device: d.device.clone(),
                bytes: d.total_bytes,
                budget_bytes: d.budget_bytes.unwrap_or(0),
            })
            .collect(),
        suggestions: p
            .suggestions
            .iter()
            .map(|s| Fix {
                words: format!(
                    "{}: {} ({})",
                    s.changes_text().replace(',', ", "),
                    fmt_bytes(s.total_bytes),
                    s.cost
                ),
                changes: s.changes_text(),
            })
            .collect(),
        units: (p.unet_blocks > 0).then_some(p.unet_blocks),
    }
}

/// A profile (and where it and its outputs are) as a history/output card.
fn record(profile: &Profile, profile_path: PathBuf, outputs: Vec<PathBuf>) -> RunRecord {
    let result = profile.result.as_ref();
    RunRecord {
        profile_path,
        outputs,
        model: profile.model.source.clone(),
        request: profile.request.clone(),
        knobs: profile.knobs,
        sha256: result.map(|r| r.sha256.clone()),
        peak_ram_bytes: result.map_or(0, |r| r.peak_ram_bytes),
        peak_vram_bytes: result.map_or(0, |r| r.peak_vram_bytes),
        peak_heap_bytes: result.map_or(0, |r| r.peak_heap_bytes),
        notes: result.map(|r| r.notes.clone()).unwrap_or_default(),
        timings_ms: result
            .map(|r| r.timings_ms.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default(),
    }
}

fn memory_point(s: &MemorySample) -> MemoryPoint {
    MemoryPoint {
        t_secs: s.t_secs,
        ram_used_bytes: s.ram_used_bytes,
        ram_total_bytes: s.ram_total_bytes,
        process_rss_bytes: s.process_rss_bytes,
        gpus: s
            .gpus
            .iter()
            .map(|g| {
                // Name the GPU as knobs do (cuda:N honours CUDA_VISIBLE_DEVICES), not by NVML's index.
                let name = match g.cuda_ordinal {
                    Some(n) => format!("cuda:{n} {}", g.name),
                    None => format!("{} (hidden from CUDA)", g.name),
                };
                (name, g.used_bytes, g.total_bytes)
            })
            .collect(),
    }
}

impl Reader for EngineReader {
    fn inspect(&self, model: &str) -> Result<ModelSummary, String> {
        let insp = inspect(model)?;
        let recognition = headroom_engine::families::recognise(&insp).map(|(r, _)| r);
        // a model no family runs is not cached: its plan is the planner's refusal
        if let Ok(shape) = ModelShape::runnable(&insp) {
            self.shapes().insert(model.to_string(), shape);
        }
        Ok(ModelSummary {
            model: model.to_string(),
            format: insp.format.name().to_string(),
            family: insp.family.label.clone(),
            family_reason: insp.family.reason.clone(),
            parameters: insp.parameters(),
            bytes_by_precision: insp.bytes_by_precision(),
            components: insp
                .components
                .iter()
                .map(|c| (c.name.clone(), c.parameters))
                .collect(),
            warnings: insp.warnings.clone(),
            knob_components: recognition.as_ref().map(|r| r.components.clone()).unwrap_or_default(),
            fields: recognition.map(|r| r.fields).unwrap_or_default(),
            audio: headroom_engine::model::makes_audio(&ModelRef::parse(model)),
        })
    }

    fn plan(
        &self,
        model: &str,
        knobs: &Knobs,
        request: &Request,
        budget: Option<u64>,
    ) -> Result<PlanView, String> {
        let shape = self.shape(model)?;
        Ok(plan_view(&plan::plan(
            &shape,
            knobs,
            request,
            &self.budgets(knobs, budget),
        )))
    }

    fn restore(&self, path: &Path) -> Result<RestoredView, String> {
        let r = media::restore_from_file(path).map_err(|e| e.to_string())?;
        Ok(RestoredView {
            knobs: r.profile.as_ref().map(|p| p.knobs),
            request: r.request,
            model_hint: r.model_hint,
            mapped: r.mapped,
            unmapped: r.unmapped,
        })
    }

    fn read_run(&self, profile_path: &Path) -> Result<RunRecord, String> {
        let profile = Profile::load(profile_path).map_err(|e| e.to_string())?;
        let outputs = profile
            .result
            .as_ref()
            .map(|r| {
                let p = PathBuf::from(&r.output);
                let p = if p.is_relative() {
                    profile_path.parent().unwrap_or(Path::new(".")).join(p)
                } else {
                    p
                };
                vec![p]
            })
            .unwrap_or_default();
        Ok(record(&profile, profile_path.to_path_buf(), outputs))
    }

    fn read_media(&self, path: &Path) -> Result<Media, String> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "wav" => media::read_wav(path)
                .map(|(a, _)| Media::Audio(a))
                .map_err(|e| e.to_string()),
            _ => media::read_png(path)
                .map(|(i, _)| Media::Image(i))
                .map_err(|e| e.to_string()),
        }
    }

    fn compare(&self, a: &Media, b: &Media) -> Result<Comparison, String> {
        let e = |e: headroom_engine::Error| e.to_string();
        match (a, b) {
            (Media::Image(a), Media::Image(b)) => Ok(Comparison {
                numbers: vec![
                    ("PSNR dB".into(), compare::psnr_db(a, b).map_err(e)?),
                    ("SSIM".into(), compare::ssim(a, b).map_err(e)?),
                    (
                        "max abs diff".into(),
                        compare::max_abs_diff(a, b).map_err(e)? as f64,
                    ),
                ],
                heatmap: Some(compare::diff_heatmap(a, b).map_err(e)?),
            }),
            (Media::Audio(a), Media::Audio(b)) => Ok(Comparison {
                numbers: vec![
                    ("SNR dB".into(), compare::snr_db(a, b).map_err(e)?),
                    (
                        "log-spectral distance dB".into(),
                        compare::log_spectral_distance(a, b).map_err(e)?,
                    ),
                ],
                heatmap: None,
            }),
            _ => Err("A is an image and B is audio (or the other way): nothing to compare".into()),
        }
    }

    fn drift(&self, original: &RunRecord, again: &RunRecord) -> Vec<String> {
        match (
            Profile::load(&original.profile_path),
            Profile::load(&again.profile_path),
        ) {
            (Ok(a), Ok(b)) => a.drift(&b),
            _ => {
                let mut d = original.knobs.diff(&again.knobs);
                if original.request != again.request {
                    d.push("request".into());
                }
                if original.sha256 != again.sha256 {
                    d.push("output sha256".into());
                }
                d
            }
        }
    }
}

impl Backend for EngineBackend {
    fn reader(&self) -> Arc<dyn Reader> {
        self.reader.clone()
    }

    fn load(&self, model: &str, knobs: &Knobs) -> Result<(), String> {
        self.engine
            .send(Command::Load {
                model: ModelRef::parse(model),
                knobs: *knobs,
            })
            .map_err(|e| e.to_string())
    }

    fn generate(&self, request: &Request, out_dir: &Path) -> Result<(), String> {
        self.engine
            .send(Command::Generate {
                request: request.clone(),
                out_dir: out_dir.to_path_buf(),
            })
            .map_err(|e| e.to_string())
    }

    fn cancel(&self) {
        self.engine.cancel();
    }

    fn try_recv(&self) -> Option<EngineEvent> {
        loop {
            let ev = match self.engine.try_recv()? {
                Event::Loaded {
                    model,
                    family,
                    weight_bytes,
                    load_ms,
                    reread,
                    components,
                    fields,
                } => EngineEvent::Loaded {
                    model: model.to_string(),
                    family,
                    weight_bytes,
                    load_ms,
                    reread,
                    components,
                    fields,
                },
                Event::Unloaded => EngineEvent::Unloaded,
                Event::Progress { stage, step, total } => EngineEvent::Progress {
                    stage: stage.name().into(),
                    step,
                    total,
                },
                Event::Preview(p) => EngineEvent::Preview(p),
                Event::Output {
                    paths,
                    profile_path,
                    profile,
                } => EngineEvent::Output(Box::new(record(&profile, profile_path, paths))),
                Event::Cancelled => EngineEvent::Cancelled,
                Event::Error { message, detail } => EngineEvent::Error { message, detail },
                // Peaks and timings also arrive in the profile; plans are computed in place.
                Event::Telemetry(_) | Event::Planned(_) => continue,
            };
            return Some(ev);
        }
    }

    fn is_busy(&self) -> bool {
        self.engine.is_busy()
    }

    fn memory_history(&self) -> Vec<MemoryPoint> {
        self.reader.sampler.history().iter().map(memory_point).collect()
    }

    fn gpu_info(&self) -> GpuInfo {
        match self.reader.sampler.gpu_status() {
            GpuStatus::Available { count } => GpuInfo::Available(count),
            GpuStatus::Unavailable(why) => GpuInfo::Unavailable(why),
        }
    }
}
