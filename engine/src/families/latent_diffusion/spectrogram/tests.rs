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

/// Filterbanks match torchaudio's melscale_fbanks within 1e-5 (HTK, Slaney, melodies, Riffusion).
#[test]
fn filterbanks_match_torchaudio() {
    let r = refs();
    let cases = [
        ("small_fb", MelBank::new(257, 30.0, 7600.0, 40, 16000, MelNorm::None, MelScale::Htk).unwrap()),
        ("small_fb_slaney", MelBank::new(257, 30.0, 7600.0, 40, 16000, MelNorm::Slaney, MelScale::Slaney).unwrap()),
        ("melodies_fb", MelBank::new(513, 30.0, 8000.0, 64, 16000, MelNorm::None, MelScale::Htk).unwrap()),
    ];
    for (k, bank) in cases {
        let d = max_abs_diff(&bank.weights, &vec(&r, k));
        eprintln!("{k}: max abs diff {d:e}");
        assert!(d <= 1e-5, "{k}: max abs diff {d}");
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
    assert_eq!((img.width, img.height), (128, 64));
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

/// A sine survives audio → melodies image → audio at its pitch: within one STFT bin (15.6 Hz)
/// where mel bands are narrower than that, else within one mel band spacing (66 Hz at 1 kHz).
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
        let tol = mel_spacing_hz(&p, hz).max(16000.0 / 1024.0);
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
    assert_eq!(p.frames_for_secs(2.048, 8), 128);
    assert_eq!(p.frames_for_secs(4.0, 8), 248);
    assert_eq!(p.frames_for_secs(0.01, 8), 8);
    assert!((p.native_secs() - 2.048).abs() < 1e-6);
    let r = SpectrogramParams::riffusion();
    assert_eq!(r.frames_for_secs(r.native_secs(), 8), 512);
}
