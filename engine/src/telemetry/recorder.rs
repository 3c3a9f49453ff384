//! Per-run telemetry: stage timings and memory peaks by stage, with a light watcher thread that
//! samples RSS at 100 Hz and VRAM at 10 Hz while a run is active (see the module docs of
//! [`crate::telemetry`] for how each figure is measured).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::gpu::{GpuProbe, GpuSample, GpuStatus};
use super::{RunTelemetry, StagePeak, alloc, procmem};

/// RSS sampling period of the watcher.
const RSS_PERIOD: Duration = Duration::from_millis(10);
/// The watcher reads the GPUs every this many RSS samples (100 ms).
const GPU_EVERY: u32 = 10;

/// A shared NVML handle for recorders: opened once (by the worker), used by each run's watcher.
#[derive(Clone)]
pub struct GpuHandle(Arc<Mutex<GpuProbe>>);

impl GpuHandle {
    /// Tries to start NVML; never fails (see [`GpuHandle::status`]).
    pub fn open() -> GpuHandle {
        GpuHandle(Arc::new(Mutex::new(GpuProbe::new())))
    }

    /// Whether GPU readings can be had.
    pub fn status(&self) -> GpuStatus {
        self.lock().status()
    }

    fn sample(&self) -> Vec<GpuSample> {
        self.lock().sample()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GpuProbe> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Peaks since the last segment boundary, written by the watcher and read at stage changes.
#[derive(Default)]
struct Peaks {
    rss: AtomicU64,
    /// Sum over GPUs of this process's bytes, when any GPU lists it.
    vram_own: AtomicU64,
    vram_own_seen: AtomicBool,
    /// Sum over GPUs of the device's used bytes.
    vram_used: AtomicU64,
}

impl Peaks {
    fn record_gpus(&self, gpus: &[GpuSample]) -> (Option<u64>, u64) {
        let own = gpus.iter().filter_map(|g| g.process_bytes).reduce(|a, b| a + b);
        let used = gpus.iter().map(|g| g.used_bytes).sum();
        if let Some(own) = own {
            self.vram_own.fetch_max(own, Ordering::Relaxed);
            self.vram_own_seen.store(true, Ordering::Relaxed);
        }
        self.vram_used.fetch_max(used, Ordering::Relaxed);
        (own, used)
    }
}

struct Watcher {
    stop: SyncSender<()>,
    thread: JoinHandle<()>,
}

/// One stretch of a run between two stage changes.
#[derive(Default, Clone, Copy)]
struct Segment {
    ram: u64,
    vram_own: Option<u64>,
    vram_used: u64,
    heap: Option<u64>,
}

/// Records one run: call [`RunRecorder::stage`] at each stage change, then
/// [`RunRecorder::finish`]. Dropping it without finishing stops its watcher.
pub struct RunRecorder {
    current: Option<(String, Instant)>,
    timings_ms: BTreeMap<String, u64>,
    segments: Vec<(Option<String>, Segment)>,
    notes: Vec<String>,
    /// When the last step ended (or its stage began), and each step's milliseconds.
    last_step: Option<Instant>,
    step_ms: Vec<f64>,
    peaks: Arc<Peaks>,
    gpu: Option<GpuHandle>,
    watcher: Option<Watcher>,
    /// True while the kernel's `VmHWM` reset works, so it can be read per segment.
    kernel_peak: bool,
    vram_used_at_start: u64,
}

impl RunRecorder {
    /// Starts recording RAM (and heap) peaks only.
    pub fn start() -> RunRecorder {
        Self::start_inner(None)
    }

    /// Starts recording RAM, heap and GPU peaks, reading the GPUs through `gpu`.
    pub fn start_with_gpus(gpu: &GpuHandle) -> RunRecorder {
        let has_gpus = matches!(gpu.status(), GpuStatus::Available { .. });
        Self::start_inner(has_gpus.then(|| gpu.clone()))
    }

    fn start_inner(gpu: Option<GpuHandle>) -> RunRecorder {
        let kernel_peak = procmem::reset_peak_rss();
        alloc::reset_heap_peak();
        let peaks = Arc::new(Peaks::default());
        peaks.rss.store(procmem::current_rss_bytes().unwrap_or(0), Ordering::Relaxed);
        let vram_used_at_start = gpu.as_ref().map_or(0, |g| peaks.record_gpus(&g.sample()).1);
        let watcher = spawn_watcher(Arc::clone(&peaks), gpu.clone());
        RunRecorder {
            current: None,
            timings_ms: BTreeMap::new(),
            segments: Vec::new(),
            notes: Vec::new(),
            last_step: None,
            step_ms: Vec::new(),
            peaks,
            gpu,
            watcher,
            kernel_peak,
            vram_used_at_start,
        }
    }

    /// A new stage begins (the same name again continues adding to its timing).
    pub fn stage(&mut self, name: &str) {
        self.close_segment();
        let now = Instant::now();
        self.current = Some((name.to_string(), now));
        self.last_step = Some(now);
    }

    /// A denoising step ended: its time since the previous step (or the stage's start) is kept.
    pub fn step_done(&mut self) {
        let now = Instant::now();
        if let Some(prev) = self.last_step.replace(now) {
            self.step_ms.push(now.duration_since(prev).as_secs_f64() * 1e3);
        }
    }

    /// The stage in progress, if any.
    pub fn current_stage(&self) -> Option<&str> {
        self.current.as_ref().map(|(n, _)| n.as_str())
    }

    /// Adds a note to the run's telemetry (duplicates are kept once).
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// Ends the run: stops the watcher and returns the timings and peaks.
    pub fn finish(mut self) -> RunTelemetry {
        self.close_segment();
        self.current = None;
        self.stop_watcher();
        let own_seen = self.peaks.vram_own_seen.load(Ordering::Relaxed);
        let base = self.vram_used_at_start;
        let vram = |s: &Segment| {
            if own_seen { s.vram_own.unwrap_or(0) } else { s.vram_used.saturating_sub(base) }
        };
        let mut t = RunTelemetry {
            timings_ms: std::mem::take(&mut self.timings_ms),
            notes: std::mem::take(&mut self.notes),
            step_ms: std::mem::take(&mut self.step_ms),
            ..RunTelemetry::default()
        };
        for (stage, seg) in &self.segments {
            let peak = StagePeak { ram_bytes: seg.ram, vram_bytes: vram(seg), heap_bytes: seg.heap };
            t.peak_ram_bytes = t.peak_ram_bytes.max(peak.ram_bytes);
            t.peak_vram_bytes = t.peak_vram_bytes.max(peak.vram_bytes);
            t.peak_heap_bytes = super::max_opt(t.peak_heap_bytes, peak.heap_bytes);
            if let Some(stage) = stage {
                t.peaks_by_stage.entry(stage.clone()).or_default().absorb(&peak);
            }
        }
        if self.gpu.is_some() && !own_seen && t.peak_vram_bytes > 0 {
            t.notes.push(
                "peak VRAM is the GPU's used memory above what was in use when the run started \
                 (NVML does not list this process)"
                    .into(),
            );
        }
        t
    }

    /// Closes the stretch since the last boundary: its time goes to the current stage, its
    /// peaks are read and every peak source starts again from now.
    fn close_segment(&mut self) {
        if let Some((name, since)) = &self.current {
            *self.timings_ms.entry(name.clone()).or_default() += since.elapsed().as_millis() as u64;
        }
        let rss_now = procmem::current_rss_bytes().unwrap_or(0);
        let (own_now, used_now) = match &self.gpu {
            Some(g) => self.peaks.record_gpus(&g.sample()),
            None => (None, 0),
        };
        let mut ram = self.peaks.rss.swap(rss_now, Ordering::Relaxed).max(rss_now);
        if self.kernel_peak {
            ram = ram.max(procmem::kernel_peak_rss_bytes().unwrap_or(0));
            self.kernel_peak = procmem::reset_peak_rss();
        }
        let own_seen = self.peaks.vram_own_seen.load(Ordering::Relaxed);
        let vram_own = self.peaks.vram_own.swap(own_now.unwrap_or(0), Ordering::Relaxed);
        let seg = Segment {
            ram,
            vram_own: own_seen.then_some(vram_own),
            vram_used: self.peaks.vram_used.swap(used_now, Ordering::Relaxed),
            heap: alloc::heap_peak(),
        };
        alloc::reset_heap_peak();
        let stage = self.current.as_ref().map(|(n, _)| n.clone());
        self.segments.push((stage, seg));
    }

    fn stop_watcher(&mut self) {
        if let Some(w) = self.watcher.take() {
            let _ = w.stop.try_send(());
            let _ = w.thread.join();
        }
    }
}

impl Drop for RunRecorder {
    fn drop(&mut self) {
        self.stop_watcher();
    }
}

fn spawn_watcher(peaks: Arc<Peaks>, gpu: Option<GpuHandle>) -> Option<Watcher> {
    let (stop, stop_rx) = mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new().name("headroom-peaks".into()).spawn(move || {
        let mut tick = 0u32;
        loop {
            if let Some(rss) = procmem::current_rss_bytes() {
                peaks.rss.fetch_max(rss, Ordering::Relaxed);
            }
            tick = tick.wrapping_add(1);
            if let Some(g) = gpu.as_ref().filter(|_| tick.is_multiple_of(GPU_EVERY)) {
                peaks.record_gpus(&g.sample());
            }
            match stop_rx.recv_timeout(RSS_PERIOD) {
                Err(RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        }
    });
    match thread {
        Ok(thread) => Some(Watcher { stop, thread }),
        Err(e) => {
            log::warn!("could not start the peak watcher ({e}); peaks are read at stage changes only");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer touched and freed inside one stage shows in that stage's RAM peak, both stages
    /// get a timing, and a repeated note is kept once.
    #[test]
    fn peaks_are_kept_per_stage() {
        let _turn = crate::telemetry::RSS_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let mut rec = RunRecorder::start();
        rec.stage("denoise");
        let base = procmem::current_rss_bytes().unwrap();
        let mut v = vec![0u8; 128 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        let held = procmem::current_rss_bytes().unwrap();
        drop(v);
        rec.stage("decode");
        rec.note("a note");
        rec.note("a note");
        let t = rec.finish();
        assert!(t.timings_ms.contains_key("denoise") && t.timings_ms.contains_key("decode"));
        let denoise = t.peaks_by_stage["denoise"].ram_bytes;
        assert!(held >= base + (100 << 20), "the buffer did not show in RSS: {held}, base {base}");
        // The kernel's RSS counters are per-CPU and approximate by some pages: allow 1 MiB.
        assert!(denoise + (1 << 20) >= held, "denoise peak {denoise} below the RSS {held} seen during it");
        assert!(t.peak_ram_bytes >= denoise);
        assert_eq!(t.notes, vec!["a note".to_string()]);
    }
}
