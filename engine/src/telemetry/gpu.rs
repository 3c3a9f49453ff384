//! NVIDIA GPUs through NVML: name, memory, utilization and this process's share, with an honest
//! state when there is no driver, and retries that never run in a hot loop.

use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;

/// One reading of one NVIDIA GPU.
#[derive(Clone, Debug)]
pub struct GpuSample {
    /// NVML's device index.
    pub index: u32,
    /// The product name, e.g. `NVIDIA GeForce RTX 3060`.
    pub name: String,
    /// Memory in use on the device by every process (driver bookkeeping included).
    pub used_bytes: u64,
    /// The device's memory.
    pub total_bytes: u64,
    /// Percent of the last sample period during which a kernel was running.
    pub utilization_percent: u32,
    /// Memory held by this process, or `None` when NVML does not list it (no GPU context yet,
    /// or a container whose process ids differ from the host's).
    pub process_bytes: Option<u64>,
}

/// Whether GPU readings can be had.
#[derive(Clone, Debug)]
pub enum GpuStatus {
    /// NVML started and sees `count` devices.
    Available { count: u32 },
    /// No readings, and why, in words for a person.
    Unavailable(String),
}

/// First wait before trying NVML again after a failure that might pass (driver not loaded yet).
const FIRST_RETRY: Duration = Duration::from_secs(30);
/// Longest wait between retries.
const MAX_RETRY: Duration = Duration::from_secs(600);

/// Holds NVML once it has started, and decides when to try again when it has not.
pub(crate) struct GpuProbe {
    nvml: Option<Nvml>,
    status: GpuStatus,
    /// When to try `Nvml::init` again; `None` means never (the library is not there).
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl GpuProbe {
    /// Tries to start NVML once.
    pub(crate) fn new() -> Self {
        let mut probe = GpuProbe {
            nvml: None,
            status: GpuStatus::Unavailable("not checked yet".into()),
            retry_at: None,
            backoff: FIRST_RETRY,
        };
        probe.try_init();
        probe
    }

    /// The current state.
    pub(crate) fn status(&self) -> GpuStatus {
        self.status.clone()
    }

    fn try_init(&mut self) {
        match Nvml::init() {
            Ok(nvml) => match nvml.device_count() {
                Ok(0) => self.fail("no NVIDIA GPU found (NVML lists no devices)".into(), true),
                Ok(count) => {
                    self.status = GpuStatus::Available { count };
                    self.nvml = Some(nvml);
                    self.retry_at = None;
                }
                Err(e) => self.fail(format!("NVML started but cannot count GPUs: {e}"), true),
            },
            Err(NvmlError::LibloadingError(_)) => self.fail(
                "no NVIDIA GPU found (libnvidia-ml.so.1 not loadable)".into(),
                // The library will not appear while we run: do not try again.
                false,
            ),
            Err(NvmlError::DriverNotLoaded) => {
                self.fail("NVIDIA driver not loaded (NVML is installed)".into(), true)
            }
            Err(e) => self.fail(format!("NVML could not start: {e}"), true),
        }
    }

    fn fail(&mut self, why: String, retry: bool) {
        log::debug!("GPU readings unavailable: {why}");
        self.status = GpuStatus::Unavailable(why);
        self.nvml = None;
        self.retry_at = retry.then(|| Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
    }

    /// Reads every GPU; empty when NVML is unavailable. Retries a failed start only when its
    /// backoff has passed.
    pub(crate) fn sample(&mut self) -> Vec<GpuSample> {
        if self.nvml.is_none() && self.retry_at.is_some_and(|t| Instant::now() >= t) {
            self.try_init();
        }
        let Some(nvml) = &self.nvml else { return Vec::new() };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!("NVML stopped answering: {e}"), true);
                return Vec::new();
            }
        };
        let pid = std::process::id();
        let mut out = Vec::with_capacity(count as usize);
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else { continue };
            let Ok(mem) = device.memory_info() else { continue };
            let utilization_percent = device.utilization_rates().map(|u| u.gpu).unwrap_or(0);
            let compute = device.running_compute_processes();
            let graphics = device.running_graphics_processes();
            let process_bytes = match (compute, graphics) {
                (Err(_), Err(_)) => None,
                (c, g) => {
                    let listed: Vec<ProcessInfo> =
                        c.unwrap_or_default().into_iter().chain(g.unwrap_or_default()).collect();
                    own_bytes(&listed, pid)
                }
            };
            out.push(GpuSample {
                index,
                name: device.name().unwrap_or_else(|_| format!("GPU {index}")),
                used_bytes: mem.used,
                total_bytes: mem.total,
                utilization_percent,
                process_bytes,
            });
        }
        out
    }
}

/// This process's bytes in NVML's process lists; a process in both lists (compute and graphics)
/// is counted once, with the larger figure. `None` when it is not listed.
fn own_bytes(listed: &[ProcessInfo], pid: u32) -> Option<u64> {
    listed
        .iter()
        .filter(|p| p.pid == pid)
        .map(|p| match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => b,
            UsedGpuMemory::Unavailable => 0,
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starting the probe never panics, and an unavailable state explains itself in words.
    #[test]
    fn probe_is_honest() {
        let mut probe = GpuProbe::new();
        match probe.status() {
            GpuStatus::Available { count } => {
                assert!(count > 0);
                assert_eq!(probe.sample().len(), count as usize);
            }
            GpuStatus::Unavailable(why) => {
                assert!(why.contains("NVIDIA") || why.contains("NVML"), "{why}");
                assert!(probe.sample().is_empty());
            }
        }
    }
}
