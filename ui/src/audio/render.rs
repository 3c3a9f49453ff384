//! The device side of playback: what runs inside the audio callback. No locks, no allocation,
//! no printing; silence on underrun.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ringbuf::HeapCons;
use ringbuf::traits::Consumer;

use super::Shared;

/// Drains the ring into interleaved device buffers; owned by the device callback.
pub struct Renderer {
    cons: HeapCons<f32>,
    shared: Arc<Shared>,
}

impl Renderer {
    pub(super) fn new(cons: HeapCons<f32>, shared: Arc<Shared>) -> Self {
        Self { cons, shared }
    }

    /// Fills `out` (interleaved, `channels` per frame) with the next frames, silence when paused
    /// or when the ring runs dry.
    pub fn render(&mut self, out: &mut [f32], channels: usize) {
        let channels = channels.max(1);
        if self.shared.flush.load(Ordering::Acquire) {
            self.cons.clear();
            self.shared.flush.store(false, Ordering::Release);
        }
        if !self.shared.playing.load(Ordering::Relaxed) {
            out.fill(0.0);
            return;
        }
        let mut played = 0u64;
        let mut starved = false;
        for frame in out.chunks_mut(channels) {
            let s = match self.cons.try_pop() {
                Some(s) => {
                    played += 1;
                    s
                }
                None => {
                    starved = true;
                    0.0
                }
            };
            frame.fill(s);
        }
        if starved {
            self.shared.underruns.fetch_add(1, Ordering::Relaxed);
        }
        let len = self.shared.clip_frames.load(Ordering::Relaxed);
        let mut pos = self.shared.position_frames.load(Ordering::Relaxed) + played;
        if len > 0 && pos >= len {
            pos = if self.shared.looping.load(Ordering::Relaxed) {
                pos % len
            } else {
                len
            };
        }
        self.shared.position_frames.store(pos, Ordering::Relaxed);
    }
}
