//! The real [`Backend`]: the engine's worker, sampler, inspect, plan, profile, media and compare
//! behind the UI's trait. This is the only file that calls the engine; where an engine piece is
//! not in this build yet the method says so in one line instead of inventing a result.

use std::path::Path;
use std::sync::Arc;

use headroom_engine::{Knobs, Request};

use super::backend::{
    Backend, Comparison, EngineEvent, GpuInfo, Media, MemoryPoint, ModelSummary, PlanView, RestoredView,
    RunRecord,
};

/// Says which engine piece is missing from this build.
fn missing(piece: &str) -> String {
    format!("{piece} is not in this build of the engine yet")
}

/// The engine as the app sees it.
pub struct EngineBackend {
    /// Wakes the UI when the engine has news (`move || ctx.request_repaint()`).
    #[allow(dead_code)]
    waker: Arc<dyn Fn() + Send + Sync>,
}

impl EngineBackend {
    /// Starts the worker and the memory sampler; both wake the UI through `waker`.
    pub fn spawn(waker: impl Fn() + Send + Sync + 'static) -> Self {
        Self { waker: Arc::new(waker) }
    }
}

impl Backend for EngineBackend {
    fn inspect(&self, _model: &str) -> Result<ModelSummary, String> {
        Err(missing("model inspection (formats::inspect)"))
    }

    fn plan(&self, _model: &str, _knobs: &Knobs, _request: &Request, _budget: Option<u64>) -> Result<PlanView, String> {
        Err(missing("the planner (plan::plan)"))
    }

    fn load(&self, _model: &str, _knobs: &Knobs) -> Result<(), String> {
        Err(missing("the worker (worker::Engine)"))
    }

    fn generate(&self, _request: &Request, _out_dir: &Path) -> Result<(), String> {
        Err(missing("the worker (worker::Engine)"))
    }

    fn cancel(&self) {}

    fn try_recv(&self) -> Option<EngineEvent> {
        None
    }

    fn is_busy(&self) -> bool {
        false
    }

    fn memory_history(&self) -> Vec<MemoryPoint> {
        Vec::new()
    }

    fn gpu_info(&self) -> GpuInfo {
        GpuInfo::Unavailable(missing("the memory sampler (telemetry::Sampler)"))
    }

    fn restore(&self, _path: &Path) -> Result<RestoredView, String> {
        Err(missing("restoring from outputs (media::restore_from_file)"))
    }

    fn read_run(&self, _profile_path: &Path) -> Result<RunRecord, String> {
        Err(missing("profiles (profile::Profile::load)"))
    }

    fn read_media(&self, _path: &Path) -> Result<Media, String> {
        Err(missing("reading outputs (media::read_png/read_wav)"))
    }

    fn compare(&self, _a: &Media, _b: &Media) -> Result<Comparison, String> {
        Err(missing("A/B metrics (compare)"))
    }

    fn drift(&self, original: &RunRecord, again: &RunRecord) -> Vec<String> {
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
