//! Audio through spectrogram images, as Riffusion does: a model whose images are mel spectrograms
//! has each image turned into sound (pixels → mel bands → linear spectrum by least squares, or
//! non-negative least squares → Griffin-Lim → waveform), and audio can be turned into such an image (STFT → mel → pixels).
//!
//! [`SpectrogramParams`] holds every choice; [`SpectrogramParams::riffusion`] is Riffusion's
//! (`riffusion/spectrogram_params.py`, `riffusion/util/image_util.py`), and a model's `model.toml`
//! (`output = "mel-spectrogram"` with an optional `[audio]` table) overrides any of them.
//! [`stft`] and [`mel`] hold the transforms, each matching torchaudio; [`nnls`] the optional
//! non-negative inverse.

pub mod mel;
pub mod nnls;
pub mod stft;
#[cfg(test)]
mod tests;

use std::path::Path;

use mel::{MelBank, MelNorm, MelScale};
use stft::Stft;

use crate::error::{Error, Result};
use crate::media::{Audio, Image};

/// How mel band values become 8-bit pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PixelScale {
    /// Riffusion's: `pixel = trunc(255 - 255 · (mel / max)^exponent)` (dark = loud); an image is read
    /// back with `mel = ((255 - pixel) / 255)^(1 / exponent) · max_value`.
    Power { exponent: f32, max_value: f32 },
    /// `pixel = round(255 · clip((10 log10(max(mel, 1e-10)) - db_min) / (db_max - db_min), 0, 1))`
    /// (bright = loud); pixel 0 is read back as silence.
    Decibels { db_min: f32, db_max: f32 },
}

/// Which channel of an RGB image holds the spectrogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// The red channel (Riffusion's mono images; it reads channel 0).
    Red,
    /// Gray replicated to R, G and B: the mean of the three is read.
    Gray,
}

/// How each frame's mel bands are turned back into a linear spectrum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MelInverse {
    /// The minimum-norm least-squares solution with negatives set to zero, as torchaudio's
    /// `InverseMelScale` (Riffusion's). It spreads each band's energy over its whole triangle, so
    /// harmonics come back at mel-filter centres. `inverse = "least-squares"`, the default.
    LeastSquares,
    /// Non-negative least squares (Lawson–Hanson, as `scipy.optimize.nnls`): a sparse spectrum
    /// that keeps harmonics near their own bins, so pitch survives. `inverse = "nnls"`. Slower:
    /// about 0.2 ms a frame at 128 mels over 1025 bins, 20 ms at Riffusion's 512 over 8821 (release).
    Nnls,
}

/// One frame's mel bands → its linear spectrum (`|X|^power`).
type FrameInverse<'a> = Box<dyn Fn(&[f32], &mut [f32]) + 'a>;

/// Everything that maps audio to a spectrogram image and back.
#[derive(Clone, Debug, PartialEq)]
pub struct SpectrogramParams {
    pub sample_rate: u32,
    /// FFT length (the window zero-padded to it, centred).
    pub n_fft: usize,
    /// Periodic Hann window length.
    pub win_length: usize,
    /// Samples between frames (one image column per frame).
    pub hop: usize,
    /// Image height: one row per mel band.
    pub n_mels: usize,
    pub f_min: f32,
    pub f_max: f32,
    pub mel_scale: MelScale,
    pub mel_norm: MelNorm,
    /// The STFT's exponent the mel bands hold: 1 = magnitude (Riffusion), 2 = power.
    pub power: f32,
    pub pixels: PixelScale,
    pub channels: Channels,
    /// True when row 0 is the highest band (low frequencies at the bottom), as both Riffusion and
    /// `builtin:melodies` draw them.
    pub low_at_bottom: bool,
    /// The model's native image width in frames.
    pub frames: usize,
    /// How mel bands become a linear spectrum.
    pub inverse: MelInverse,
    pub griffin_lim_iters: usize,
    pub momentum: f32,
    /// The waveform is scaled so its largest sample is this (0 leaves it as reconstructed).
    pub peak: f32,
}

impl SpectrogramParams {
    /// Riffusion's parameters: 44.1 kHz, 10 ms hop (441), 100 ms window (4410) padded to 400 ms
    /// (n_fft 17640), 512 HTK mel bins from 0 to 10 kHz unnormalised, magnitudes, image =
    /// 255 − 255·(mel/max)^0.25 read back with max 30e6, low frequencies at the bottom, red channel,
    /// 512 frames (5.12 s), 32 Griffin-Lim iterations with momentum 0.99, and the waveform
    /// normalised to −0.1 dBFS as its `apply_filters` ends (its compressor is not applied).
    pub fn riffusion() -> Self {
        Self {
            sample_rate: 44100,
            n_fft: 17640,
            win_length: 4410,
            hop: 441,
            n_mels: 512,
            f_min: 0.0,
            f_max: 10000.0,
            mel_scale: MelScale::Htk,
            mel_norm: MelNorm::None,
            power: 1.0,
            pixels: PixelScale::Power { exponent: 0.25, max_value: 30e6 },
            channels: Channels::Red,
            low_at_bottom: true,
            frames: 512,
            inverse: MelInverse::LeastSquares,
            griffin_lim_iters: 32,
            momentum: 0.99,
            peak: 10f32.powf(-0.1 / 20.0),
        }
    }

    /// Reads `dir/model.toml`: `None` when there is none or it does not say `output =
    /// "mel-spectrogram"`; otherwise Riffusion's parameters with what its `[audio]` table gives.
    ///
    /// # Errors
    /// An unreadable or malformed manifest, or an `[audio]` value of the wrong type or range, naming
    /// the file and the key.
    pub fn from_manifest(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("model.toml");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e.to_string()))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Error::file(&path, format!("not valid TOML: {}", e.message()))
        })?;
        match table.get("output").map(|v| v.as_str()) {
            None => return Ok(None),
            Some(Some("image")) => return Ok(None),
            Some(Some("mel-spectrogram")) => {}
            Some(_) => return Err(Error::file(&path, "output: expected \"image\" or \"mel-spectrogram\"")),
        }
        let empty = toml::Table::new();
        let audio = match table.get("audio") {
            None => &empty,
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(Error::file(&path, "[audio] must be a table")),
        };
        Self::riffusion().with_table(audio).map(Some).map_err(|e| Error::file(&path, e))
    }

    /// Applies an `[audio]` table's keys; unknown keys (descriptions such as `pixel`) are kept out.
    fn with_table(mut self, t: &toml::Table) -> std::result::Result<Self, String> {
        let num = |k: &str| -> std::result::Result<Option<f64>, String> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
                Some(toml::Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
                Some(_) => Err(format!("[audio] {k}: expected a number")),
            }
        };
        let count = |k: &str| -> std::result::Result<Option<usize>, String> {
            match num(k)? {
                Some(v) if v >= 1.0 && v.fract() == 0.0 => Ok(Some(v as usize)),
                Some(v) => Err(format!("[audio] {k} = {v}: expected a positive whole number")),
                None => Ok(None),
            }
        };
        let text = |k: &str| -> std::result::Result<Option<String>, String> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.to_ascii_lowercase())),
                Some(_) => Err(format!("[audio] {k}: expected a string")),
            }
        };
        if let Some(v) = count("sample_rate")? {
            self.sample_rate = v as u32;
        }
        if let Some(v) = count("n_fft")? {
            self.n_fft = v;
            self.win_length = v;
        }
        if let Some(v) = count("win_length")? {
            self.win_length = v;
        }
        if let Some(v) = count("hop")? {
            self.hop = v;
        }
        if let Some(v) = count("n_mels")? {
            self.n_mels = v;
        }
        if let Some(v) = count("frames")? {
            self.frames = v;
        }
        if let Some(v) = count("griffin_lim_iters")? {
            self.griffin_lim_iters = v;
        }
        for (k, slot) in [("f_min", &mut self.f_min), ("f_max", &mut self.f_max), ("power", &mut self.power), ("momentum", &mut self.momentum), ("peak", &mut self.peak)] {
            if let Some(v) = num(k)? {
                *slot = v as f32;
            }
        }
        if let Some(s) = text("window")?
            && s != "hann-periodic" && s != "hann" {
                return Err(format!("[audio] window = \"{s}\": only \"hann-periodic\" is supported"));
            }
        if t.get("center").is_some_and(|v| v.as_bool() != Some(true)) {
            return Err("[audio] center: only centred frames (true) are supported".into());
        }
        match text("mel_scale")?.as_deref() {
            None => {}
            Some("htk") => self.mel_scale = MelScale::Htk,
            Some("slaney") => self.mel_scale = MelScale::Slaney,
            Some(s) => return Err(format!("[audio] mel_scale = \"{s}\": expected \"htk\" or \"slaney\"")),
        }
        match text("mel_norm")?.as_deref() {
            None => {}
            Some("none") => self.mel_norm = MelNorm::None,
            Some("slaney") => self.mel_norm = MelNorm::Slaney,
            Some(s) => return Err(format!("[audio] mel_norm = \"{s}\": expected \"none\" or \"slaney\"")),
        }
        match text("inverse")?.as_deref() {
            None => {}
            Some("least-squares") => self.inverse = MelInverse::LeastSquares,
            Some("nnls") => self.inverse = MelInverse::Nnls,
            Some(s) => return Err(format!("[audio] inverse = \"{s}\": expected \"least-squares\" or \"nnls\"")),
        }
        match (num("db_min")?, num("db_max")?, num("power_for_image")?) {
            (Some(lo), Some(hi), None) if lo < hi => {
                self.pixels = PixelScale::Decibels { db_min: lo as f32, db_max: hi as f32 };
            }
            (None, None, Some(e)) if e > 0.0 => {
                let max_value = num("max_value")?.unwrap_or(30e6) as f32;
                self.pixels = PixelScale::Power { exponent: e as f32, max_value };
            }
            (None, None, None) => {}
            _ => return Err("[audio]: give either db_min < db_max or power_for_image > 0".into()),
        }
        if let Some(s) = text("rows")? {
            self.low_at_bottom = match (s.contains("highest"), s.contains("lowest")) {
                (true, false) => true,
                (false, true) => false,
                _ => return Err(format!("[audio] rows = \"{s}\": expected \"row 0 = highest mel band\" or \"row 0 = lowest mel band\"")),
            };
        }
        if let Some(s) = text("channels")? {
            self.channels = if s.starts_with("gray") || s.starts_with("grey") {
                Channels::Gray
            } else if s.starts_with("red") {
                Channels::Red
            } else {
                return Err(format!("[audio] channels = \"{s}\": expected \"gray …\" or \"red\""));
            };
        }
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.win_length > self.n_fft || self.hop > self.win_length {
            return Err(format!("[audio]: need hop ({}) <= window ({}) <= n_fft ({})", self.hop, self.win_length, self.n_fft));
        }
        if !(self.f_min >= 0.0 && self.f_min < self.f_max && self.f_max <= self.sample_rate as f32 / 2.0) {
            return Err(format!("[audio]: need 0 <= f_min ({}) < f_max ({}) <= sample_rate / 2", self.f_min, self.f_max));
        }
        if self.power.is_nan() || self.power <= 0.0 || !(0.0..1.0).contains(&self.momentum) || self.peak < 0.0 {
            return Err("[audio]: need power > 0, 0 <= momentum < 1, peak >= 0".into());
        }
        Ok(())
    }

    /// The native length in seconds (`frames · hop / sample_rate`).
    pub fn native_secs(&self) -> f32 {
        (self.frames * self.hop) as f32 / self.sample_rate as f32
    }

    /// Image width for a length: `seconds · sample_rate / hop` frames, rounded to a multiple of
    /// `multiple` (the autoencoder's cell), at least one cell; `None` when the length is not a
    /// finite positive number or the frame count does not fit in a `u32`.
    pub fn frames_for_secs(&self, seconds: f32, multiple: usize) -> Option<usize> {
        let multiple = multiple.max(1);
        let frames = (f64::from(seconds) * self.sample_rate as f64 / self.hop.max(1) as f64).round();
        if !(frames.is_finite() && frames >= 0.0 && frames <= f64::from(u32::MAX)) {
            return None;
        }
        let cells = ((frames as usize).checked_add(multiple / 2)? / multiple).max(1);
        cells.checked_mul(multiple).filter(|&f| u32::try_from(f).is_ok())
    }

    /// The filterbank these parameters describe.
    ///
    /// # Errors
    /// An invalid frequency range.
    pub fn mel_bank(&self) -> Result<MelBank> {
        MelBank::new(self.n_fft / 2 + 1, self.f_min as f64, self.f_max as f64, self.n_mels, self.sample_rate, self.mel_norm, self.mel_scale)
    }

    /// The STFT these parameters describe.
    ///
    /// # Errors
    /// Inconsistent sizes.
    pub fn stft(&self) -> Result<Stft> {
        Stft::new(self.n_fft, self.hop, self.win_length)
    }

    /// Audio → mel bands, band-major (`n_mels × frames`), in the units the image encodes (`|X|^power`
    /// through the filterbank); the first `frames` frames, or all `1 + len / hop`.
    ///
    /// # Errors
    /// A signal shorter than half the FFT, more frames asked than it has.
    pub fn mel_from_audio(&self, samples: &[f32], frames: Option<usize>) -> Result<(Vec<f32>, usize)> {
        let spec = self.stft()?.forward(samples)?;
        let frames = frames.unwrap_or(spec.frames);
        if frames > spec.frames {
            return Err(Error::invalid(format!("{} samples give {} frames, not {frames}", samples.len(), spec.frames)));
        }
        let bank = self.mel_bank()?;
        let mut mel = vec![0f32; self.n_mels * frames];
        let mut pow = vec![0f32; spec.bins];
        let mut bands = vec![0f32; self.n_mels];
        for f in 0..frames {
            for (p, c) in pow.iter_mut().zip(&spec.data[f * spec.bins..(f + 1) * spec.bins]) {
                let m = c.norm();
                *p = if self.power == 1.0 { m } else if self.power == 2.0 { m * m } else { m.powf(self.power) };
            }
            bank.apply(&pow, &mut bands);
            for (m, &v) in bands.iter().enumerate() {
                mel[m * frames + f] = v;
            }
        }
        Ok((mel, frames))
    }

    /// Mel bands (band-major, `n_mels × frames`) → an image `frames` wide and `n_mels` high.
    pub fn image_from_mel(&self, mel: &[f32], frames: usize) -> Image {
        let max = mel.iter().copied().fold(0f32, f32::max);
        let pixel = |v: f32| -> u8 {
            match self.pixels {
                PixelScale::Power { exponent, .. } => {
                    let x = if max > 0.0 { (v / max).powf(exponent) } else { 0.0 };
                    (255.0 - x * 255.0).clamp(0.0, 255.0) as u8
                }
                PixelScale::Decibels { db_min, db_max } => {
                    let db = 10.0 * v.max(1e-10).log10();
                    (255.0 * ((db - db_min) / (db_max - db_min)).clamp(0.0, 1.0)).round() as u8
                }
            }
        };
        let mut rgb = vec![0u8; frames * self.n_mels * 3];
        for row in 0..self.n_mels {
            let band = if self.low_at_bottom { self.n_mels - 1 - row } else { row };
            for f in 0..frames {
                let p = pixel(mel[band * frames + f]);
                rgb[(row * frames + f) * 3..][..3].fill(p);
            }
        }
        Image { width: frames as u32, height: self.n_mels as u32, rgb }
    }

    /// An image → mel bands, band-major (`n_mels × width`).
    ///
    /// # Errors
    /// An image whose height is not `n_mels`.
    pub fn mel_from_image(&self, img: &Image) -> Result<Vec<f32>> {
        let (w, h) = (img.width as usize, img.height as usize);
        if h != self.n_mels || img.rgb.len() != w * h * 3 {
            return Err(Error::invalid(format!("spectrogram image {w}×{h}: expected {} rows (mel bands)", self.n_mels)));
        }
        let value = |p: f32| -> f32 {
            match self.pixels {
                PixelScale::Power { exponent, max_value } => ((255.0 - p) / 255.0).max(0.0).powf(1.0 / exponent) * max_value,
                PixelScale::Decibels { db_min, db_max } if p > 0.0 => 10f32.powf((db_min + p / 255.0 * (db_max - db_min)) / 10.0),
                PixelScale::Decibels { .. } => 0.0,
            }
        };
        let mut mel = vec![0f32; w * h];
        for row in 0..h {
            let band = if self.low_at_bottom { h - 1 - row } else { row };
            for f in 0..w {
                let px = &img.rgb[(row * w + f) * 3..][..3];
                let p = match self.channels {
                    Channels::Red => px[0] as f32,
                    Channels::Gray => (px[0] as f32 + px[1] as f32 + px[2] as f32) / 3.0,
                };
                mel[band * w + f] = value(p);
            }
        }
        Ok(mel)
    }

    /// Mel bands (band-major, `n_mels × frames`) → linear magnitudes, frame-major (`frames ×
    /// bins`): the filterbank's inverse chosen by [`Self::inverse`], then `^(1 / power)`.
    ///
    /// # Errors
    /// A filterbank that cannot be built or inverted.
    pub fn magnitude_from_mel(&self, mel: &[f32], frames: usize) -> Result<Vec<f32>> {
        let bank = self.mel_bank()?;
        let solve: FrameInverse<'_> = match self.inverse {
            MelInverse::LeastSquares => {
                let inv = bank.inverse()?;
                Box::new(move |m, o| inv.solve(m, o))
            }
            MelInverse::Nnls => {
                let nnls = bank.nnls()?;
                Box::new(move |m, o| {
                    let b: Vec<f64> = m.iter().map(|&v| v as f64).collect();
                    let mut x = vec![0f64; o.len()];
                    nnls.solve(&b, &mut x);
                    o.iter_mut().zip(x).for_each(|(o, v)| *o = v as f32);
                })
            }
        };
        let bins = bank.n_freqs;
        let mut out = vec![0f32; frames * bins];
        let mut col = vec![0f32; self.n_mels];
        for f in 0..frames {
            for (m, c) in col.iter_mut().enumerate() {
                *c = mel[m * frames + f];
            }
            let dst = &mut out[f * bins..(f + 1) * bins];
            solve(&col, dst);
            if self.power != 1.0 {
                dst.iter_mut().for_each(|v| *v = v.powf(1.0 / self.power));
            }
        }
        Ok(out)
    }

    /// A spectrogram image → audio: mel bands, linear magnitudes, Griffin-Lim from zero phase,
    /// `width · hop` samples, scaled to `peak`.
    ///
    /// # Errors
    /// An image of the wrong height or narrower than two frames.
    pub fn audio_from_image(&self, img: &Image) -> Result<Audio> {
        self.audio_from_image_checked(img, &|| false)
    }

    /// [`Self::audio_from_image`], asking `cancelled` before each Griffin-Lim iteration.
    ///
    /// # Errors
    /// As [`Self::audio_from_image`]; [`Error::Cancelled`] once `cancelled` says so.
    pub fn audio_from_image_checked(&self, img: &Image, cancelled: &dyn Fn() -> bool) -> Result<Audio> {
        let frames = img.width as usize;
        let mel = self.mel_from_image(img)?;
        let mag = self.magnitude_from_mel(&mel, frames)?;
        let stft = self.stft()?;
        let (iters, length) = (self.griffin_lim_iters, Some(frames * self.hop));
        let mut samples = stft::griffin_lim_checked(&stft, &mag, frames, iters, self.momentum, length, cancelled)?;
        let max = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        if self.peak > 0.0 && max > 0.0 {
            let g = self.peak / max;
            samples.iter_mut().for_each(|s| *s *= g);
        }
        Ok(Audio { sample_rate: self.sample_rate, samples })
    }

    /// Audio → a spectrogram image of `frames` columns (all frames when `None`).
    ///
    /// # Errors
    /// Audio at another sample rate, or too short.
    pub fn image_from_audio(&self, audio: &Audio, frames: Option<usize>) -> Result<Image> {
        if audio.sample_rate != self.sample_rate {
            return Err(Error::invalid(format!(
                "audio at {} Hz: this spectrogram expects {} Hz",
                audio.sample_rate, self.sample_rate
            )));
        }
        let (mel, frames) = self.mel_from_audio(&audio.samples, frames)?;
        Ok(self.image_from_mel(&mel, frames))
    }
}
