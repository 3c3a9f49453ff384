//! Unit tests for the A/B metrics, against values worked out by hand or with numpy.

use super::*;
use crate::media::Audio;

fn flat(w: u32, h: u32, v: u8) -> Image {
    Image { width: w, height: h, rgb: vec![v; (w * h * 3) as usize] }
}

/// The 24×16 pattern pair also computed by an independent numpy implementation.
fn pattern_pair() -> (Image, Image) {
    let (w, h) = (24u32, 16u32);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = ((x * 13 + y * 7 + c * 29) * 5 % 256) as i32;
                a.push(v as u8);
                b.push((v + ((x * y + c * 3) % 21) as i32 - 10).clamp(0, 255) as u8);
            }
        }
    }
    (Image { width: w, height: h, rgb: a }, Image { width: w, height: h, rgb: b })
}

/// Noise of ±10 on every channel gives MSE 100, so PSNR = 10·log10(255²/100).
#[test]
fn psnr_of_known_noise() {
    let a = flat(8, 8, 100);
    let mut b = a.clone();
    for (i, v) in b.rgb.iter_mut().enumerate() {
        *v = if i % 2 == 0 { 110 } else { 90 };
    }
    let want = 10.0 * (65025.0f64 / 100.0).log10();
    assert!((psnr_db(&a, &b).unwrap() - want).abs() < 1e-12);
    assert_eq!(psnr_db(&a, &a).unwrap(), f64::INFINITY);
    assert_eq!(max_abs_diff(&a, &b).unwrap(), 10);
}

/// SSIM is 1 for identical images, matches the closed form for two flat images, and matches
/// numpy's value for a textured pair (PSNR too).
#[test]
fn ssim_known_values() {
    let (a, b) = pattern_pair();
    assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-12);
    let c1 = (0.01f64 * 255.0).powi(2);
    let want = (2.0 * 100.0 * 110.0 + c1) / (100.0f64.powi(2) + 110.0f64.powi(2) + c1);
    assert!((ssim(&flat(16, 16, 100), &flat(16, 16, 110)).unwrap() - want).abs() < 1e-9);
    assert!((ssim(&a, &b).unwrap() - 0.992_165_242_587_345_5).abs() < 1e-9);
    assert!((psnr_db(&a, &b).unwrap() - 32.422_780_632_703_9).abs() < 1e-9);
}

/// Images smaller than the 11-pixel window still get an SSIM (with a smaller window).
#[test]
fn ssim_small_images() {
    let (a, b) = (flat(8, 8, 50), flat(8, 8, 60));
    let s = ssim(&a, &b).unwrap();
    assert!(s > 0.0 && s < 1.0, "{s}");
}

/// Mismatched sizes and malformed buffers are errors naming the sizes.
#[test]
fn size_mismatch_is_an_error() {
    let e = psnr_db(&flat(8, 8, 0), &flat(16, 8, 0)).unwrap_err().to_string();
    assert!(e.contains("8×8") && e.contains("16×8"), "{e}");
    assert!(ssim(&flat(8, 8, 0), &flat(8, 16, 0)).is_err());
    let broken = Image { width: 4, height: 4, rgb: vec![0; 5] };
    assert!(max_abs_diff(&broken, &broken).is_err());
    let a = Audio { sample_rate: 8000, samples: vec![0.0; 10] };
    let b = Audio { sample_rate: 8000, samples: vec![0.0; 11] };
    assert!(snr_db(&a, &b).unwrap_err().to_string().contains("10 vs 11"));
    let c = Audio { sample_rate: 16000, samples: vec![0.0; 10] };
    assert!(log_spectral_distance(&a, &c).is_err());
}

/// The heat map is black where images agree and white at the largest difference.
#[test]
fn heatmap_marks_differences() {
    let a = flat(2, 1, 0);
    let b = Image { width: 2, height: 1, rgb: vec![0, 0, 0, 0, 40, 0] };
    let h = diff_heatmap(&a, &b).unwrap();
    assert_eq!(h.rgb, [0, 0, 0, 255, 255, 255]);
    assert!(diff_heatmap(&a, &a).unwrap().rgb.iter().all(|&v| v == 0));
}

fn noise(n: usize) -> Vec<f32> {
    let mut s = 12345u32;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// SNR of a copy with 10% gain error is exactly 20 dB; identical is infinite.
#[test]
fn snr_known_value() {
    let r = Audio { sample_rate: 8000, samples: noise(4000) };
    let t = Audio { sample_rate: 8000, samples: r.samples.iter().map(|s| s * 1.1).collect() };
    assert!((snr_db(&r, &t).unwrap() - 20.0).abs() < 1e-4);
    assert_eq!(snr_db(&r, &r).unwrap(), f64::INFINITY);
}

/// LSD is 0 for identical clips and 20·log10(2) for a clip scaled by 2 (every bin 6.02 dB up),
/// for long clips and for ones shorter than one frame.
#[test]
fn lsd_known_values() {
    for n in [5000, 300] {
        let a = Audio { sample_rate: 16000, samples: noise(n) };
        let b = Audio { sample_rate: 16000, samples: a.samples.iter().map(|s| s * 2.0).collect() };
        assert_eq!(log_spectral_distance(&a, &a).unwrap(), 0.0);
        let d = log_spectral_distance(&a, &b).unwrap();
        assert!((d - 20.0 * 2f64.log10()).abs() < 1e-6, "{n}: {d}");
    }
}

/// The FFT of a pure cosine puts all its energy in its bin.
#[test]
fn fft_of_cosine() {
    let n = 64;
    let mut re: Vec<f64> = (0..n).map(|i| (2.0 * std::f64::consts::PI * 5.0 * i as f64 / n as f64).cos()).collect();
    let mut im = vec![0.0; n];
    audio::Fft::new(n).run(&mut re, &mut im);
    for k in 0..n {
        let mag = (re[k] * re[k] + im[k] * im[k]).sqrt();
        let want = if k == 5 || k == n - 5 { n as f64 / 2.0 } else { 0.0 };
        assert!((mag - want).abs() < 1e-9, "bin {k}: {mag}");
    }
}

/// ABX p-values: 9 of 10 is 11/1024, 5 of 10 is 638/1024, 0 correct is certain.
#[test]
fn binomial_known_values() {
    assert!((binomial_p_value(9, 10) - 11.0 / 1024.0).abs() < 1e-12);
    assert!((binomial_p_value(5, 10) - 638.0 / 1024.0).abs() < 1e-12);
    assert_eq!(binomial_p_value(0, 7), 1.0);
    assert_eq!(binomial_p_value(11, 10), 0.0);
    assert!(binomial_p_value(60, 100) > 0.02 && binomial_p_value(60, 100) < 0.03);
}

/// Prints the metrics' timings at A/B sizes (with --nocapture) and checks their values stay sane
/// on big inputs.
#[test]
#[ignore = "timing printout; run by hand"]
fn metric_timings() {
    let big = Image { width: 512, height: 512, rgb: (0..512 * 512 * 3).map(|i| (i * 7 % 251) as u8).collect() };
    let mut other = big.clone();
    other.rgb.iter_mut().step_by(5).for_each(|v| *v = v.wrapping_add(3));
    let t = std::time::Instant::now();
    let s = ssim(&big, &other).unwrap();
    println!("ssim 512x512: {:?} ({s})", t.elapsed());
    assert!(s < 1.0);
    let a = Audio { sample_rate: 44_100, samples: noise(441_000) };
    let t = std::time::Instant::now();
    let d = log_spectral_distance(&a, &a).unwrap();
    println!("lsd 10 s at 44.1 kHz: {:?}", t.elapsed());
    assert_eq!(d, 0.0);
}
