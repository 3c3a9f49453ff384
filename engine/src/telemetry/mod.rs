//! Memory and time: the RAM/VRAM [`Sampler`] thread for the GUI's monitor, per-run timings and
//! memory peaks by stage ([`RunRecorder`] → [`RunTelemetry`]), and a counting allocator
//! ([`CountingAlloc`]) for tests and benchmarks on the CPU.
//!
//! How peaks are measured:
//! - **RAM** (process RSS): on Linux the kernel's own high-water mark `VmHWM` from
//!   `/proc/self/status`, reset at every stage change by writing `5` to `/proc/self/clear_refs`,
//!   so a peak between two samples is never missed. A watcher thread also samples the RSS every
//!   10 ms (100 Hz) and the larger figure wins; where the reset does not work (other systems,
//!   old kernels) the sampled figure is what is reported.
//! - **VRAM**: NVML, sampled every 100 ms by the same watcher and once at each stage change. The
//!   process's own bytes when NVML lists the process; otherwise the device's used memory above
//!   what was in use when the run started, and the run's notes say so.
//! - **Heap**: when [`CountingAlloc`] is the global allocator, its exact peak, reset per stage.

mod alloc;
mod gpu;
pub mod limits;
pub mod procmem;
mod recorder;
mod sampler;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use alloc::{CountingAlloc, heap_current, heap_peak, reset_heap_peak};
pub use gpu::{GpuSample, GpuStatus, NvmlIdentity, cuda_to_nvml};
pub use recorder::{GpuHandle, RunRecorder};
pub use sampler::{HISTORY_SPAN, MemorySample, Sampler, sample_once};

/// Memory peaks of one stage of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StagePeak {
    /// Peak process RSS during the stage.
    pub ram_bytes: u64,
    /// Peak GPU memory during the stage (see the module docs for what is counted).
    pub vram_bytes: u64,
    /// Peak live heap bytes during the stage, when [`CountingAlloc`] is installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_bytes: Option<u64>,
}

/// Timings and memory peaks of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunTelemetry {
    /// Milliseconds per stage name (`load`, `text`, `denoise`, `decode`, `save`); a stage
    /// entered more than once (a batch) adds up.
    pub timings_ms: BTreeMap<String, u64>,
    /// Peak process RSS during the run.
    pub peak_ram_bytes: u64,
    /// Peak GPU memory during the run.
    pub peak_vram_bytes: u64,
    /// Peak live heap bytes during the run, when [`CountingAlloc`] is installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_heap_bytes: Option<u64>,
    /// Peaks per stage name.
    pub peaks_by_stage: BTreeMap<String, StagePeak>,
    /// What the run must say, e.g. "unet: bf16 convolution computed in f32 on cpu".
    pub notes: Vec<String>,
    /// Milliseconds of each denoising step, in order (a batch's runs one after another).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub step_ms: Vec<f64>,
}

impl RunTelemetry {
    /// Adds another part of the same run (e.g. the model's load) to this one: timings add up,
    /// peaks take the larger, notes are appended.
    pub fn merge(&mut self, other: &RunTelemetry) {
        for (stage, ms) in &other.timings_ms {
            *self.timings_ms.entry(stage.clone()).or_default() += ms;
        }
        self.peak_ram_bytes = self.peak_ram_bytes.max(other.peak_ram_bytes);
        self.peak_vram_bytes = self.peak_vram_bytes.max(other.peak_vram_bytes);
        self.peak_heap_bytes = max_opt(self.peak_heap_bytes, other.peak_heap_bytes);
        for (stage, p) in &other.peaks_by_stage {
            self.peaks_by_stage.entry(stage.clone()).or_default().absorb(p);
        }
        self.notes.extend(other.notes.iter().cloned());
        self.step_ms.extend(other.step_ms.iter().copied());
    }

    /// The mean denoising step after the first (which pays one-time costs such as first-touch
    /// allocation), or the only step's time; `None` without steps.
    pub fn mean_step_after_first_ms(&self) -> Option<f64> {
        match self.step_ms.as_slice() {
            [] => None,
            [only] => Some(*only),
            [_, rest @ ..] => Some(rest.iter().sum::<f64>() / rest.len() as f64),
        }
    }
}

impl StagePeak {
    /// Takes the larger of each figure.
    pub fn absorb(&mut self, other: &StagePeak) {
        self.ram_bytes = self.ram_bytes.max(other.ram_bytes);
        self.vram_bytes = self.vram_bytes.max(other.vram_bytes);
        self.heap_bytes = max_opt(self.heap_bytes, other.heap_bytes);
    }
}

/// Tests that measure this process's RSS or reset its kernel peak take turns.
#[cfg(test)]
pub(crate) static RSS_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
