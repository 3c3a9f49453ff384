//! Where a run's outputs go: the [`OutputSink`] seam between the worker and the file writers.
//!
//! [`FileSink`] writes each artifact as a PNG or WAV with the run's profile embedded, and the
//! profile itself as `<id>.toml` beside them. The profile's `result.sha256` is the hash of the
//! first output's content (pixels or samples, see [`crate::media::content_sha256`]), not of the
//! file, so that a rerun can be compared even though the embedded timings differ.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::protocol::Artifact;
use crate::error::{Error, Result};
use crate::profile::Profile;

/// Writes a finished run's artifacts and its profile.
pub trait OutputSink: Send {
    /// Writes every artifact (`out_dir/<id>-<i>.png` or `.wav`) and the profile
    /// (`out_dir/<id>.toml`), after filling in `profile.result`'s output and hash; returns the
    /// artifact paths in order and the profile path.
    ///
    /// # Errors
    /// The folder cannot be created or a file cannot be written.
    fn write(&mut self, artifacts: &[Artifact], profile: &mut Profile, out_dir: &Path) -> Result<(Vec<PathBuf>, PathBuf)>;
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

/// The real writer: PNG/WAV files with the profile embedded, and the profile as TOML, each
/// written atomically.
#[derive(Debug, Default)]
pub struct FileSink;

impl OutputSink for FileSink {
    fn write(&mut self, artifacts: &[Artifact], profile: &mut Profile, out_dir: &Path) -> Result<(Vec<PathBuf>, PathBuf)> {
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        let id = output_id(profile.request.seed, out_dir);
        let paths: Vec<PathBuf> = artifacts
            .iter()
            .enumerate()
            .map(|(i, a)| out_dir.join(format!("{id}-{i}.{}", if matches!(a, Artifact::Image(_)) { "png" } else { "wav" })))
            .collect();
        let result = profile.result.get_or_insert_with(Default::default);
        if let (Some(first), Some(path)) = (artifacts.first(), paths.first()) {
            result.output = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            result.sha256 = crate::media::content_sha256(first);
        }
        for (artifact, path) in artifacts.iter().zip(&paths) {
            match artifact {
                Artifact::Image(img) => crate::media::write_png(path, img, Some(profile))?,
                Artifact::Audio(audio) => crate::media::write_wav(path, audio, Some(profile))?,
            }
        }
        let profile_path = out_dir.join(format!("{id}.toml"));
        profile.save(&profile_path)?;
        Ok((paths, profile_path))
    }
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
