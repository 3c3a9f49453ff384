//! A/B metrics: PSNR, SSIM, max abs difference and a difference heat map for images; SNR and
//! log-spectral distance for audio (`audio.rs`); and the binomial p-value of an ABX listening test.
//!
//! Every function that takes two signals refuses ones of different sizes with an error saying
//! both sizes, rather than comparing a prefix.

mod audio;
#[cfg(test)]
mod tests;

pub use audio::{log_spectral_distance, snr_db};

use crate::error::{Error, Result};
use crate::media::Image;

/// Checks both images are well-formed and the same size.
fn same_size(a: &Image, b: &Image) -> Result<()> {
    for (name, img) in [("first", a), ("second", b)] {
        let want = img.width as usize * img.height as usize * 3;
        if img.rgb.len() != want {
            return Err(Error::invalid(format!(
                "{name} image claims {}×{} but holds {} bytes, not {want}",
                img.width,
                img.height,
                img.rgb.len()
            )));
        }
    }
    if (a.width, a.height) != (b.width, b.height) {
        return Err(Error::invalid(format!(
            "images differ in size: {}×{} vs {}×{}",
            a.width, a.height, b.width, b.height
        )));
    }
    if a.rgb.is_empty() {
        return Err(Error::invalid("images are empty"));
    }
    Ok(())
}

/// Decibels standing for identical outputs where a number must be finite (JSON rows, plots): a
/// PSNR or SNR is infinite then.
pub const IDENTICAL_DB: f64 = 99.0;

/// A PSNR or SNR made finite: at most [`IDENTICAL_DB`] (identical outputs give infinity).
pub fn finite_db(db: f64) -> f64 {
    if db.is_nan() { db } else { db.min(IDENTICAL_DB) }
}

/// Peak signal-to-noise ratio in dB over all RGB channels (peak 255); `f64::INFINITY` when the
/// images are identical.
///
/// # Errors
/// The images differ in size or are empty.
pub fn psnr_db(a: &Image, b: &Image) -> Result<f64> {
    same_size(a, b)?;
    let sse: f64 = a.rgb.iter().zip(&b.rgb).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let mse = sse / a.rgb.len() as f64;
    Ok(if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() })
}

/// The largest difference of any channel of any pixel.
///
/// # Errors
/// The images differ in size or are empty.
pub fn max_abs_diff(a: &Image, b: &Image) -> Result<u8> {
    same_size(a, b)?;
    Ok(a.rgb.iter().zip(&b.rgb).map(|(&x, &y)| x.abs_diff(y)).max().unwrap_or(0))
}

/// Luma (BT.601) of every pixel.
fn luma(img: &Image) -> Vec<f64> {
    img.rgb
        .chunks_exact(3)
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect()
}

/// Normalized 1-D Gaussian of `n` taps.
fn gaussian(n: usize, sigma: f64) -> Vec<f64> {
    let c = (n as f64 - 1.0) / 2.0;
    let w: Vec<f64> = (0..n).map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// Separable 'valid' filtering of a `w`×`h` plane with window `k` (no padding).
fn filter_valid(x: &[f64], w: usize, h: usize, k: &[f64]) -> (Vec<f64>, usize, usize) {
    let n = k.len();
    let (ow, oh) = (w + 1 - n, h + 1 - n);
    let mut rows = vec![0.0; ow * h];
    for y in 0..h {
        for ox in 0..ow {
            rows[y * ow + ox] = (0..n).map(|i| k[i] * x[y * w + ox + i]).sum();
        }
    }
    let mut out = vec![0.0; ow * oh];
    for oy in 0..oh {
        for ox in 0..ow {
            out[oy * ow + ox] = (0..n).map(|i| k[i] * rows[(oy + i) * ow + ox]).sum();
        }
    }
    (out, ow, oh)
}

/// Structural similarity of the lumas (Wang et al. 2004): Gaussian window of 11×11 taps,
/// σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, 'valid' windows only, mean of the SSIM map. For images
/// smaller than 11 pixels the window shrinks to the largest odd size that fits. 1.0 when
/// identical.
///
/// # Errors
/// The images differ in size or are empty.
pub fn ssim(a: &Image, b: &Image) -> Result<f64> {
    same_size(a, b)?;
    let (w, h) = (a.width as usize, a.height as usize);
    let mut n = 11.min(w).min(h);
    if n % 2 == 0 {
        n -= 1;
    }
    let k = gaussian(n, 1.5);
    let (x, y) = (luma(a), luma(b));
    let prod = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u * v).collect::<Vec<_>>();
    let (mx, ow, oh) = filter_valid(&x, w, h, &k);
    let (my, ..) = filter_valid(&y, w, h, &k);
    let (exx, ..) = filter_valid(&prod(&x, &x), w, h, &k);
    let (eyy, ..) = filter_valid(&prod(&y, &y), w, h, &k);
    let (exy, ..) = filter_valid(&prod(&x, &y), w, h, &k);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let mut sum = 0.0;
    for i in 0..ow * oh {
        let (ux, uy) = (mx[i], my[i]);
        let (vx, vy, cxy) = (exx[i] - ux * ux, eyy[i] - uy * uy, exy[i] - ux * uy);
        sum += ((2.0 * ux * uy + c1) * (2.0 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
    }
    Ok(sum / (ow * oh) as f64)
}

/// A heat map of where two images differ: each pixel's largest channel difference, scaled so the
/// largest difference in the image is white, through black → red → yellow → white. Identical
/// images give a black image.
///
/// # Errors
/// The images differ in size or are empty.
pub fn diff_heatmap(a: &Image, b: &Image) -> Result<Image> {
    same_size(a, b)?;
    let d: Vec<u8> = a
        .rgb
        .chunks_exact(3)
        .zip(b.rgb.chunks_exact(3))
        .map(|(p, q)| (0..3).map(|c| p[c].abs_diff(q[c])).max().unwrap_or(0))
        .collect();
    let peak = f64::from(d.iter().copied().max().unwrap_or(0).max(1));
    let mut rgb = Vec::with_capacity(d.len() * 3);
    for v in d {
        let t = 3.0 * f64::from(v) / peak;
        for c in 0..3 {
            rgb.push(((t - c as f64).clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    Ok(Image { width: a.width, height: a.height, rgb })
}

/// The chance of getting at least `correct` of `trials` ABX answers right by guessing (p = ½):
/// small values mean the listener really hears a difference. 1.0 for `correct` = 0, 0.0 when
/// `correct` > `trials`.
pub fn binomial_p_value(correct: u32, trials: u32) -> f64 {
    if correct > trials {
        return 0.0;
    }
    if correct == 0 {
        return 1.0;
    }
    // ln C(n, k) built up term by term, then summed in linear space.
    let n = f64::from(trials);
    let mut ln_c = 0.0; // ln C(n, 0)
    let mut total = 0.0;
    for k in 0..=trials {
        if k > 0 {
            ln_c += (n - f64::from(k) + 1.0).ln() - f64::from(k).ln();
        }
        if k >= correct {
            total += (ln_c - n * std::f64::consts::LN_2).exp();
        }
    }
    total.min(1.0)
}
