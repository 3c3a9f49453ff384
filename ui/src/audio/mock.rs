//! A pretend device for tests: a thread that pulls fixed-size buffers from the renderer, paced
//! like a real device or as fast as possible, and counts the frames and loudness it received.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{AudioOutput, OutputInfo, Renderer};

/// What the mock device has "played".
#[derive(Debug, Default)]
pub struct MockStats {
    /// Frames pulled from the renderer.
    pub frames: AtomicU64,
    /// Frames that were not silent.
    pub loud_frames: AtomicU64,
}

/// A mock output device.
#[derive(Debug, Clone)]
pub struct MockOutput {
    /// The rate it claims to play at.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// Frames per callback.
    pub block_frames: usize,
    /// Sleep a block's duration between callbacks (real time) instead of 1 ms.
    pub realtime: bool,
    /// Counters the test reads.
    pub stats: Arc<MockStats>,
}

impl Default for MockOutput {
    fn default() -> Self {
        Self {
            sample_rate: 8000,
            channels: 2,
            block_frames: 256,
            realtime: false,
            stats: Arc::default(),
        }
    }
}

struct Guard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl AudioOutput for MockOutput {
    fn open(
        &mut self,
        mut renderer: Renderer,
    ) -> Result<(OutputInfo, Box<dyn std::any::Any>), String> {
        let info = OutputInfo {
            sample_rate: self.sample_rate,
            channels: self.channels,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, stats, me) = (stop.clone(), self.stats.clone(), self.clone());
        let thread = std::thread::Builder::new()
            .name("audio-mock-device".into())
            .spawn(move || {
                let ch = me.channels as usize;
                let mut buf = vec![0.0f32; me.block_frames * ch];
                let pause = if me.realtime {
                    Duration::from_secs_f64(me.block_frames as f64 / me.sample_rate as f64)
                } else {
                    Duration::from_millis(1)
                };
                while !stop2.load(Ordering::Relaxed) {
                    renderer.render(&mut buf, ch);
                    stats
                        .frames
                        .fetch_add(me.block_frames as u64, Ordering::Relaxed);
                    let loud = buf.chunks(ch).filter(|f| f[0] != 0.0).count();
                    stats.loud_frames.fetch_add(loud as u64, Ordering::Relaxed);
                    std::thread::sleep(pause);
                }
            })
            .map_err(|e| format!("mock device thread: {e}"))?;
        Ok((
            info,
            Box::new(Guard {
                stop,
                thread: Some(thread),
            }),
        ))
    }
}

/// A back end that always fails, like a machine with no sound card.
#[derive(Debug, Default)]
pub struct NoDevice;

impl AudioOutput for NoDevice {
    fn open(
        &mut self,
        _renderer: Renderer,
    ) -> Result<(OutputInfo, Box<dyn std::any::Any>), String> {
        Err("no audio device: device not available".into())
    }
}
