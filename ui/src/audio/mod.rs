//! Audio playback on its own thread: a manager thread owns the output stream and feeds a lock-free
//! SPSC ring buffer that the device callback drains. The callback never locks, allocates or
//! prints and plays silence on underrun; play state and position are atomics the UI reads.
//!
//! Back ends: [`cpal_out::CpalOutput`] (the system's default device) and [`mock::MockOutput`]
//! (a thread that pulls samples like a device would, for tests with no sound card).

pub mod cpal_out;
pub mod mock;
mod render;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringbuf::HeapRb;
use ringbuf::traits::{Producer, Split};

pub use render::Renderer;

/// What an output back end reports once it is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputInfo {
    /// Frames per second the device plays.
    pub sample_rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
}

/// Something that plays: opened on the manager thread, kept alive there until playback ends.
pub trait AudioOutput: Send + 'static {
    /// Opens the device and starts pulling from `renderer`; the returned guard keeps it playing.
    ///
    /// # Errors
    /// No device, or the device refused the stream (one line for a person).
    fn open(&mut self, renderer: Renderer) -> Result<(OutputInfo, Box<dyn std::any::Any>), String>;
}

/// State shared by the UI, the manager thread and the device callback.
#[derive(Debug, Default)]
pub struct Shared {
    /// True while playing; the UI sets it, the manager clears it at the end of a clip.
    pub playing: AtomicBool,
    /// Start again at the end of the clip.
    pub looping: AtomicBool,
    /// Frames of the (device-rate) clip played so far.
    pub position_frames: AtomicU64,
    /// Length of the loaded clip in device frames.
    pub clip_frames: AtomicU64,
    /// Device frame rate (0 until open).
    pub device_rate: AtomicU64,
    /// Set by the manager to make the callback drop what is queued; the callback clears it.
    pub flush: AtomicBool,
    /// Callbacks that found the ring empty while playing.
    pub underruns: AtomicU64,
}

enum ManagerCmd {
    Load {
        sample_rate: u32,
        samples: Arc<Vec<f32>>,
    },
    /// A position as a fraction of the clip, resolved against the clip the manager holds when it
    /// gets there (a seek sent right after a load lands in the new clip, not in the old one).
    Seek(f64),
    Shutdown,
}

/// The UI's handle on playback. Dropping it stops the manager thread and closes the device.
pub struct Player {
    shared: Arc<Shared>,
    tx: SyncSender<ManagerCmd>,
    thread: Option<JoinHandle<()>>,
    /// Why there is no sound, when the device could not be opened.
    error: Arc<std::sync::OnceLock<String>>,
}

impl Player {
    /// Starts the manager thread with an output back end (the device is opened on that thread).
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn spawn(mut output: impl AudioOutput) -> std::io::Result<Player> {
        let shared = Arc::new(Shared::default());
        let error = Arc::new(std::sync::OnceLock::new());
        let (tx, rx) = sync_channel(16);
        let (s2, e2) = (shared.clone(), error.clone());
        let thread = std::thread::Builder::new()
            .name("audio-manager".into())
            .spawn(move || {
                // One second of stereo at 48 kHz: small enough to seek quickly, large enough for hiccups.
                let rb = HeapRb::<f32>::new(48_000);
                let (prod, cons) = rb.split();
                let renderer = Renderer::new(cons, s2.clone());
                match output.open(renderer) {
                    Ok((info, guard)) => {
                        s2.device_rate
                            .store(info.sample_rate as u64, Ordering::Relaxed);
                        manage(rx, prod, &s2, info);
                        drop(guard);
                    }
                    Err(e) => {
                        let _ = e2.set(e);
                        // Keep answering commands so the UI never blocks on a full channel.
                        while let Ok(cmd) = rx.recv() {
                            if matches!(cmd, ManagerCmd::Shutdown) {
                                break;
                            }
                        }
                    }
                }
            })?;
        Ok(Player {
            shared,
            tx,
            thread: Some(thread),
            error,
        })
    }

    /// Why playback is impossible ("no audio device: …"), once the device failed to open.
    pub fn error(&self) -> Option<&str> {
        self.error.get().map(String::as_str)
    }

    /// Replaces the clip (mono samples in [-1, 1] at `sample_rate`) and rewinds.
    pub fn load(&self, sample_rate: u32, samples: Arc<Vec<f32>>) {
        self.shared.playing.store(false, Ordering::Relaxed);
        let _ = self.tx.try_send(ManagerCmd::Load {
            sample_rate,
            samples,
        });
    }

    /// Starts or resumes playback.
    pub fn play(&self) {
        self.shared.playing.store(true, Ordering::Relaxed);
    }

    /// Pauses, keeping the position.
    pub fn pause(&self) {
        self.shared.playing.store(false, Ordering::Relaxed);
    }

    /// True while playing.
    pub fn is_playing(&self) -> bool {
        self.shared.playing.load(Ordering::Relaxed)
    }

    /// Loops at the end of the clip.
    pub fn set_looping(&self, on: bool) {
        self.shared.looping.store(on, Ordering::Relaxed);
    }

    /// True when looping.
    pub fn is_looping(&self) -> bool {
        self.shared.looping.load(Ordering::Relaxed)
    }

    /// Moves the play position to `fraction` (0..1) of the clip.
    pub fn seek_fraction(&self, fraction: f32) {
        let _ = self.tx.try_send(ManagerCmd::Seek(f64::from(fraction.clamp(0.0, 1.0))));
    }

    /// The play position as a fraction of the clip (0 with no clip).
    pub fn position_fraction(&self) -> f32 {
        let len = self.shared.clip_frames.load(Ordering::Relaxed);
        if len == 0 {
            return 0.0;
        }
        (self.shared.position_frames.load(Ordering::Relaxed) as f64 / len as f64).min(1.0) as f32
    }

    /// The play position in seconds.
    pub fn position_secs(&self) -> f32 {
        let rate = self.shared.device_rate.load(Ordering::Relaxed).max(1);
        self.shared.position_frames.load(Ordering::Relaxed) as f32 / rate as f32
    }

    /// The shared atomics (for tests and the UI's diagnostics).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = self.tx.send(ManagerCmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The manager loop: keeps the ring topped up from the clip, handles seeks and the end of a clip.
fn manage(
    rx: Receiver<ManagerCmd>,
    mut prod: impl Producer<Item = f32>,
    shared: &Shared,
    info: OutputInfo,
) {
    let mut clip: Vec<f32> = Vec::new();
    let mut write_pos: usize = 0;
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(ManagerCmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(ManagerCmd::Load {
                sample_rate,
                samples,
            }) => {
                clip = resample(&samples, sample_rate, info.sample_rate);
                shared
                    .clip_frames
                    .store(clip.len() as u64, Ordering::Relaxed);
                flush(shared);
                write_pos = 0;
                shared.position_frames.store(0, Ordering::Relaxed);
            }
            Ok(ManagerCmd::Seek(fraction)) => {
                flush(shared);
                let frame = (fraction * clip.len() as f64) as usize;
                write_pos = frame.min(clip.len().saturating_sub(1));
                shared
                    .position_frames
                    .store(write_pos as u64, Ordering::Relaxed);
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if clip.is_empty() || !shared.playing.load(Ordering::Relaxed) {
            continue;
        }
        // Top up the ring.
        loop {
            if write_pos >= clip.len() {
                if shared.looping.load(Ordering::Relaxed) {
                    write_pos = 0;
                } else {
                    break;
                }
            }
            let pushed = prod.push_slice(&clip[write_pos..]);
            write_pos += pushed;
            if pushed == 0 {
                break;
            }
        }
        // The end of a clip that does not loop: once the callback has played everything, stop and rewind.
        if write_pos >= clip.len() && !shared.looping.load(Ordering::Relaxed) && prod.is_empty() {
            shared.playing.store(false, Ordering::Relaxed);
            write_pos = 0;
            shared.position_frames.store(0, Ordering::Relaxed);
        }
    }
}

/// Asks the callback to drop what is queued and waits (briefly) until it has.
fn flush(shared: &Shared) {
    shared.flush.store(true, Ordering::Release);
    let start = Instant::now();
    while shared.flush.load(Ordering::Acquire) && start.elapsed() < Duration::from_millis(250) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Linear resampling of a mono clip to the device's rate (done on the manager thread).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || from == 0 || samples.is_empty() {
        return samples.to_vec();
    }
    let out_len = (samples.len() as u64 * to as u64 / from as u64).max(1) as usize;
    let step = from as f64 / to as f64;
    (0..out_len)
        .map(|i| {
            let x = i as f64 * step;
            let i0 = (x.floor() as usize).min(samples.len() - 1);
            let i1 = (i0 + 1).min(samples.len() - 1);
            let t = (x - i0 as f64) as f32;
            samples[i0] * (1.0 - t) + samples[i1] * t
        })
        .collect()
}
