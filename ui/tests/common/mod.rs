//! A fake engine for UI tests: answers the app's [`Backend`] calls from fixed tables and queues
//! the events a real worker would send, so the panels can be driven without model weights.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui_kittest::Harness;
use headroom_engine::families::{ComponentSpec, FieldSpec};
use headroom_engine::knobs::{Component, Precision};
use headroom_engine::media::Image;
use headroom_engine::worker::protocol::Preview;
use headroom_engine::{Knobs, Request};
use headroom_ui::app::HeadroomApp;
use headroom_ui::app::backend::{
    Backend, Comparison, DeviceUse, EngineEvent, Fix, GpuInfo, Media, MemoryPoint, ModelSummary,
    PlanView, Reader, RestoredView, RunRecord, Verdict,
};
use headroom_ui::app::state::SavedState;

/// Parameters of the fake model's components (SD 1.5's sizes).
pub const COMPONENTS: [(Component, u64); 3] = [
    (Component::Text, 123_060_480),
    (Component::Unet, 859_520_964),
    (Component::Vae, 83_653_863),
];

/// The fake engine.
#[derive(Default)]
pub struct FakeBackend {
    events: RefCell<VecDeque<EngineEvent>>,
    /// What `restore` answers per path.
    pub restorable: HashMap<PathBuf, RestoredView>,
    /// The plan's budget.
    pub budget_bytes: u64,
    /// What outputs decode to (default: a grey 64×64 image).
    pub media: Option<Media>,
    runs: RefCell<u32>,
    /// What is loaded, and with which knobs.
    loaded: RefCell<Option<(String, Knobs)>>,
    /// Loads that read the model (not ones answered in place).
    pub loads: std::rc::Rc<RefCell<u32>>,
    /// When set, `inspect` waits (on the chores thread) until the gate opens.
    pub inspect_gate: Option<Arc<Gate>>,
    /// The model's components as its (fake) family declares them: SD's unless a test plugs in
    /// another family's.
    pub components: Vec<ComponentSpec>,
    /// The request fields it declares: SD's image fields unless a test plugs in another's.
    pub fields: Vec<FieldSpec>,
}

/// A gate a slow read waits at until the test opens it (or 10 s pass).
#[derive(Default)]
pub struct Gate {
    open: std::sync::Mutex<bool>,
    turn: std::sync::Condvar,
}

impl Gate {
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.turn.notify_all();
    }

    fn wait(&self) {
        let open = self.open.lock().unwrap();
        let _unused = self
            .turn
            .wait_timeout_while(open, std::time::Duration::from_secs(10), |open| !*open)
            .unwrap();
    }
}

impl FakeBackend {
    pub fn new() -> Self {
        Self {
            budget_bytes: 8 << 30,
            components: headroom_engine::families::latent_diffusion::COMPONENTS.to_vec(),
            fields: headroom_engine::families::latent_diffusion::IMAGE_FIELDS.to_vec(),
            ..Default::default()
        }
    }
}

/// What the fake answers off the UI thread (a snapshot of the fake's tables).
pub struct FakeReader {
    inspect_gate: Option<Arc<Gate>>,
    components: Vec<ComponentSpec>,
    fields: Vec<FieldSpec>,
    restorable: HashMap<PathBuf, RestoredView>,
    budget_bytes: u64,
    media: Option<Media>,
}

impl Reader for FakeReader {
    fn inspect(&self, model: &str) -> Result<ModelSummary, String> {
        if let Some(g) = &self.inspect_gate {
            g.wait();
        }
        if !(model.ends_with(".safetensors") || model.starts_with("builtin:")) {
            return Err(format!("{model}: not a model file"));
        }
        let parameters = COMPONENTS.iter().map(|c| c.1).sum::<u64>();
        let bytes_by_precision: BTreeMap<String, u64> = [
            ("f32", 4.0),
            ("f16", 2.0),
            ("q8_0", 1.0625),
            ("q4k", 0.5625),
        ]
        .into_iter()
        .map(|(p, b)| (p.to_string(), (parameters as f64 * b) as u64))
        .collect();
        Ok(ModelSummary {
            model: model.into(),
            format: "safetensors".into(),
            family: "Stable Diffusion 1.x".into(),
            family_reason: "UNet with 4 down blocks and a 768-wide text encoder".into(),
            parameters,
            bytes_by_precision,
            components: COMPONENTS
                .iter()
                .map(|(c, n)| (c.name().to_string(), *n))
                .collect(),
            knob_components: self.components.clone(),
            fields: self.fields.clone(),
            warnings: if model.contains("odd") {
                vec!["tensor 'extra.weight' belongs to no component; it is not loaded".into()]
            } else {
                Vec::new()
            },
            audio: false,
        })
    }

    fn plan(
        &self,
        _model: &str,
        knobs: &Knobs,
        _r: &Request,
        budget: Option<u64>,
    ) -> Result<PlanView, String> {
        let weights: u64 = COMPONENTS
            .iter()
            .map(|(c, n)| {
                knobs
                    .precision
                    .get(*c)
                    .resolve(knobs.device)
                    .bytes_for(*n, 256)
            })
            .sum();
        let activation_bytes = 1 << 30;
        let budget_bytes = budget.unwrap_or(self.budget_bytes);
        let bytes = weights + activation_bytes;
        // the one fix this fake knows: every weight in q4k
        let q4k: u64 = COMPONENTS
            .iter()
            .map(|(_, n)| Precision::Q4K.bytes_for(*n, 256))
            .sum::<u64>()
            + activation_bytes;
        let (verdict, suggestions) = if bytes <= budget_bytes {
            (Verdict::Fits, Vec::new())
        } else if q4k <= budget_bytes {
            let fix = Fix {
                words: format!("precision=q4k: {q4k} bytes (some quality loss)"),
                changes: "precision=q4k".into(),
            };
            (Verdict::FitsWith, vec![fix])
        } else {
            (Verdict::DoesNotFit, Vec::new())
        };
        Ok(PlanView {
            verdict,
            weights_bytes: weights,
            activation_bytes,
            per_device: vec![DeviceUse {
                device: "cpu".into(),
                bytes,
                budget_bytes,
            }],
            suggestions,
            units: Some(5),
        })
    }

    fn restore(&self, path: &Path) -> Result<RestoredView, String> {
        self.restorable
            .get(path)
            .cloned()
            .ok_or_else(|| format!("{}: no profile in this file", path.display()))
    }

    fn read_run(&self, profile_path: &Path) -> Result<RunRecord, String> {
        Err(format!("{}: fake has no profiles", profile_path.display()))
    }

    fn read_media(&self, _path: &Path) -> Result<Media, String> {
        if let Some(m) = &self.media {
            return Ok(m.clone());
        }
        Ok(Media::Image(Image {
            width: 64,
            height: 64,
            rgb: vec![128; 64 * 64 * 3],
        }))
    }

    fn compare(&self, _a: &Media, _b: &Media) -> Result<Comparison, String> {
        Ok(Comparison {
            numbers: vec![("PSNR dB".into(), 99.0)],
            heatmap: None,
        })
    }

    fn drift(&self, original: &RunRecord, again: &RunRecord) -> Vec<String> {
        if original.sha256 == again.sha256 {
            Vec::new()
        } else {
            vec!["sha256".into()]
        }
    }
}

impl Backend for FakeBackend {
    fn reader(&self) -> Arc<dyn Reader> {
        Arc::new(FakeReader {
            inspect_gate: self.inspect_gate.clone(),
            components: self.components.clone(),
            fields: self.fields.clone(),
            restorable: self.restorable.clone(),
            budget_bytes: self.budget_bytes,
            media: self.media.clone(),
        })
    }

    fn load(&self, model: &str, knobs: &Knobs) -> Result<(), String> {
        // as the worker: the same model reads again only the components the knobs touch
        let reread = self
            .loaded
            .borrow()
            .as_ref()
            .filter(|(m, _)| m == model)
            .and_then(|(_, k)| k.components_to_reread(knobs, &self.components))
            .map(|c| c.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        if reread.is_none() {
            *self.loads.borrow_mut() += 1;
        }
        *self.loaded.borrow_mut() = Some((model.to_string(), *knobs));
        self.events.borrow_mut().push_back(EngineEvent::Loaded {
            model: model.into(),
            family: "latent-diffusion".into(),
            weight_bytes: 1 << 30,
            load_ms: match &reread {
                None => 12,
                Some(c) => 4 * c.len() as u64,
            },
            reread,
            components: self.components.clone(),
            fields: self.fields.clone(),
        });
        Ok(())
    }

    fn generate(&self, request: &Request, out_dir: &Path) -> Result<(), String> {
        let mut q = self.events.borrow_mut();
        let n = {
            let mut runs = self.runs.borrow_mut();
            *runs += 1;
            *runs
        };
        for step in 1..=request.steps.min(3) {
            q.push_back(EngineEvent::Progress {
                stage: "denoise".into(),
                step,
                total: request.steps.min(3),
            });
            q.push_back(EngineEvent::Preview(Preview::Image(Image {
                width: 8,
                height: 8,
                rgb: vec![step as u8 * 40; 192],
            })));
        }
        // what the worker records: the loaded model and the knobs it was loaded with
        let (model, knobs) = self
            .loaded
            .borrow()
            .clone()
            .unwrap_or_else(|| ("builtin:shapes".into(), Knobs::default()));
        q.push_back(EngineEvent::Output(Box::new(RunRecord {
            profile_path: out_dir.join(format!("run{n}.toml")),
            outputs: vec![out_dir.join(format!("run{n}.png"))],
            model,
            request: request.clone(),
            knobs,
            sha256: Some("ab".repeat(32)),
            peak_ram_bytes: 2 << 30,
            peak_vram_bytes: 0,
            peak_heap_bytes: 1 << 30,
            notes: if knobs.precision.get("unet").is_quantized() {
                vec!["unet: q8_0 weights are expanded to f32 one layer at a time".into()]
            } else {
                Vec::new()
            },
            timings_ms: vec![("denoise".into(), 900), ("decode".into(), 100)],
        })));
        Ok(())
    }

    fn cancel(&self) {
        self.events.borrow_mut().push_back(EngineEvent::Cancelled);
    }

    fn try_recv(&self) -> Option<EngineEvent> {
        self.events.borrow_mut().pop_front()
    }

    fn is_busy(&self) -> bool {
        !self.events.borrow().is_empty()
    }

    fn memory_history(&self) -> Vec<MemoryPoint> {
        // Fixed readings: gauges must not make a test depend on the machine.
        (0..10)
            .map(|i| MemoryPoint {
                t_secs: i as f64,
                ram_used_bytes: (8 << 30) + i * (1 << 28),
                ram_total_bytes: 24 << 30,
                process_rss_bytes: 1 << 30,
                gpus: Vec::new(),
            })
            .collect()
    }

    fn gpu_info(&self) -> GpuInfo {
        GpuInfo::Unavailable("no NVIDIA GPU found".into())
    }
}

/// A dropped file as the window system would hand it over.
#[derive(Debug)]
pub struct TestDrop(pub PathBuf);

impl egui::DroppedFile for TestDrop {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// A harness around the app with the fake engine, at the desktop size; slow reads run in the
/// frame that asks (answering in the next), so a fixed number of frames is enough.
pub fn harness(backend: FakeBackend) -> Harness<'static, HeadroomApp> {
    let app = HeadroomApp::new(
        SavedState::default(),
        Box::new(backend),
        std::env::temp_dir().join("headroom-ui-test"),
    )
    .with_inline_chores();
    app_harness(app)
}

/// The same with slow reads on the chores thread, as the app runs them.
pub fn threaded_harness(backend: FakeBackend) -> Harness<'static, HeadroomApp> {
    let app = HeadroomApp::new(
        SavedState::default(),
        Box::new(backend),
        std::env::temp_dir().join("headroom-ui-test"),
    );
    app_harness(app)
}

fn app_harness(app: HeadroomApp) -> Harness<'static, HeadroomApp> {
    Harness::builder()
        .with_size([1440.0, 900.0])
        .build_ui_state(|ui, app: &mut HeadroomApp| app.frame_ui(ui), app)
}

/// Drops files on the window and lets the app handle them.
pub fn drop_files(h: &mut Harness<'static, HeadroomApp>, paths: &[&str]) {
    for p in paths {
        h.input_mut()
            .dropped_files
            .push(Arc::new(TestDrop(PathBuf::from(p))));
    }
    h.run_steps(3);
}

/// The plan bar's text for the current plan, as the bar labels itself.
pub fn plan_bar_text(app: &HeadroomApp) -> Option<String> {
    match &app.rt.plan {
        Some(Ok(p)) => p.per_device.first().map(|d| {
            format!(
                "{}: {} of {}",
                d.device,
                headroom_ui::app::widgets::fmt_bytes(d.bytes),
                headroom_ui::app::widgets::fmt_bytes(d.budget_bytes)
            )
        }),
        _ => None,
    }
}
