//! Parity with torchaudio (tests/fixtures/spectrogram, written by
//! tools/make_spectrogram_fixtures.py) and round trips audio → image → audio.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::mel::{MelBank, MelNorm, MelScale};
use super::stft::{Stft, griffin_lim};
use super::*;

fn refs() -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/spectrogram/refs.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn vec(r: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    r[k].flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt() as f32
}

/// The small test set: 16 kHz, n_fft 512, window 400, hop 160, 40 HTK mels 30–7600 Hz, power 2.
fn small() -> SpectrogramParams {
    SpectrogramParams {
        sample_rate: 16000,
        n_fft: 512,
        win_length: 400,
        hop: 160,
        n_mels: 40,
        f_min: 30.0,
        f_max: 7600.0,
        power: 2.0,
        pixels: PixelScale::Decibels { db_min: -60.0, db_max: 40.0 },
        channels: Channels::Gray,
        frames: 51,
        peak: 0.0,
        ..SpectrogramParams::riffusion()
    }
}

/// Spectral convergence ‖|STFT(y)| − target‖ / ‖target‖ (frame-major target).
fn spectral_convergence(stft: &Stft, y: &[f32], target: &[f32]) -> f32 {
    let s = stft.forward(y).unwrap();
    let mag: Vec<f32> = s.data.iter().map(|c| c.norm()).collect();
    rel_l2(&mag, target)
}

/// Filterbanks match torchaudio's melscale_fbanks within 1e-5 (HTK, Slaney), 2e-5 (melodies) and
/// 1e-4 (Riffusion): torchaudio computes band edges in float32, and narrow bands magnify that.
#[test]
fn filterbanks_match_torchaudio() {
    let r = refs();
    let cases = [
        ("small_fb", MelBank::new(257, 30.0, 7600.0, 40, 16000, MelNorm::None, MelScale::Htk).unwrap(), 1e-5),
        ("small_fb_slaney", MelBank::new(257, 30.0, 7600.0, 40, 16000, MelNorm::Slaney, MelScale::Slaney).unwrap(), 1e-5),
        ("melodies_fb", MelBank::new(1025, 30.0, 8000.0, 128, 16000, MelNorm::None, MelScale::Htk).unwrap(), 2e-5),
    ];
    for (k, bank, tol) in cases {
        let d = max_abs_diff(&bank.weights, &vec(&r, k));
        eprintln!("{k}: max abs diff {d:e}");
        assert!(d <= tol, "{k}: max abs diff {d}");
    }
    let p = SpectrogramParams::riffusion();
    let bank = p.mel_bank().unwrap();
    let cols = vec(&r, "riffusion_fb_cols");
    let mut d = 0f32;
    for (c, m) in [0usize, 1, 255, 511].into_iter().enumerate() {
        for k in 0..4096 {
            d = d.max((bank.weights[k * 512 + m] - cols[k * 4 + c]).abs());
        }
    }
    // torch builds the band edges in float32; Riffusion's narrowest triangles span about 1.5 bins
    // of 2.5 Hz, which magnifies that rounding (measured 4.1e-5)
    assert!(d <= 1e-4, "riffusion columns: max abs diff {d}");
}

/// The mel spectrogram of the test wave matches torchaudio's MelSpectrogram (relative L2 ≤ 1e-5).
#[test]
fn mel_spectrogram_matches_torchaudio() {
    let r = refs();
    let (mel, frames) = small().mel_from_audio(&vec(&r, "wave"), None).unwrap();
    assert_eq!(frames, 51);
    let e = rel_l2(&mel, &vec(&r, "small_mel"));
    eprintln!("mel spectrogram: relative L2 error {e:e}");
    assert!(e <= 1e-5, "relative L2 error {e}");
}

/// The least-squares inverse mel matches torchaudio's InverseMelScale (relative L2 ≤ 1e-3), and
/// Griffin-Lim from it converges as far as torchaudio's (spectral convergence within 0.01).
#[test]
fn inverse_mel_and_griffin_lim_match_torchaudio() {
    let r = refs();
    let p = small();
    let linear_ref = vec(&r, "small_linear"); // bins × frames
    let (bins, frames) = (257, 51);
    let ours = p.magnitude_from_mel(&vec(&r, "small_mel"), frames).unwrap(); // frames × bins, ^(1/2)
    let ours_power: Vec<f32> = (0..bins * frames).map(|i| ours[(i % frames) * bins + i / frames].powi(2)).collect();
    let e = rel_l2(&ours_power, &linear_ref);
    eprintln!("inverse mel: relative L2 error {e:e}");
    assert!(e <= 1e-3, "inverse mel relative L2 error {e}");

    let target: Vec<f32> = (0..frames * bins).map(|i| linear_ref[(i % bins) * frames + i / bins].sqrt()).collect();
    let stft = p.stft().unwrap();
    let y = griffin_lim(&stft, &target, frames, 32, 0.99, None).unwrap();
    assert_eq!(y.len(), 8000);
    let sc = spectral_convergence(&stft, &y, &target);
    let sc_ref = vec(&r, "small_gl_sc")[0];
    let sc_torch = spectral_convergence(&stft, &vec(&r, "small_gl"), &target);
    assert!((sc_torch - sc_ref).abs() < 1e-3, "our STFT of torch's output: {sc_torch} vs {sc_ref}");
    assert!((sc - sc_ref).abs() <= 0.01, "spectral convergence {sc}, torchaudio {sc_ref}");
    eprintln!("griffin-lim spectral convergence: ours {sc:.4}, torchaudio {sc_ref:.4}");
}

/// Griffin-Lim reduces the spectral convergence of a consistent spectrogram well below its start.
#[test]
fn griffin_lim_converges_on_a_real_signal() {
    let r = refs();
    let stft = Stft::new(512, 160, 400).unwrap();
    let s = stft.forward(&vec(&r, "wave")).unwrap();
    let target: Vec<f32> = s.data.iter().map(|c| c.norm()).collect();
    let zero_phase = griffin_lim(&stft, &target, s.frames, 0, 0.99, None).unwrap();
    let y = griffin_lim(&stft, &target, s.frames, 32, 0.99, None).unwrap();
    let (before, after) = (spectral_convergence(&stft, &zero_phase, &target), spectral_convergence(&stft, &y, &target));
    eprintln!("griffin-lim on a consistent spectrogram: spectral convergence {before:.4} → {after:.4}");
    assert!(after < before / 2.0, "spectral convergence {before} → {after}");
}

/// Audio → image reproduces the images builtin:melodies was trained on (melodies_data.mel_image).
#[test]
fn melodies_image_matches_training_render() {
    let r = refs();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/melodies");
    let p = SpectrogramParams::from_manifest(&dir).unwrap().expect("melodies is a spectrogram model");
    let wave = vec(&r, "wave");
    let clip: Vec<f32> = wave.iter().copied().cycle().take(32768).collect();
    let img = p.image_from_audio(&Audio { sample_rate: 16000, samples: clip }, Some(p.frames)).unwrap();
    assert_eq!((img.width, img.height), (64, 128));
    let ours: Vec<f32> = img.rgb.chunks(3).map(|px| px[0] as f32).collect();
    let d = max_abs_diff(&ours, &vec(&r, "melodies_image"));
    let n = ours.iter().zip(vec(&r, "melodies_image")).filter(|(a, b)| *a != b).count();
    eprintln!("melodies image: {n} of {} pixels differ, by at most {d}", ours.len());
    assert!(d <= 1.0, "pixels differ by up to {d}");
}

/// The peak frequency of `x` (Hz) by a zero-padded FFT of the whole clip.
fn peak_hz(x: &[f32], sr: u32) -> f32 {
    let n = x.len().next_power_of_two() * 4;
    let mut planner = realfft::RealFftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(n);
    let mut input = fft.make_input_vec();
    input[..x.len()].copy_from_slice(x);
    let mut out = fft.make_output_vec();
    fft.process(&mut input, &mut out).unwrap();
    let k = (1..out.len()).max_by(|&a, &b| out[a].norm().total_cmp(&out[b].norm())).unwrap();
    k as f32 * sr as f32 / n as f32
}

fn sine(hz: f32, n: usize, sr: u32) -> Vec<f32> {
    (0..n).map(|i| 0.4 * (2.0 * std::f32::consts::PI * hz * i as f32 / sr as f32).sin()).collect()
}

/// Distance between neighbouring mel filter centres at `hz` (HTK): the finest pitch the image holds.
fn mel_spacing_hz(p: &SpectrogramParams, hz: f32) -> f32 {
    let mel = |f: f32| 2595.0 * (1.0 + f / 700.0).log10();
    let step = (mel(p.f_max) - mel(p.f_min)) / (p.n_mels + 1) as f32;
    700.0 * (10f32.powf((mel(hz) + step) / 2595.0) - 1.0) - hz
}

/// A sine survives audio → melodies image → audio at its pitch: within one STFT bin (7.8 Hz at
/// n_fft 2048) where mel bands are narrower than that, else within one mel band spacing.
#[test]
fn melodies_round_trip_keeps_pitch() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/melodies");
    let p = SpectrogramParams::from_manifest(&dir).unwrap().unwrap();
    for hz in [220.0, 440.0, 1000.0] {
        let a = Audio { sample_rate: 16000, samples: sine(hz, 32768, 16000) };
        let img = p.image_from_audio(&a, Some(p.frames)).unwrap();
        let t = std::time::Instant::now();
        let back = p.audio_from_image(&img).unwrap();
        eprintln!("melodies image → audio (inverse mel + 32 Griffin-Lim iterations): {:?}", t.elapsed());
        assert_eq!(back.samples.len(), 32768);
        let peak = back.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 1e-4, "peak {peak}");
        let f = peak_hz(&back.samples, 16000);
        eprintln!("melodies round trip: {hz} Hz → {f:.1} Hz");
        let tol = mel_spacing_hz(&p, hz).max(16000.0 / p.n_fft as f32);
        assert!((f - hz).abs() <= tol, "{hz} Hz came back at {f} Hz (tolerance {tol} Hz)");
    }
}

/// The same round trip with Riffusion's parameters (short clip: 0.5 s, 50 frames).
#[test]
fn riffusion_round_trip_keeps_pitch() {
    let p = SpectrogramParams { griffin_lim_iters: 8, ..SpectrogramParams::riffusion() };
    let a = Audio { sample_rate: 44100, samples: sine(440.0, 22050, 44100) };
    let img = p.image_from_audio(&a, Some(50)).unwrap();
    assert_eq!((img.width, img.height), (50, 512));
    // Riffusion's image: dark = loud, low frequencies at the bottom; 440 Hz is near the bottom
    let darkest = (0..512).min_by_key(|&row| img.rgb[(row * 50 + 25) * 3]).unwrap();
    assert!(darkest > 400, "darkest row {darkest}");
    let back = p.audio_from_image(&img).unwrap();
    assert_eq!(back.samples.len(), 50 * 441);
    let f = peak_hz(&back.samples, 44100);
    eprintln!("riffusion round trip: 440 Hz → {f:.1} Hz");
    assert!((f - 440.0).abs() <= 44100.0 / 17640.0 * 2.0, "440 Hz came back at {f} Hz");
}

/// A manifest without `[audio]` gives Riffusion's parameters; bad values name the file and key.
#[test]
fn manifest_reading() {
    let dir = tempfile::tempdir().unwrap();
    let write = |s: &str| std::fs::write(dir.path().join("model.toml"), s).unwrap();
    assert_eq!(SpectrogramParams::from_manifest(dir.path()).unwrap(), None);
    write("name = \"x\"\n");
    assert_eq!(SpectrogramParams::from_manifest(dir.path()).unwrap(), None);
    write("output = \"mel-spectrogram\"\n");
    assert_eq!(SpectrogramParams::from_manifest(dir.path()).unwrap(), Some(SpectrogramParams::riffusion()));
    write("output = \"mel-spectrogram\"\n[audio]\nn_mels = \"many\"\n");
    let e = SpectrogramParams::from_manifest(dir.path()).unwrap_err().to_string();
    assert!(e.contains("model.toml") && e.contains("n_mels"), "{e}");
    write("output = \"mel-spectrogram\"\n[audio]\nf_max = 30000\n");
    let e = SpectrogramParams::from_manifest(dir.path()).unwrap_err().to_string();
    assert!(e.contains("f_max"), "{e}");
    write("output = \"sound\"\n");
    assert!(SpectrogramParams::from_manifest(dir.path()).is_err());
}

/// `seconds` maps to whole autoencoder cells of frames.
#[test]
fn seconds_to_frames() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/melodies");
    let p = SpectrogramParams::from_manifest(&dir).unwrap().unwrap();
    assert_eq!(p.frames_for_secs(2.048, 8), Some(64));
    assert_eq!(p.frames_for_secs(4.0, 8), Some(128));
    assert_eq!(p.frames_for_secs(0.01, 8), Some(8));
    assert!((p.native_secs() - 2.048).abs() < 1e-6);
    let r = SpectrogramParams::riffusion();
    assert_eq!(r.frames_for_secs(r.native_secs(), 8), Some(512));
}

/// A length whose frame count does not fit (1e11 s, infinity) is `None`, not an overflow.
#[test]
fn seconds_to_frames_never_overflows() {
    let p = SpectrogramParams::riffusion();
    assert_eq!(p.frames_for_secs(1e11, 8), None);
    assert_eq!(p.frames_for_secs(f32::INFINITY, 8), None);
    assert_eq!(p.frames_for_secs(f32::NAN, 8), None);
    assert_eq!(p.frames_for_secs(f32::MAX, usize::MAX), None);
}

/// The pitch-test set: 16 kHz, n_fft 2048, hop 512, 128 HTK mels 30–8000 Hz, power 2, decibel
/// pixels −30…50 dB, 64 frames.
fn pitch_params(inverse: MelInverse) -> SpectrogramParams {
    SpectrogramParams {
        sample_rate: 16000,
        n_fft: 2048,
        win_length: 2048,
        hop: 512,
        n_mels: 128,
        f_min: 30.0,
        f_max: 8000.0,
        power: 2.0,
        pixels: PixelScale::Decibels { db_min: -30.0, db_max: 50.0 },
        channels: Channels::Gray,
        frames: 64,
        inverse,
        peak: 0.5,
        ..SpectrogramParams::riffusion()
    }
}

/// A tone of `harmonics` partials at `f0`, partial h at amplitude 0.3 / h.
fn harmonic_tone(f0: f32, harmonics: usize, n: usize, sr: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = i as f32 / sr as f32;
            (1..=harmonics).map(|h| 0.3 / h as f32 * (2.0 * std::f32::consts::PI * f0 * h as f32 * t).sin()).sum()
        })
        .collect()
}

/// Deterministic uniform numbers in [0, 1) (xorshift).
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed.max(1);
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The worst KKT violations of `x` for `min ‖A x − b‖², x ≥ 0`, relative to `max‖A_k‖ · ‖b‖`:
/// (most negative gradient where x = 0, largest |gradient| where x > 0). Also asserts x ≥ 0.
fn kkt(bank: &MelBank, b: &[f64], x: &[f64]) -> (f64, f64) {
    let n = bank.n_mels;
    let w = |k: usize, m: usize| bank.weights[k * n + m] as f64;
    assert!(x.iter().all(|&v| v >= 0.0), "negative solution entries");
    let mut r = vec![0f64; n]; // fbᵀ x − mel
    for (m, rm) in r.iter_mut().enumerate() {
        *rm = bank.support(m).map(|k| w(k, m) * x[k]).sum::<f64>() - b[m];
    }
    let col_norm = (0..bank.n_freqs).map(|k| (0..n).map(|m| w(k, m).powi(2)).sum::<f64>().sqrt()).fold(0.0, f64::max);
    let scale = col_norm * b.iter().map(|v| v * v).sum::<f64>().sqrt();
    let (mut zero_side, mut active) = (0f64, 0f64);
    for (k, &xk) in x.iter().enumerate() {
        let g: f64 = (0..n).map(|m| w(k, m) * r[m]).sum::<f64>() / scale;
        if xk > 0.0 {
            active = active.max(g.abs());
        } else {
            zero_side = zero_side.max(-g);
        }
    }
    (zero_side, active)
}

/// NNLS solutions satisfy the KKT conditions (relative 1e-9) on random non-negative mel frames and
/// on frames of a real harmonic spectrum, for HTK and Slaney banks; a zero frame gives zero.
#[test]
fn nnls_is_optimal() {
    let banks = [
        MelBank::new(1025, 30.0, 8000.0, 128, 16000, MelNorm::None, MelScale::Htk).unwrap(),
        MelBank::new(257, 30.0, 7600.0, 40, 16000, MelNorm::Slaney, MelScale::Slaney).unwrap(),
    ];
    let mut rand = uniform(7);
    let mut worst = (0f64, 0f64);
    for bank in &banks {
        let nnls = bank.nnls().unwrap();
        let mut x = vec![0f64; bank.n_freqs];
        let mut frames: Vec<Vec<f64>> = (0..20).map(|_| (0..bank.n_mels).map(|_| rand().powi(4) * 1e4).collect()).collect();
        // a real spectrum: |STFT|² of a harmonic tone through the bank, frame 10
        let n_fft = (bank.n_freqs - 1) * 2;
        let spec = Stft::new(n_fft, n_fft / 4, n_fft).unwrap().forward(&harmonic_tone(82.4, 6, 16000, 16000)).unwrap();
        let pow: Vec<f32> = spec.data[10 * spec.bins..11 * spec.bins].iter().map(|c| c.norm_sqr()).collect();
        let mut mel = vec![0f32; bank.n_mels];
        bank.apply(&pow, &mut mel);
        frames.push(mel.iter().map(|&v| v as f64).collect());
        for b in &frames {
            let out = nnls.solve(b, &mut x);
            assert!(out.converged, "{out:?}");
            let (z, a) = kkt(bank, b, &x);
            worst = (worst.0.max(z), worst.1.max(a));
        }
        nnls.solve(&vec![0.0; bank.n_mels], &mut x);
        assert!(x.iter().all(|&v| v == 0.0));
    }
    eprintln!("nnls KKT: worst relative gradient {:.1e} where x = 0 (must be ≥ −tol), {:.1e} where x > 0", worst.0, worst.1);
    assert!(worst.0 <= 1e-9 && worst.1 <= 1e-9, "KKT violated: {worst:?}");
}

/// A spectrum of one or two non-zero bins comes back from its mel bands with zero residual and no
/// energy outside the spikes' mel intervals (between two filter centres); exactly (those bins,
/// those values) when each spike is the first or last bin of its interval, where the non-negative
/// solution is unique. A bin inside an interval is a positive mix of its neighbours there, and any
/// such mix fits as well.
#[test]
fn nnls_recovers_sparse_spectra() {
    let bank = MelBank::new(1025, 30.0, 8000.0, 128, 16000, MelNorm::None, MelScale::Htk).unwrap();
    let nnls = bank.nnls().unwrap();
    let filters = |k: usize| -> Vec<usize> { (0..128).filter(|&m| bank.weights[k * 128 + m] > 0.0).collect() };
    let cases = [(true, vec![(11usize, 3.0f64)]), (true, vec![(11, 2.0), (45, 0.5)]), (false, vec![(40, 1.0), (300, 250.0)]), (false, vec![(700, 5.0)]), (false, vec![(12, 1.0), (44, 0.1)])];
    for (exact, spikes) in cases {
        // mel bands in f64 (bank.apply's f32 sums would blur the support by their rounding)
        let mut b = vec![0f64; 128];
        for &(k, v) in &spikes {
            for (m, bm) in b.iter_mut().enumerate() {
                *bm += bank.weights[k * 128 + m] as f64 * v;
            }
        }
        let mut x = vec![0f64; 1025];
        nnls.solve(&b, &mut x);
        // entries at rounding level (1e-12 of the largest) do not count
        let x_max = x.iter().fold(0f64, |a, &v| a.max(v));
        let support: Vec<usize> = (0..1025).filter(|&k| x[k] > 1e-12 * x_max).collect();
        let mut r = b.clone();
        for (k, &xk) in x.iter().enumerate() {
            for (m, rm) in r.iter_mut().enumerate() {
                *rm -= bank.weights[k * 128 + m] as f64 * xk;
            }
        }
        let res = r.iter().map(|v| v * v).sum::<f64>().sqrt() / b.iter().map(|v| v * v).sum::<f64>().sqrt();
        let err = spikes.iter().map(|&(k, v)| ((x[k] - v) / v).abs()).fold(0.0, f64::max);
        eprintln!("nnls recovery of {spikes:?}: support {support:?}, relative residual {res:.1e}, spike values off by {err:.1e}");
        assert!(res < 1e-12, "relative residual {res}");
        for &s in &support {
            let fs = filters(s);
            assert!(spikes.iter().any(|&(k, _)| fs.iter().all(|m| filters(k).contains(m))), "bin {s} (filters {fs:?}) is outside every spike's interval");
        }
        if exact {
            for &(k, _) in &spikes {
                let same: Vec<usize> = (0..1025).filter(|&j| filters(j) == filters(k)).collect();
                assert!(k == same[0] || k == same[same.len() - 1], "bin {k} is inside its interval {same:?}");
            }
            assert_eq!(support, spikes.iter().map(|s| s.0).collect::<Vec<_>>());
            assert!(err < 1e-9, "spike values off by {err}");
        }
    }
}

/// The strongest peak of `x` between `lo` and `hi` Hz: Hann-windowed FFT zero-padded to 8× and a
/// parabola through the log magnitudes around it.
fn peak_hz_between(x: &[f32], sr: u32, lo: f32, hi: f32) -> f32 {
    let n = x.len().next_power_of_two() * 8;
    let mut planner = realfft::RealFftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(n);
    let mut input = fft.make_input_vec();
    let len = x.len() as f32;
    for (i, (d, &s)) in input.iter_mut().zip(x).enumerate() {
        *d = s * (0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / len).cos());
    }
    let mut out = fft.make_output_vec();
    fft.process(&mut input, &mut out).unwrap();
    let hz = sr as f32 / n as f32;
    let k = ((lo / hz) as usize..=(hi / hz) as usize).max_by(|&a, &b| out[a].norm().total_cmp(&out[b].norm())).unwrap();
    let (a, b, c) = (out[k - 1].norm().ln(), out[k].norm().ln(), out[k + 1].norm().ln());
    (k as f32 + 0.5 * (a - c) / (a - 2.0 * b + c)) * hz
}

/// An E2 (82.4 Hz, 6 harmonics) through audio → image → audio keeps its pitch within a third of a
/// semitone with the NNLS inverse, and closer than with the least-squares one.
#[test]
fn nnls_round_trip_keeps_pitch() {
    let f0 = 82.41;
    let cents = |f: f32| 1200.0 * (f / f0).log2();
    let mut err = Vec::new();
    for inverse in [MelInverse::Nnls, MelInverse::LeastSquares] {
        let p = pitch_params(inverse);
        let a = Audio { sample_rate: 16000, samples: harmonic_tone(f0, 6, 64 * 512, 16000) };
        let img = p.image_from_audio(&a, Some(64)).unwrap();
        let back = p.audio_from_image(&img).unwrap();
        let f = peak_hz_between(&back.samples, 16000, 40.0, 130.0);
        eprintln!("E2 round trip, {inverse:?}: {f0} Hz → {f:.2} Hz ({:+.0} cents)", cents(f));
        err.push(cents(f).abs());
    }
    assert!(err[0] <= 100.0 / 3.0, "nnls: {} cents off", err[0]);
    assert!(err[0] < err[1], "nnls {} cents, least squares {} cents", err[0], err[1]);
}

/// `inverse` is read from `[audio]` (least squares by default); a bad value names the key.
#[test]
fn manifest_inverse() {
    let dir = tempfile::tempdir().unwrap();
    let write = |s: &str| std::fs::write(dir.path().join("model.toml"), s).unwrap();
    write("output = \"mel-spectrogram\"\n[audio]\ninverse = \"nnls\"\n");
    assert_eq!(SpectrogramParams::from_manifest(dir.path()).unwrap().unwrap().inverse, MelInverse::Nnls);
    write("output = \"mel-spectrogram\"\n[audio]\ninverse = \"least-squares\"\n");
    assert_eq!(SpectrogramParams::from_manifest(dir.path()).unwrap().unwrap().inverse, MelInverse::LeastSquares);
    write("output = \"mel-spectrogram\"\n[audio]\nn_mels = 64\n");
    assert_eq!(SpectrogramParams::from_manifest(dir.path()).unwrap().unwrap().inverse, MelInverse::LeastSquares);
    for bad in ["\"pinv\"", "3"] {
        write(&format!("output = \"mel-spectrogram\"\n[audio]\ninverse = {bad}\n"));
        let e = SpectrogramParams::from_manifest(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model.toml") && e.contains("inverse"), "{e}");
    }
}

/// Timing of image → audio (128 mels × 64 frames, 32 Griffin-Lim iterations) with each inverse:
/// `cargo test -p headroom-engine --release spectrogram_inverse_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn spectrogram_inverse_timing() {
    for inverse in [MelInverse::LeastSquares, MelInverse::Nnls] {
        let p = pitch_params(inverse);
        let a = Audio { sample_rate: 16000, samples: harmonic_tone(82.41, 6, 64 * 512, 16000) };
        let img = p.image_from_audio(&a, Some(64)).unwrap();
        let (mel, t) = (p.mel_from_image(&img).unwrap(), std::time::Instant::now());
        for _ in 0..5 {
            p.magnitude_from_mel(&mel, 64).unwrap();
        }
        let inv_ms = t.elapsed().as_secs_f64() * 1e3 / 5.0;
        let t = std::time::Instant::now();
        for _ in 0..5 {
            p.audio_from_image(&img).unwrap();
        }
        let all_ms = t.elapsed().as_secs_f64() * 1e3 / 5.0;
        eprintln!("{inverse:?}: inverse mel {inv_ms:.1} ms, image → audio {all_ms:.1} ms");
    }
    // Riffusion's size: 512 mels over 8821 bins, 50 frames of a 440 Hz sine (inverse only)
    for inverse in [MelInverse::LeastSquares, MelInverse::Nnls] {
        let p = SpectrogramParams { inverse, ..SpectrogramParams::riffusion() };
        let img = p.image_from_audio(&Audio { sample_rate: 44100, samples: harmonic_tone(440.0, 6, 22050, 44100) }, Some(50)).unwrap();
        let (mel, t) = (p.mel_from_image(&img).unwrap(), std::time::Instant::now());
        p.magnitude_from_mel(&mel, 50).unwrap();
        eprintln!("riffusion, {inverse:?}: inverse mel of 50 frames {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
}

/// A cancel asked for during Griffin-Lim ends it with Error::Cancelled at the next iteration,
/// after 3 of 32 iterations instead of all of them.
#[test]
fn griffin_lim_stops_when_cancelled() {
    let r = refs();
    let stft = Stft::new(512, 160, 400).unwrap();
    let s = stft.forward(&vec(&r, "wave")).unwrap();
    let target: Vec<f32> = s.data.iter().map(|c| c.norm()).collect();
    let asked = std::cell::Cell::new(0);
    let cancelled = || {
        asked.set(asked.get() + 1);
        asked.get() > 3
    };
    let err = super::stft::griffin_lim_checked(&stft, &target, s.frames, 32, 0.99, None, &cancelled).unwrap_err();
    assert!(matches!(err, crate::error::Error::Cancelled), "{err}");
    assert_eq!(asked.get(), 4);
}
