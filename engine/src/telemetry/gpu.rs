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
    /// NVML's device index (PCI order, every GPU on the machine) — not the CUDA device number.
    pub index: u32,
    /// The CUDA device number (`cuda:N`) this GPU has in this process, honouring
    /// `CUDA_VISIBLE_DEVICES` (see [`cuda_to_nvml`]); `None` when CUDA cannot see it.
    pub cuda_ordinal: Option<u32>,
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
        let identities: Vec<NvmlIdentity> = (0..count)
            .map(|index| {
                let device = nvml.device_by_index(index).ok();
                let uuid = device.as_ref().and_then(|d| d.uuid().ok()).unwrap_or_default();
                let mig_uuids = device
                    .as_ref()
                    .and_then(|d| Some((d, d.mig_device_count().ok()?)))
                    .map(|(d, n)| (0..n).filter_map(|i| d.mig_device_by_index(i).ok()?.uuid().ok()).collect())
                    .unwrap_or_default();
                NvmlIdentity { index, uuid, mig_uuids }
            })
            .collect();
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let ordinals = cuda_to_nvml(visible.as_deref(), &identities);
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
                cuda_ordinal: ordinals.iter().position(|&n| n == index).and_then(|o| u32::try_from(o).ok()),
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

/// What `CUDA_VISIBLE_DEVICES` can name an NVML device by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NvmlIdentity {
    /// NVML's index (PCI bus order).
    pub index: u32,
    /// `GPU-xxxxxxxx-xxxx-…`.
    pub uuid: String,
    /// `MIG-…` UUIDs of the MIG instances on this GPU (a MIG instance maps to its parent GPU:
    /// NVML's memory figures are the whole GPU's).
    pub mig_uuids: Vec<String>,
}

/// The NVML index behind each CUDA device number: CUDA's `cuda:N` is NVML device `result[N]`.
///
/// `visible` is `CUDA_VISIBLE_DEVICES` as the CUDA runtime reads it: unset means every device in
/// NVML's order (CUDA's order when `CUDA_DEVICE_ORDER=PCI_BUS_ID`, and on machines whose GPUs are
/// alike; with mixed GPUs CUDA's default "fastest first" may differ, which NVML cannot tell); a
/// comma-separated list of NVML indices, `GPU-` UUIDs or `MIG-` UUIDs (a unique prefix is
/// enough, as CUDA allows), where the first entry that is empty, unknown, ambiguous or repeated
/// ends the list, and everything after it is hidden; an empty value hides every device.
pub fn cuda_to_nvml(visible: Option<&str>, devices: &[NvmlIdentity]) -> Vec<u32> {
    let Some(visible) = visible else {
        return devices.iter().map(|d| d.index).collect();
    };
    let mut out: Vec<u32> = Vec::new();
    for entry in visible.split(',').map(str::trim) {
        let found = if entry.is_empty() {
            None
        } else if let Ok(n) = entry.parse::<u32>() {
            devices.iter().find(|d| d.index == n).map(|d| d.index)
        } else {
            let wanted = entry.to_ascii_lowercase();
            let matches = |uuid: &str| !uuid.is_empty() && uuid.to_ascii_lowercase().starts_with(&wanted);
            // Old MIG syntax: MIG-GPU-<parent uuid>/<gi>/<ci> names the parent GPU.
            let parent = wanted.strip_prefix("mig-").filter(|w| w.starts_with("gpu-")).map(|w| w.split('/').next().unwrap_or(w));
            let hits: Vec<u32> = devices
                .iter()
                .filter(|d| match &parent {
                    Some(p) => d.uuid.eq_ignore_ascii_case(p),
                    None => matches(&d.uuid) || d.mig_uuids.iter().any(|m| matches(m)),
                })
                .map(|d| d.index)
                .collect();
            if let [one] = hits.as_slice() { Some(*one) } else { None }
        };
        match found {
            Some(n) if !out.contains(&n) => out.push(n),
            _ => break,
        }
    }
    out
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

    fn gpus() -> Vec<NvmlIdentity> {
        (0..4)
            .map(|i| NvmlIdentity {
                index: i,
                uuid: format!("GPU-{i}{i}{i}{i}aaaa-1111-2222-3333-44445555666{i}"),
                mig_uuids: if i == 2 { vec!["MIG-abcdef01-0000-1111-2222-333344445555".into()] } else { vec![] },
            })
            .collect()
    }

    /// CUDA_VISIBLE_DEVICES maps CUDA ordinals onto NVML devices: unset is the identity, indices
    /// reorder, GPU- and MIG- UUIDs (and unique prefixes) name their GPU, and an unknown,
    /// ambiguous or repeated entry hides itself and everything after it, as the CUDA runtime does.
    #[test]
    fn cuda_visible_devices_maps_ordinals() {
        let g = gpus();
        assert_eq!(cuda_to_nvml(None, &g), [0, 1, 2, 3]);
        assert_eq!(cuda_to_nvml(Some("2,0"), &g), [2, 0]);
        assert_eq!(cuda_to_nvml(Some(" 3 , 1"), &g), [3, 1]);
        assert_eq!(cuda_to_nvml(Some(""), &g), Vec::<u32>::new());
        assert_eq!(cuda_to_nvml(Some("1,7,0"), &g), [1], "an index past the last GPU ends the list");
        assert_eq!(cuda_to_nvml(Some("1,1,0"), &g), [1], "a repeat ends the list");
        assert_eq!(cuda_to_nvml(Some("-1"), &g), Vec::<u32>::new(), "-1 hides every GPU");
        assert_eq!(cuda_to_nvml(Some("GPU-3333aaaa-1111-2222-3333-444455556663,0"), &g), [3, 0]);
        assert_eq!(cuda_to_nvml(Some("gpu-1111"), &g), [1], "a unique prefix, any case");
        assert_eq!(cuda_to_nvml(Some("GPU-,2"), &g), Vec::<u32>::new(), "an ambiguous prefix ends the list");
        assert_eq!(cuda_to_nvml(Some("MIG-abcdef01-0000-1111-2222-333344445555"), &g), [2]);
        assert_eq!(cuda_to_nvml(Some("MIG-GPU-1111aaaa-1111-2222-3333-444455556661/0/0"), &g), [1]);
        assert_eq!(cuda_to_nvml(Some("GPU-ffff"), &g), Vec::<u32>::new());
    }

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
