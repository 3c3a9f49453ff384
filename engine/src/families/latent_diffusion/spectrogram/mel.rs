//! Mel filterbanks as `torchaudio.functional.melscale_fbanks` builds them (HTK or Slaney scale,
//! optional Slaney area normalisation) and their inverse as `torchaudio.transforms.InverseMelScale`
//! computes it today: the least-squares (minimum-norm) solution, then negatives set to zero; or, as
//! an option, the non-negative least-squares solution ([`super::nnls`]).

use super::nnls::Nnls;
use crate::error::{Error, Result};

/// The mel scale's formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MelScale {
    /// `2595 log10(1 + f / 700)`.
    Htk,
    /// Linear below 1 kHz, logarithmic above (Slaney's Auditory Toolbox, librosa's default).
    Slaney,
}

/// Filter normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MelNorm {
    /// Triangles of peak 1.
    None,
    /// Each triangle divided by its width in Hz / 2 (equal area).
    Slaney,
}

fn hz_to_mel(f: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + f / 700.0).log10(),
        MelScale::Slaney => {
            let (f_sp, min_log_hz, min_log_mel, step) = slaney_consts();
            if f >= min_log_hz { min_log_mel + (f / min_log_hz).ln() / step } else { f / f_sp }
        }
    }
}

fn mel_to_hz(m: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(m / 2595.0) - 1.0),
        MelScale::Slaney => {
            let (f_sp, min_log_hz, min_log_mel, step) = slaney_consts();
            if m >= min_log_mel { min_log_hz * (step * (m - min_log_mel)).exp() } else { f_sp * m }
        }
    }
}

/// (Hz per mel below 1 kHz, 1 kHz, its mel, log step per mel above it).
fn slaney_consts() -> (f64, f64, f64, f64) {
    let f_sp = 200.0 / 3.0;
    (f_sp, 1000.0, 1000.0 / f_sp, 6.4f64.ln() / 27.0)
}

/// A mel filterbank: `n_mels` triangles over the `n_freqs` bins of a one-sided spectrum.
#[derive(Clone, Debug)]
pub struct MelBank {
    pub n_freqs: usize,
    pub n_mels: usize,
    /// Bin-major weights, `n_freqs × n_mels` (torchaudio's layout).
    pub weights: Vec<f32>,
    /// Per filter, the bins `[lo, hi)` outside which its weight is zero.
    ranges: Vec<(usize, usize)>,
}

impl MelBank {
    /// Builds the filterbank as `melscale_fbanks(n_freqs, f_min, f_max, n_mels, sample_rate, norm,
    /// mel_scale)`: bin centres `linspace(0, sample_rate // 2, n_freqs)`, `n_mels + 2` points evenly
    /// spaced in mels from `f_min` to `f_max`.
    ///
    /// # Errors
    /// Zero sizes or a frequency range that is empty or beyond Nyquist.
    pub fn new(n_freqs: usize, f_min: f64, f_max: f64, n_mels: usize, sample_rate: u32, norm: MelNorm, scale: MelScale) -> Result<Self> {
        if n_freqs < 2 || n_mels == 0 || !(0.0..f_max).contains(&f_min) || f_max > sample_rate as f64 / 2.0 + 1e-9 {
            return Err(Error::invalid(format!(
                "mel filterbank: {n_mels} mels over {n_freqs} bins from {f_min} to {f_max} Hz at {sample_rate} Hz: need 0 <= f_min < f_max <= sample_rate / 2"
            )));
        }
        let nyquist = (sample_rate / 2) as f64;
        let freqs: Vec<f64> = (0..n_freqs).map(|i| nyquist * i as f64 / (n_freqs - 1) as f64).collect();
        let (m_min, m_max) = (hz_to_mel(f_min, scale), hz_to_mel(f_max, scale));
        let pts: Vec<f64> = (0..n_mels + 2)
            .map(|i| mel_to_hz(m_min + (m_max - m_min) * i as f64 / (n_mels + 1) as f64, scale))
            .collect();
        let mut weights = vec![0f32; n_freqs * n_mels];
        let mut ranges = vec![(0, 0); n_mels];
        for (m, range) in ranges.iter_mut().enumerate() {
            let (lo, mid, hi) = (pts[m], pts[m + 1], pts[m + 2]);
            let enorm = match norm {
                MelNorm::None => 1.0,
                MelNorm::Slaney => 2.0 / (hi - lo),
            };
            let (mut first, mut last) = (usize::MAX, 0);
            for (k, &f) in freqs.iter().enumerate() {
                let down = (f - lo) / (mid - lo);
                let up = (hi - f) / (hi - mid);
                let w = down.min(up).max(0.0) * enorm;
                if w > 0.0 {
                    weights[k * n_mels + m] = w as f32;
                    first = first.min(k);
                    last = k + 1;
                }
            }
            *range = if first == usize::MAX { (0, 0) } else { (first, last) };
        }
        Ok(Self { n_freqs, n_mels, weights, ranges })
    }

    /// Mel bands of one frame: `out[m] = Σ_k spec[k] · w[k, m]`.
    pub fn apply(&self, spec: &[f32], out: &mut [f32]) {
        for (m, o) in out.iter_mut().enumerate() {
            let (lo, hi) = self.ranges[m];
            *o = (lo..hi).map(|k| spec[k] * self.weights[k * self.n_mels + m]).sum();
        }
    }

    /// The inverse as a reusable solver.
    pub fn inverse(&self) -> Result<InverseMel<'_>> {
        InverseMel::new(self)
    }

    /// Filter `m`'s bins: its weight is zero outside them.
    pub fn support(&self, m: usize) -> std::ops::Range<usize> {
        self.ranges[m].0..self.ranges[m].1
    }

    /// The non-negative inverse as a reusable solver: per frame, the `x ≥ 0` (n_freqs) minimising
    /// `‖fbᵀ x − mel‖²`, whose columns are the bins' rows of weights.
    ///
    /// # Errors
    /// A filterbank whose bins' bands do not move up with frequency (never for triangles).
    pub fn nnls(&self) -> Result<Nnls> {
        let n = self.n_mels;
        let mut span = vec![(usize::MAX, 0); self.n_freqs];
        for (m, &(lo, hi)) in self.ranges.iter().enumerate() {
            for s in &mut span[lo..hi] {
                *s = (s.0.min(m), s.1.max(m + 1));
            }
        }
        Nnls::new(
            n,
            span.iter().enumerate().map(|(k, &(lo, hi))| match lo {
                usize::MAX => (0, Vec::new()),
                _ => (lo, self.weights[k * n + lo..k * n + hi].iter().map(|&w| w as f64).collect()),
            }),
        )
    }
}

/// Solves `fbᵀ x = mel` for each frame by least squares with the minimum norm (`x = fb (fbᵀ fb)⁻¹
/// mel`, what `torch.linalg.lstsq` returns for these shapes), then sets negatives to zero as
/// torchaudio's `InverseMelScale` does. The Gram matrix `fbᵀ fb` is banded (neighbouring triangles
/// overlap), so it is factored once by a banded Cholesky with a ridge of 1e-10 of its largest
/// diagonal (for filters that fall between bins, which torch's SVD driver would drop).
pub struct InverseMel<'a> {
    bank: &'a MelBank,
    /// Cholesky factor `L` (row-major `n_mels × n_mels`, lower; only the band is used).
    chol: Vec<f64>,
    band: usize,
}

impl<'a> InverseMel<'a> {
    fn new(bank: &'a MelBank) -> Result<Self> {
        let n = bank.n_mels;
        let w = |k: usize, m: usize| bank.weights[k * n + m] as f64;
        let mut gram = vec![0f64; n * n];
        let mut band = 0;
        for i in 0..n {
            for j in i..n {
                let (lo, hi) = (bank.ranges[i].0.max(bank.ranges[j].0), bank.ranges[i].1.min(bank.ranges[j].1));
                if lo >= hi {
                    if bank.ranges[j].0 >= bank.ranges[i].1 && bank.ranges[j].1 > bank.ranges[j].0 {
                        break;
                    }
                    continue;
                }
                let g: f64 = (lo..hi).map(|k| w(k, i) * w(k, j)).sum();
                gram[i * n + j] = g;
                gram[j * n + i] = g;
                band = band.max(j - i);
            }
        }
        let ridge = 1e-10 * (0..n).map(|i| gram[i * n + i]).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
        for i in 0..n {
            gram[i * n + i] += ridge;
        }
        // banded Cholesky in place: L[i][j] for j in [i - band, i]
        for i in 0..n {
            let j0 = i.saturating_sub(band);
            for j in j0..=i {
                let k0 = j0.max(j.saturating_sub(band));
                let s: f64 = (k0..j).map(|k| gram[i * n + k] * gram[j * n + k]).sum();
                let v = gram[i * n + j] - s;
                if i == j {
                    if v <= 0.0 {
                        return Err(Error::invalid("inverse mel: the filterbank's Gram matrix is not positive definite"));
                    }
                    gram[i * n + i] = v.sqrt();
                } else {
                    gram[i * n + j] = v / gram[j * n + j];
                }
            }
        }
        Ok(Self { bank, chol: gram, band })
    }

    /// One frame: `mel` (n_mels) → non-negative linear spectrum `out` (n_freqs).
    pub fn solve(&self, mel: &[f32], out: &mut [f32]) {
        let n = self.bank.n_mels;
        let l = &self.chol;
        let mut y: Vec<f64> = mel.iter().map(|&v| v as f64).collect();
        for i in 0..n {
            let j0 = i.saturating_sub(self.band);
            let s: f64 = (j0..i).map(|j| l[i * n + j] * y[j]).sum();
            y[i] = (y[i] - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let j1 = (i + self.band + 1).min(n);
            let s: f64 = (i + 1..j1).map(|j| l[j * n + i] * y[j]).sum();
            y[i] = (y[i] - s) / l[i * n + i];
        }
        let mut acc = vec![0f64; self.bank.n_freqs];
        for (m, &ym) in y.iter().enumerate() {
            let (lo, hi) = self.bank.ranges[m];
            for (k, a) in acc.iter_mut().enumerate().take(hi).skip(lo) {
                *a += self.bank.weights[k * n + m] as f64 * ym;
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = a.max(0.0) as f32;
        }
    }
}
