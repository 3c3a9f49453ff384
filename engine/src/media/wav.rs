//! WAV outputs: mono PCM (16-bit integer or 32-bit float) with the run's profile in a RIFF chunk
//! named `hdrm` after the samples. Players skip chunks they do not know; hound cannot write one,
//! so the chunk is appended here and the RIFF size fixed.

use std::io::Cursor;
use std::path::Path;

use super::Audio;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::profile::Profile;

/// The RIFF chunk id holding the profile TOML.
pub const PROFILE_CHUNK: [u8; 4] = *b"hdrm";

/// How samples are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WavFormat {
    /// 16-bit integer PCM, which every player reads.
    #[default]
    Int16,
    /// 32-bit IEEE float, lossless for the engine's samples.
    Float32,
}

/// True if `bytes` start like a RIFF/WAVE file.
pub fn is_wav(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE"
}

/// Writes `audio` as 16-bit PCM, atomically, with `profile` embedded if given.
///
/// # Errors
/// A sample rate of 0, or the file cannot be written.
pub fn write_wav(path: &Path, audio: &Audio, profile: Option<&Profile>) -> Result<()> {
    write_wav_as(path, audio, WavFormat::Int16, profile)
}

/// As [`write_wav`], choosing the sample format.
///
/// # Errors
/// As [`write_wav`].
pub fn write_wav_as(path: &Path, audio: &Audio, format: WavFormat, profile: Option<&Profile>) -> Result<()> {
    let bytes = encode_wav(audio, format, profile).map_err(|e| Error::file(path, e))?;
    write_atomic(path, &bytes)
}

/// The bytes of a WAV file for `audio`, with the profile chunk if given.
///
/// # Errors
/// A one-line problem from the encoder (e.g. a sample rate of 0).
pub fn encode_wav(audio: &Audio, format: WavFormat, profile: Option<&Profile>) -> std::result::Result<Vec<u8>, String> {
    if audio.sample_rate == 0 {
        return Err("sample rate is 0".into());
    }
    let (bits, sample_format) = match format {
        WavFormat::Int16 => (16, hound::SampleFormat::Int),
        WavFormat::Float32 => (32, hound::SampleFormat::Float),
    };
    let spec = hound::WavSpec { channels: 1, sample_rate: audio.sample_rate, bits_per_sample: bits, sample_format };
    let mut buf = Vec::new();
    {
        let mut w = hound::WavWriter::new(Cursor::new(&mut buf), spec).map_err(|e| e.to_string())?;
        for &s in &audio.samples {
            let r = match format {
                // The same scale as reading (2^15), so a round trip is within half a step.
                WavFormat::Int16 => w.write_sample((s * 32768.0).round().clamp(-32768.0, 32767.0) as i16),
                WavFormat::Float32 => w.write_sample(s),
            };
            r.map_err(|e| e.to_string())?;
        }
        w.finalize().map_err(|e| e.to_string())?;
    }
    if let Some(p) = profile {
        let text = p.to_toml_string();
        let len = u32::try_from(text.len()).map_err(|_| "profile too large for a RIFF chunk")?;
        buf.extend_from_slice(&PROFILE_CHUNK);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(text.as_bytes());
        if text.len() % 2 == 1 {
            buf.push(0); // RIFF chunks are padded to an even length
        }
        let riff = u32::try_from(buf.len() - 8).map_err(|_| "audio too long for a WAV file")?;
        buf[4..8].copy_from_slice(&riff.to_le_bytes());
    }
    Ok(buf)
}

/// Sample rates a WAV may have to be read: every real recording is within this range, and a rate
/// outside it would make playback resample a small file into gigabytes (1 Hz to 48 kHz is ×48000).
pub const SAMPLE_RATES_HZ: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// Reads a WAV file as mono f32 samples (channels are averaged; integer samples scaled to
/// [-1, 1)) with the embedded profile, if any.
///
/// # Errors
/// The file cannot be read, is not a WAV, has a truncated chunk, an unreadable profile chunk,
/// samples hound cannot read, a sample rate outside [`SAMPLE_RATES_HZ`], or a data chunk that
/// claims more bytes than the file has.
pub fn read_wav(path: &Path) -> Result<(Audio, Option<Profile>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_wav_bytes(&bytes, path)
}

/// [`read_wav`] of a WAV's bytes (read from `path`, which errors name).
///
/// # Errors
/// As [`read_wav`].
pub fn read_wav_bytes(bytes: &[u8], path: &Path) -> Result<(Audio, Option<Profile>)> {
    let profile = read_profile_bytes(bytes, path)?;
    let bad = |e: hound::Error| Error::file(path, format!("not a readable WAV: {e}"));
    let mut reader = hound::WavReader::new(Cursor::new(bytes)).map_err(bad)?;
    let spec = reader.spec();
    if !SAMPLE_RATES_HZ.contains(&spec.sample_rate) {
        return Err(Error::file(
            path,
            format!(
                "WAV sample rate {} Hz is outside {}–{} Hz",
                spec.sample_rate,
                SAMPLE_RATES_HZ.start(),
                SAMPLE_RATES_HZ.end()
            ),
        ));
    }
    // hound trusts the data chunk's length; check it against the file before reading samples.
    let claimed = u64::from(reader.len()) * u64::from(spec.bits_per_sample.div_ceil(8));
    if claimed > bytes.len() as u64 {
        return Err(Error::file(
            path,
            format!("WAV data chunk claims {claimed} bytes of samples, the file has {}", bytes.len()),
        ));
    }
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<std::result::Result<_, _>>().map_err(bad)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<std::result::Result<_, _>>()
                .map_err(bad)?
        }
    };
    let samples = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32)
        .collect();
    Ok((Audio { sample_rate: spec.sample_rate, samples }, profile))
}

/// The profile in the `hdrm` chunk of WAV `bytes`, after checking every chunk fits in the file.
///
/// # Errors
/// Not a RIFF/WAVE file, a truncated chunk, or a profile chunk that is not UTF-8 or not a valid
/// profile.
pub fn read_profile_bytes(bytes: &[u8], path: &Path) -> Result<Option<Profile>> {
    if !is_wav(bytes) {
        return Err(Error::file(path, "not a WAV file (no RIFF/WAVE header)"));
    }
    let mut pos = 12;
    let mut found = None;
    while pos < bytes.len() {
        let left = bytes.len() - pos;
        if left < 8 {
            return Err(Error::file(path, format!("WAV is truncated: {left} stray bytes at byte {pos}")));
        }
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]) as usize;
        if len > left - 8 {
            return Err(Error::file(
                path,
                format!(
                    "WAV is truncated: chunk '{}' at byte {pos} declares {len} bytes, {} left",
                    String::from_utf8_lossy(id),
                    left - 8
                ),
            ));
        }
        if id == PROFILE_CHUNK {
            found = Some(&bytes[pos + 8..pos + 8 + len]);
        }
        pos += 8 + len + (len % 2);
    }
    let Some(raw) = found else { return Ok(None) };
    let text = std::str::from_utf8(raw)
        .map_err(|_| Error::file(path, "the Headroom profile chunk (hdrm) is not UTF-8 text"))?;
    Profile::from_toml_str(text, path).map(Some)
}
