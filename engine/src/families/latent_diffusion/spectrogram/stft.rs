//! The short-time Fourier transform as `torch.stft`/`torch.istft` compute it (periodic Hann window of
//! `win_length` zero-padded to the centre of `n_fft`, centred frames with reflect padding, one-sided,
//! unnormalised), and Griffin-Lim phase recovery as `torchaudio.functional.griffinlim` runs it.

use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::error::{Error, Result};

/// An STFT of fixed sizes with its planned FFTs and window.
pub struct Stft {
    /// FFT length.
    pub n_fft: usize,
    /// Samples between frames.
    pub hop: usize,
    /// The periodic Hann window, `win_length` long, zero-padded to `n_fft` (centred).
    window: Vec<f32>,
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
}

/// A complex spectrogram, frame-major: `frames × (n_fft / 2 + 1)`.
pub struct Spectrum {
    pub frames: usize,
    pub bins: usize,
    pub data: Vec<Complex32>,
}

impl Stft {
    /// Plans an STFT.
    ///
    /// # Errors
    /// Zero sizes, a window longer than the FFT, or a hop longer than the window.
    pub fn new(n_fft: usize, hop: usize, win_length: usize) -> Result<Self> {
        if n_fft < 2 || hop == 0 || win_length == 0 || win_length > n_fft || hop > win_length {
            return Err(Error::invalid(format!(
                "stft: n_fft {n_fft}, hop {hop}, window {win_length}: need 0 < hop <= window <= n_fft"
            )));
        }
        let left = (n_fft - win_length) / 2;
        let mut window = vec![0f32; n_fft];
        for i in 0..win_length {
            let x = 2.0 * std::f64::consts::PI * i as f64 / win_length as f64;
            window[left + i] = (0.5 - 0.5 * x.cos()) as f32;
        }
        let mut planner = RealFftPlanner::<f32>::new();
        Ok(Self { n_fft, hop, window, forward: planner.plan_fft_forward(n_fft), inverse: planner.plan_fft_inverse(n_fft) })
    }

    /// Number of bins per frame (`n_fft / 2 + 1`).
    pub fn bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Frames of a centred STFT of `len` samples: `1 + len / hop`.
    pub fn frames_for(&self, len: usize) -> usize {
        1 + len / self.hop
    }

    /// `torch.stft(x, center=True, pad_mode="reflect", onesided=True)`.
    ///
    /// # Errors
    /// A signal too short to reflect-pad (`len <= n_fft / 2`).
    pub fn forward(&self, x: &[f32]) -> Result<Spectrum> {
        let pad = self.n_fft / 2;
        if x.len() <= pad {
            return Err(Error::invalid(format!(
                "stft: {} samples is too short for n_fft {} (reflect padding needs more than {pad})",
                x.len(),
                self.n_fft
            )));
        }
        let n = x.len();
        // reflect padding without repeating the edge sample, as torch's pad_mode="reflect"
        let at = |i: isize| -> f32 {
            let j = if i < 0 {
                (-i) as usize
            } else if i as usize >= n {
                2 * (n - 1) - i as usize
            } else {
                i as usize
            };
            x[j]
        };
        let frames = self.frames_for(n);
        let bins = self.bins();
        let mut data = vec![Complex32::new(0.0, 0.0); frames * bins];
        let mut input = self.forward.make_input_vec();
        let mut scratch = self.forward.make_scratch_vec();
        for f in 0..frames {
            let start = (f * self.hop) as isize - pad as isize;
            for (k, v) in input.iter_mut().enumerate() {
                *v = at(start + k as isize) * self.window[k];
            }
            self.forward
                .process_with_scratch(&mut input, &mut data[f * bins..(f + 1) * bins], &mut scratch)
                .map_err(|e| Error::invalid(format!("stft: {e}")))?;
        }
        Ok(Spectrum { frames, bins, data })
    }

    /// `torch.istft(X, center=True, length=length)`: inverse FFT per frame, windowed overlap-add,
    /// divided by the summed squared window. Without `length` the output is `hop * (frames - 1)`
    /// samples; a longer `length` runs on into the last frame's right half (zeros past it).
    ///
    /// # Errors
    /// A spectrum whose bin count does not match `n_fft`.
    pub fn inverse(&self, spec: &Spectrum, length: Option<usize>) -> Result<Vec<f32>> {
        if spec.bins != self.bins() {
            return Err(Error::invalid(format!("istft: {} bins, expected {}", spec.bins, self.bins())));
        }
        let full = self.n_fft + self.hop * spec.frames.saturating_sub(1);
        let mut y = vec![0f32; full];
        let mut env = vec![0f32; full];
        let mut buf = self.inverse.make_input_vec();
        let mut out = self.inverse.make_output_vec();
        let mut scratch = self.inverse.make_scratch_vec();
        let scale = 1.0 / self.n_fft as f32;
        for f in 0..spec.frames {
            buf.copy_from_slice(&spec.data[f * spec.bins..(f + 1) * spec.bins]);
            // a real signal's DC and Nyquist bins are real; torch's irfft ignores their imaginary parts
            buf[0].im = 0.0;
            if self.n_fft.is_multiple_of(2) {
                buf[spec.bins - 1].im = 0.0;
            }
            self.inverse
                .process_with_scratch(&mut buf, &mut out, &mut scratch)
                .map_err(|e| Error::invalid(format!("istft: {e}")))?;
            let o = f * self.hop;
            for (k, &w) in self.window.iter().enumerate() {
                y[o + k] += out[k] * scale * w;
                env[o + k] += w * w;
            }
        }
        let start = self.n_fft / 2;
        let len = length.unwrap_or(full - 2 * start);
        Ok((start..start + len)
            .map(|i| if i < full && env[i] > 1e-11 { y[i] / env[i] } else { 0.0 })
            .collect())
    }
}

/// Griffin-Lim as torchaudio's `griffinlim` with `rand_init=False`: the phase starts at zero (all
/// angles 1), each iteration inverts and re-analyses, then takes the phase of
/// `rebuilt - momentum / (1 + momentum) * previous_rebuilt`. `magnitude` is frame-major
/// (`frames × bins`). The iterations run at the natural length `hop * (frames - 1)` as torchaudio's
/// do (its `length` must keep the frame count); only the final inverse uses `length`.
///
/// # Errors
/// A magnitude whose size does not match `frames × bins`.
pub fn griffin_lim(
    stft: &Stft,
    magnitude: &[f32],
    frames: usize,
    iters: usize,
    momentum: f32,
    length: Option<usize>,
) -> Result<Vec<f32>> {
    griffin_lim_checked(stft, magnitude, frames, iters, momentum, length, &|| false)
}

/// [`griffin_lim`], asking `cancelled` before each iteration.
///
/// # Errors
/// As [`griffin_lim`]; [`Error::Cancelled`] once `cancelled` says so.
pub fn griffin_lim_checked(
    stft: &Stft,
    magnitude: &[f32],
    frames: usize,
    iters: usize,
    momentum: f32,
    length: Option<usize>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<f32>> {
    let bins = stft.bins();
    if magnitude.len() != frames * bins || frames < 2 {
        return Err(Error::invalid(format!(
            "griffin-lim: {} magnitudes for {frames} frames of {bins} bins (at least 2 frames)",
            magnitude.len()
        )));
    }
    let mut angles = vec![Complex32::new(1.0, 0.0); frames * bins];
    let mut prev = vec![Complex32::new(0.0, 0.0); frames * bins];
    let alpha = momentum / (1.0 + momentum);
    let with_phase = |angles: &[Complex32]| Spectrum {
        frames,
        bins,
        data: magnitude.iter().zip(angles).map(|(&m, &a)| a * m).collect(),
    };
    for _ in 0..iters {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let signal = stft.inverse(&with_phase(&angles), None)?;
        let rebuilt = stft.forward(&signal)?;
        if rebuilt.frames != frames {
            return Err(Error::invalid(format!("griffin-lim: re-analysis gave {} frames, not {frames}", rebuilt.frames)));
        }
        for ((a, &r), p) in angles.iter_mut().zip(&rebuilt.data).zip(prev.iter_mut()) {
            let v = r - *p * alpha;
            *a = v / (v.norm() + 1e-16);
            *p = r;
        }
    }
    stft.inverse(&with_phase(&angles), length)
}
