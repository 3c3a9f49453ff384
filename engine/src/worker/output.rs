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
/// when files with that stem already exist in `out_dir`. Only a guess: [`reserve_output_id`]
/// is what claims one.
pub fn output_id(seed: u64, out_dir: &Path) -> String {
    let base = id_base(seed);
    let mut id = base.clone();
    let mut n = 2;
    while taken(&id, out_dir) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// `20261123-104856-s42` for now and `seed`.
fn id_base(seed: u64) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{y:04}{mo:02}{d:02}-{:02}{:02}{:02}-s{seed}", s / 3600, s / 60 % 60, s % 60)
}

/// True when files with stem `id` exist in `out_dir`.
fn taken(id: &str, out_dir: &Path) -> bool {
    out_dir.join(format!("{id}.toml")).exists()
        || ["png", "wav"].iter().any(|ext| out_dir.join(format!("{id}-0.{ext}")).exists())
}

/// Claims a fresh id in `out_dir` atomically: `<id>.toml` is created with `create_new` (O_EXCL),
/// so of two writers (threads or processes) racing for the same stem only one gets it and the
/// other moves on to `-2`, `-3`, …. The empty profile file is the claim; the caller replaces it
/// (atomically) with the profile, or removes it on failure.
///
/// # Errors
/// The folder cannot be written.
pub fn reserve_output_id(seed: u64, out_dir: &Path) -> Result<String> {
    let base = id_base(seed);
    for n in 1u32.. {
        let id = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        if ["png", "wav"].iter().any(|ext| out_dir.join(format!("{id}-0.{ext}")).exists()) {
            continue;
        }
        let claim = out_dir.join(format!("{id}.toml"));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&claim) {
            Ok(_) => return Ok(id),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&claim, e)),
        }
    }
    Err(Error::file(out_dir, format!("no free output name for {base}")))
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
        let id = reserve_output_id(profile.request.seed, out_dir)?;
        let profile_path = out_dir.join(format!("{id}.toml"));
        let written = write_run(artifacts, profile, out_dir, &id, &profile_path);
        if written.is_err() {
            // Give the claim back: an empty profile would read as a damaged run.
            let _ = std::fs::remove_file(&profile_path);
        }
        written
    }
}

/// Writes a run's artifacts and then its profile over the claimed `profile_path`.
fn write_run(
    artifacts: &[Artifact],
    profile: &mut Profile,
    out_dir: &Path,
    id: &str,
    profile_path: &Path,
) -> Result<(Vec<PathBuf>, PathBuf)> {
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
    result.outputs_sha256 = artifacts.iter().map(crate::media::content_sha256).collect();
    for (artifact, path) in artifacts.iter().zip(&paths) {
        match artifact {
            Artifact::Image(img) => crate::media::write_png(path, img, Some(profile))?,
            Artifact::Audio(audio) => crate::media::write_wav(path, audio, Some(profile))?,
        }
    }
    profile.save(profile_path)?;
    Ok((paths, profile_path.to_path_buf()))
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

    /// Every output of a batch has its content hash recorded in the profile, in order, and the
    /// first is still `result.sha256`.
    #[test]
    fn batch_outputs_are_all_hashed() {
        use crate::knobs::Knobs;
        use crate::media::Image;
        use crate::profile::{ModelInfo, Profile};
        let dir = tempfile::tempdir().unwrap();
        let mut profile = Profile::new(ModelInfo::default(), crate::Request::default(), Knobs::default());
        let artifacts: Vec<Artifact> =
            (0..3u8).map(|i| Artifact::Image(Image { width: 8, height: 8, rgb: vec![i; 192] })).collect();
        FileSink.write(&artifacts, &mut profile, dir.path()).unwrap();
        let result = profile.result.unwrap();
        let want: Vec<String> = artifacts.iter().map(crate::media::content_sha256).collect();
        assert_eq!(result.outputs_sha256, want);
        assert_eq!(result.sha256, want[0]);
    }

    /// Sinks racing to write the same seed into one folder in the same second each get their own
    /// id: every run's profile and image survive, none overwritten.
    #[test]
    fn racing_sinks_never_share_an_id() {
        use crate::knobs::Knobs;
        use crate::media::Image;
        use crate::profile::{ModelInfo, Profile};
        let dir = tempfile::tempdir().unwrap();
        let writers = 8;
        let barrier = std::sync::Barrier::new(writers);
        let written: Vec<(Vec<PathBuf>, PathBuf)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|i| {
                    let (barrier, dir) = (&barrier, dir.path());
                    scope.spawn(move || {
                        let model = ModelInfo { source: "m".into(), sha256: "0".into(), family: "f".into(), name: format!("run{i}"), ..ModelInfo::default() };
                        let mut profile = Profile::new(model, crate::Request::default(), Knobs::default());
                        let image = Image { width: 8, height: 8, rgb: vec![i as u8; 192] };
                        barrier.wait();
                        FileSink.write(&[Artifact::Image(image)], &mut profile, dir).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ids: Vec<_> = written.iter().map(|(_, p)| p.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), writers, "{ids:?}");
        for (i, (outputs, profile)) in written.iter().enumerate() {
            let p = Profile::load(profile).unwrap();
            assert_eq!(p.model.name, format!("run{i}"));
            let (img, _) = crate::media::read_png(&outputs[0]).unwrap();
            assert_eq!(img.rgb[0], i as u8, "{}", outputs[0].display());
        }
    }
}
