//! Where a run's outputs go: the [`OutputSink`] seam between the worker and the file writers.
//!
//! [`InterimSink`] is a stand-in until `media`'s PNG/WAV writers (with the profile embedded) and
//! `profile::Profile` are connected: it writes plain PNG and WAV files and a small TOML record
//! of the run. Replace it by passing the real sink to [`super::Engine::spawn_with_sink`] (or by
//! making it the default there); nothing else in the worker needs to change.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::protocol::Artifact;
use crate::error::{Error, Result};
use crate::knobs::Knobs;
use crate::model::ModelRef;
use crate::request::Request;
use crate::telemetry::RunTelemetry;

/// Writes a finished run's artifacts and its profile.
pub trait OutputSink: Send {
    /// Writes every artifact (`out_dir/<id>-<i>.png` or `.wav`) and the profile
    /// (`out_dir/<id>.toml`); returns the artifact paths in order and the profile path.
    ///
    /// # Errors
    /// The folder cannot be created or a file cannot be written.
    fn write(
        &mut self,
        artifacts: &[Artifact],
        request: &Request,
        knobs: &Knobs,
        model: &ModelRef,
        telemetry: &RunTelemetry,
        out_dir: &Path,
    ) -> Result<(Vec<PathBuf>, PathBuf)>;
}

/// A run's file name stem: UTC time and seed, `20261123-104856-s42`, with `-2`, `-3`, … added
/// when files with that stem already exist in `out_dir`.
pub fn output_id(seed: u64, out_dir: &Path) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let base = format!("{y:04}{mo:02}{d:02}-{:02}{:02}{:02}-s{seed}", s / 3600, s / 60 % 60, s % 60);
    let taken = |id: &str| {
        out_dir.join(format!("{id}.toml")).exists()
            || ["png", "wav"].iter().any(|ext| out_dir.join(format!("{id}-0.{ext}")).exists())
    };
    let mut id = base.clone();
    let mut n = 2;
    while taken(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// Interim writer (to be replaced by `media` + `profile`): plain PNG/WAV, no embedded profile,
/// and a TOML record with the request, knobs, model and telemetry.
#[derive(Debug, Default)]
pub struct InterimSink;

/// What [`InterimSink`] records next to the outputs.
#[derive(Serialize)]
struct InterimRecord<'a> {
    version: u32,
    model: String,
    request: &'a Request,
    knobs: &'a Knobs,
    outputs: Vec<String>,
    result: &'a RunTelemetry,
}

impl OutputSink for InterimSink {
    fn write(
        &mut self,
        artifacts: &[Artifact],
        request: &Request,
        knobs: &Knobs,
        model: &ModelRef,
        telemetry: &RunTelemetry,
        out_dir: &Path,
    ) -> Result<(Vec<PathBuf>, PathBuf)> {
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        let id = output_id(request.seed, out_dir);
        let mut paths = Vec::with_capacity(artifacts.len());
        for (i, artifact) in artifacts.iter().enumerate() {
            let path = match artifact {
                Artifact::Image(img) => {
                    let path = out_dir.join(format!("{id}-{i}.png"));
                    write_plain_png(&path, img)?;
                    path
                }
                Artifact::Audio(audio) => {
                    let path = out_dir.join(format!("{id}-{i}.wav"));
                    write_plain_wav(&path, audio)?;
                    path
                }
            };
            paths.push(path);
        }
        let record = InterimRecord {
            version: 1,
            model: model.to_string(),
            request,
            knobs,
            outputs: paths.iter().map(|p| p.display().to_string()).collect(),
            result: telemetry,
        };
        let profile_path = out_dir.join(format!("{id}.toml"));
        let text = toml::to_string(&record)
            .map_err(|e| Error::file(&profile_path, format!("cannot write the run record: {e}")))?;
        std::fs::write(&profile_path, text).map_err(|e| Error::io(&profile_path, e))?;
        Ok((paths, profile_path))
    }
}

fn write_plain_png(path: &Path, img: &crate::media::Image) -> Result<()> {
    if img.rgb.len() != img.width as usize * img.height as usize * 3 {
        return Err(Error::file(
            path,
            format!("image is {}×{} but has {} bytes", img.width, img.height, img.rgb.len()),
        ));
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), img.width, img.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| Error::file(path, e.to_string()))?;
    w.write_image_data(&img.rgb).map_err(|e| Error::file(path, e.to_string()))?;
    w.finish().map_err(|e| Error::file(path, e.to_string()))
}

fn write_plain_wav(path: &Path, audio: &crate::media::Audio) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: audio.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let err = |e: hound::Error| Error::file(path, e.to_string());
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    for &s in &audio.samples {
        w.write_sample((s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16).map_err(err)?;
    }
    w.finalize().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known days map to the right calendar dates.
    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    /// A second id in the same folder and second does not reuse the first's files.
    #[test]
    fn ids_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let a = output_id(7, dir.path());
        assert!(a.ends_with("-s7"), "{a}");
        std::fs::write(dir.path().join(format!("{a}.toml")), "").unwrap();
        let b = output_id(7, dir.path());
        assert_ne!(a, b);
    }
}
