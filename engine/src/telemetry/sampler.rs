//! The memory sampler: a named thread that reads system RAM, this process's RSS and every NVIDIA
//! GPU at a fixed interval, keeping the last five minutes for the GUI's memory monitor.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sysinfo::System;

use super::gpu::{GpuProbe, GpuSample, GpuStatus};
use super::procmem;

/// How much history [`Sampler::history`] keeps.
pub const HISTORY_SPAN: Duration = Duration::from_secs(5 * 60);
/// Upper bound on kept samples, whatever the interval.
const HISTORY_MAX_SAMPLES: usize = 30_000;

/// One reading of the machine's memory.
#[derive(Clone, Debug, Default)]
pub struct MemorySample {
    /// Seconds since the sampler started (0 for [`sample_once`]).
    pub t_secs: f64,
    /// RAM in use by everything on the machine.
    pub ram_used_bytes: u64,
    /// The machine's RAM.
    pub ram_total_bytes: u64,
    /// This process's resident set size.
    pub process_rss_bytes: u64,
    /// Every NVIDIA GPU; empty when NVML is unavailable.
    pub gpus: Vec<GpuSample>,
}

/// Reads RAM, RSS and GPUs; shared by the sampler thread and [`sample_once`].
struct Reader {
    sys: Option<System>,
    gpu: GpuProbe,
}

impl Reader {
    fn new() -> Self {
        let sys = System::new().map_err(|e| log::warn!("system memory readings unavailable: {e}")).ok();
        Reader { sys, gpu: GpuProbe::new() }
    }

    fn read(&mut self, t_secs: f64) -> MemorySample {
        let (ram_used_bytes, ram_total_bytes) = match &mut self.sys {
            Some(sys) => {
                sys.refresh_memory();
                (sys.used_memory(), sys.total_memory())
            }
            None => (0, 0),
        };
        MemorySample {
            t_secs,
            ram_used_bytes,
            ram_total_bytes,
            process_rss_bytes: procmem::current_rss_bytes().unwrap_or(0),
            gpus: self.gpu.sample(),
        }
    }
}

/// How many readings [`HISTORY_SPAN`] holds at `interval`, within [1, 30 000].
fn history_capacity(interval: Duration) -> usize {
    let n = HISTORY_SPAN.as_secs_f64() / interval.as_secs_f64().max(1e-3);
    (n.ceil() as usize).clamp(1, HISTORY_MAX_SAMPLES)
}

/// One reading now, for the CLI. Starts NVML for this call only.
pub fn sample_once() -> MemorySample {
    Reader::new().read(0.0)
}

struct Shared {
    history: VecDeque<MemorySample>,
    gpu_status: GpuStatus,
}

/// The sampler thread's handle. Dropping it stops and joins the thread.
pub struct Sampler {
    shared: Arc<Mutex<Shared>>,
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts the thread `headroom-sampler`, reading every `interval` (100 ms is the GUI's
    /// choice) and calling `waker` after each reading. The first reading is taken at once.
    ///
    /// # Panics
    /// Only if the OS cannot start a thread.
    pub fn spawn(interval: Duration, waker: impl Fn() + Send + 'static) -> Sampler {
        let interval = interval.max(Duration::from_millis(1));
        let capacity = history_capacity(interval);
        let shared = Arc::new(Mutex::new(Shared {
            history: VecDeque::with_capacity(capacity.min(4096)),
            gpu_status: GpuStatus::Unavailable("checking for NVIDIA GPUs".into()),
        }));
        let (stop_tx, stop_rx) = mpsc::sync_channel::<()>(1);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("headroom-sampler".into())
            .spawn(move || {
                let start = Instant::now();
                let mut reader = Reader::new();
                loop {
                    let sample = reader.read(start.elapsed().as_secs_f64());
                    {
                        let mut s = thread_shared.lock().unwrap_or_else(PoisonError::into_inner);
                        s.gpu_status = reader.gpu.status();
                        if s.history.len() == capacity {
                            s.history.pop_front();
                        }
                        s.history.push_back(sample);
                    }
                    waker();
                    match stop_rx.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        // A stop message, or the handle is gone.
                        _ => break,
                    }
                }
            })
            .expect("the OS could not start the memory sampler thread");
        Sampler { shared, stop: Some(stop_tx), thread: Some(thread) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest reading, or `None` before the first one.
    pub fn latest(&self) -> Option<MemorySample> {
        self.lock().history.back().cloned()
    }

    /// The readings of the last [`HISTORY_SPAN`], oldest first.
    pub fn history(&self) -> Vec<MemorySample> {
        self.lock().history.iter().cloned().collect()
    }

    /// Whether GPU readings can be had, and why not when they cannot.
    pub fn gpu_status(&self) -> GpuStatus {
        self.lock().gpu_status.clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.try_send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Five minutes of history is 3000 readings at 10 Hz, and the ring never grows unbounded.
    #[test]
    fn history_is_bounded() {
        assert_eq!(history_capacity(Duration::from_millis(100)), 3000);
        assert_eq!(history_capacity(Duration::from_secs(600)), 1);
        assert_eq!(history_capacity(Duration::from_micros(1)), HISTORY_MAX_SAMPLES);
    }

    /// A single reading sees the machine's RAM and this process's RSS.
    #[test]
    fn sample_once_reads_memory() {
        let s = sample_once();
        assert!(s.ram_total_bytes > 0 && s.ram_used_bytes <= s.ram_total_bytes, "{s:?}");
        assert!(s.process_rss_bytes > 0 && s.process_rss_bytes < s.ram_total_bytes, "{s:?}");
    }

    /// The thread reads repeatedly, keeps its history in time order, wakes its caller, and
    /// stops when dropped.
    #[test]
    fn sampler_runs_and_stops() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&wakes);
        let sampler = Sampler::spawn(Duration::from_millis(5), move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while sampler.history().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let history = sampler.history();
        assert!(history.len() >= 3, "only {} samples in 20 s", history.len());
        assert!(history.windows(2).all(|w| w[0].t_secs <= w[1].t_secs));
        assert!(sampler.latest().unwrap().ram_total_bytes > 0);
        assert!(wakes.load(Ordering::SeqCst) >= 3);
        drop(sampler);
        let after = wakes.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(wakes.load(Ordering::SeqCst), after, "the thread kept running after drop");
    }
}
