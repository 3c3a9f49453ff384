//! Which model a run uses: a path on disk or one of the embedded default models.

use std::fmt;
use std::path::PathBuf;

/// A model as the user names it: a path (file or diffusers folder) or `builtin:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelRef {
    /// A `.safetensors`/`.gguf`/`.ckpt`/`.pth` file or a diffusers folder.
    Path(PathBuf),
    /// An embedded default model under `models/`, e.g. `shapes` for `builtin:shapes`.
    Builtin(String),
}

impl ModelRef {
    /// Parses `builtin:NAME` or a path.
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("builtin:") {
            Some(name) => ModelRef::Builtin(name.to_string()),
            None => ModelRef::Path(PathBuf::from(s)),
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Path(p) => write!(f, "{}", p.display()),
            ModelRef::Builtin(n) => write!(f, "builtin:{n}"),
        }
    }
}

impl std::str::FromStr for ModelRef {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(s))
    }
}

/// Where the embedded default models are looked for, in order: `$HEADROOM_MODELS`; `models/`
/// under each of [`crate::paths::resource_roots`] (an override, an installed package, the folder
/// of the executable, the repository); the user's data directory.
pub fn builtin_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HEADROOM_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(crate::paths::resource_roots().into_iter().map(|root| root.join("models")));
    if let Some(data) = crate::paths::data_dir() {
        dirs.push(data.join("models"));
    }
    dirs
}

impl ModelRef {
    /// The file or folder to read: the path itself, or the embedded model's folder.
    ///
    /// # Errors
    /// A built-in model that is in none of [`builtin_search_dirs`]; a path that does not exist.
    pub fn resolve(&self) -> crate::Result<PathBuf> {
        match self {
            ModelRef::Path(p) if p.exists() => Ok(p.clone()),
            ModelRef::Path(p) => Err(crate::Error::file(p, "no such file or folder")),
            ModelRef::Builtin(name) => {
                let dirs = builtin_search_dirs();
                dirs.iter()
                    .map(|d| d.join(name))
                    .find(|d| d.join("model.toml").is_file() || d.join("model_index.json").is_file())
                    .ok_or_else(|| {
                        crate::Error::invalid(format!(
                            "builtin:{name}: not found in the {} model folders searched (first: {}); set HEADROOM_MODELS to the folder holding it",
                            dirs.len(),
                            dirs.first().map(|d| d.display().to_string()).unwrap_or_default()
                        ))
                    })
            }
        }
    }
}

impl ModelRef {
    /// A short name for people: the builtin's name, or the file or folder name.
    pub fn display_name(&self) -> String {
        match self {
            ModelRef::Builtin(n) => n.clone(),
            ModelRef::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
        }
    }
}

/// The model's identity: SHA-256 (hex) of a single file's bytes, or for a folder of every file
/// in it (relative path, length and bytes, in sorted order). A model that cannot be found is
/// `unknown` here; loading it reports why.
///
/// The digest is remembered in `fingerprints.json` in the data directory, keyed by the model's
/// canonical path and each of its files' (path, size, modification time), so loading a model a
/// second time reads none of its bytes to name it (see [`fingerprint_cached`]).
///
/// # Errors
/// A file that exists but cannot be read.
pub fn fingerprint(model: &ModelRef) -> crate::Result<String> {
    fingerprint_checked(model, &|| false)
}

/// [`fingerprint`], asking `cancelled` between chunks of [`HASH_CHUNK_BYTES`] while hashing.
///
/// # Errors
/// As [`fingerprint`]; [`crate::Error::Cancelled`] once `cancelled` says so.
pub fn fingerprint_checked(model: &ModelRef, cancelled: &dyn Fn() -> bool) -> crate::Result<String> {
    // Unit tests never write into the user's data directory.
    let cache = if cfg!(test) { None } else { crate::paths::data_dir().map(|d| d.join(FINGERPRINT_CACHE)) };
    fingerprint_cached_checked(model, cache.as_deref(), cancelled)
}

/// Bytes hashed between two cancel checks (a few milliseconds of SHA-256).
pub const HASH_CHUNK_BYTES: usize = 8 << 20;

/// The cache of model digests in the data directory.
pub const FINGERPRINT_CACHE: &str = "fingerprints.json";

/// [`fingerprint`] with the digest cache at `cache` (none when `None`). A cached digest is used
/// when every file of the model has the size and modification time it had when it was hashed;
/// files changed in the last two seconds are not cached (their time may not yet tell a later
/// change apart). The cache is a convenience: one that cannot be read or written is ignored.
///
/// # Errors
/// A file that exists but cannot be read.
pub fn fingerprint_cached(model: &ModelRef, cache: Option<&std::path::Path>) -> crate::Result<String> {
    fingerprint_cached_checked(model, cache, &|| false)
}

fn fingerprint_cached_checked(
    model: &ModelRef,
    cache: Option<&std::path::Path>,
    cancelled: &dyn Fn() -> bool,
) -> crate::Result<String> {
    let Ok(root) = model.resolve() else {
        return Ok("unknown".to_string());
    };
    let mut files = Vec::new();
    collect_files(&root, &mut files)?;
    files.sort();
    let stamps = stamps(&root, &files)?;
    let key = root.canonicalize().unwrap_or_else(|_| root.clone()).to_string_lossy().into_owned();
    let mut cached = cache.map(digest_cache::DigestCache::read).unwrap_or_default();
    if let Some(digest) = cached.get(&key, &stamps) {
        return Ok(digest);
    }
    let digest = hash_files(&root, &files, cancelled)?;
    if let Some(path) = cache
        && stamps.iter().all(|s| s.settled)
    {
        cached.put(key, stamps, digest.clone());
        if let Err(e) = cached.write(path) {
            log::warn!("model digest cache not saved: {e}");
        }
    }
    Ok(digest)
}

/// Each file's relative path, size and modification time.
fn stamps(root: &std::path::Path, files: &[PathBuf]) -> crate::Result<Vec<digest_cache::Stamp>> {
    let now = std::time::SystemTime::now();
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).map_err(|e| crate::Error::io(f, e))?;
            let modified = meta.modified().ok();
            let mtime_ns = modified
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            let settled = modified
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= std::time::Duration::from_secs(2));
            let rel = f.strip_prefix(root).unwrap_or(f).to_string_lossy().into_owned();
            Ok(digest_cache::Stamp { rel, size: meta.len(), mtime_ns, settled })
        })
        .collect()
}

/// Reads until `buf` is full or the reader ends; the bytes read.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The digest itself: a single file's bytes, or for a folder each file's relative path, a zero
/// byte, its length and its bytes, in the (sorted) order given.
fn hash_files(root: &std::path::Path, files: &[PathBuf], cancelled: &dyn Fn() -> bool) -> crate::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        if root.is_dir() {
            let rel = f.strip_prefix(root).unwrap_or(f);
            h.update(rel.to_string_lossy().as_bytes());
            h.update([0]);
        }
        let file = std::fs::File::open(f).map_err(|e| crate::Error::io(f, e))?;
        let len = file.metadata().map_err(|e| crate::Error::io(f, e))?.len();
        if root.is_dir() {
            h.update(len.to_le_bytes());
        }
        // read through a buffer, not a memory map: a map's pages would count in this process's
        // resident set until unmapped (the whole weight file, at the run's start)
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut chunk = vec![0u8; HASH_CHUNK_BYTES];
        loop {
            if cancelled() {
                return Err(crate::Error::Cancelled);
            }
            let n = read_full(&mut reader, &mut chunk).map_err(|e| crate::Error::io(f, e))?;
            h.update(&chunk[..n]);
            if n < chunk.len() {
                break;
            }
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

mod digest_cache {
    //! The model digest cache file: JSON `{version, entries: {canonical path: {files, sha256}}}`,
    //! written atomically, at most [`MAX_ENTRIES`] models (the least recently stored dropped).

    use std::path::Path;

    use serde::{Deserialize, Serialize};

    /// Models remembered.
    const MAX_ENTRIES: usize = 256;

    /// One file of a model as it was when hashed.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub(super) struct Stamp {
        /// Path relative to the model (empty for a single-file model).
        pub rel: String,
        pub size: u64,
        /// Modification time, nanoseconds since 1970.
        pub mtime_ns: u64,
        /// Old enough that a later change would show in the time; not stored.
        #[serde(skip)]
        pub settled: bool,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Entry {
        files: Vec<Stamp>,
        sha256: String,
        /// Order of storing, to drop the oldest.
        stored: u64,
    }

    /// The cache as read from disk.
    #[derive(Debug, Default, Serialize, Deserialize)]
    pub(super) struct DigestCache {
        version: u32,
        entries: std::collections::BTreeMap<String, Entry>,
    }

    impl DigestCache {
        /// The cache at `path`; empty when missing, unreadable or of another version.
        pub(super) fn read(path: &Path) -> Self {
            std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<DigestCache>(&b).ok())
                .filter(|c| c.version == 1)
                .unwrap_or_default()
        }

        /// The digest stored for `key` if its files are exactly `files` (names, sizes, times).
        pub(super) fn get(&self, key: &str, files: &[Stamp]) -> Option<String> {
            let same = |a: &Stamp, b: &Stamp| (&a.rel, a.size, a.mtime_ns) == (&b.rel, b.size, b.mtime_ns);
            self.entries
                .get(key)
                .filter(|e| e.files.len() == files.len() && e.files.iter().zip(files).all(|(a, b)| same(a, b)))
                .map(|e| e.sha256.clone())
        }

        /// Stores a digest, dropping the oldest entries past [`MAX_ENTRIES`].
        pub(super) fn put(&mut self, key: String, files: Vec<Stamp>, sha256: String) {
            let stored = self.entries.values().map(|e| e.stored + 1).max().unwrap_or(0);
            self.entries.insert(key, Entry { files, sha256, stored });
            while self.entries.len() > MAX_ENTRIES {
                let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.stored).map(|(k, _)| k.clone()) else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }

        /// Writes the cache atomically (creating its folder).
        ///
        /// # Errors
        /// The folder or the file cannot be written.
        pub(super) fn write(&mut self, path: &Path) -> crate::Result<()> {
            self.version = 1;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
            }
            let bytes = serde_json::to_vec(self).map_err(|e| crate::Error::file(path, e.to_string()))?;
            crate::fsutil::write_atomic(path, &bytes)
        }
    }
}

/// How deep a model folder may nest (diffusers folders are two levels deep; a Hugging Face cache
/// snapshot a few more).
const MAX_DEPTH: usize = 32;

/// Every file under `p` (or `p` itself), following symlinks as Hugging Face caches need, in
/// directory order.
///
/// # Errors
/// A folder that cannot be listed; a symlink that leads back into a folder it is inside (a
/// loop), or folders nested deeper than [`MAX_DEPTH`].
fn collect_files(p: &std::path::Path, out: &mut Vec<PathBuf>) -> crate::Result<()> {
    collect_under(p, out, &mut Vec::new())
}

/// [`collect_files`] with the canonical paths of the folders being listed (the current chain).
fn collect_under(p: &std::path::Path, out: &mut Vec<PathBuf>, chain: &mut Vec<PathBuf>) -> crate::Result<()> {
    if !p.is_dir() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let canonical = p.canonicalize().map_err(|e| crate::Error::io(p, e))?;
    if let Some(ancestor) = chain.iter().find(|a| **a == canonical) {
        return Err(crate::Error::file(
            p,
            format!("symlink loop: this folder leads back to {}, which contains it", ancestor.display()),
        ));
    }
    if chain.len() >= MAX_DEPTH {
        return Err(crate::Error::file(p, format!("folders nest more than {MAX_DEPTH} deep")));
    }
    chain.push(canonical);
    for e in std::fs::read_dir(p).map_err(|e| crate::Error::io(p, e))? {
        let e = e.map_err(|e| crate::Error::io(p, e))?;
        collect_under(&e.path(), out, chain)?;
    }
    chain.pop();
    Ok(())
}

/// Whether a model makes audio: its `model.toml` marks it a mel-spectrogram model (as
/// `builtin:melodies`, or a Riffusion folder given a two-line manifest).
pub fn makes_audio(model: &ModelRef) -> bool {
    model.resolve().ok().is_some_and(|dir| {
        matches!(crate::families::latent_diffusion::spectrogram::SpectrogramParams::from_manifest(&dir), Ok(Some(_)))
    })
}

/// The native output size (width, height) from a model's `model.toml`, if it has one;
/// requests that do not name a size use it. A spectrogram model without a size gives its
/// spectrogram's (native frames × mel bands: Riffusion's 512 × 512 by default).
pub fn native_size(model: &ModelRef) -> Option<(u32, u32)> {
    let dir = model.resolve().ok()?;
    let text = std::fs::read_to_string(dir.join("model.toml")).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let get = |k: &str| table.get(k)?.as_integer().and_then(|v| u32::try_from(v).ok());
    get("width").zip(get("height")).or_else(|| {
        let p = crate::families::latent_diffusion::spectrogram::SpectrogramParams::from_manifest(&dir).ok()??;
        Some((p.frames as u32, p.n_mels as u32))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink in a model folder that points back at the folder is a one-line error naming the
    /// link and the loop, not an endless walk; a symlink to a folder elsewhere is still followed.
    #[cfg(unix)]
    #[test]
    fn symlink_loop_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        let elsewhere = dir.path().join("blobs");
        std::fs::create_dir_all(model.join("unet")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("config.json"), b"{}").unwrap();
        std::fs::write(model.join("model_index.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(&elsewhere, model.join("vae")).unwrap();
        let m = ModelRef::Path(model.clone());
        let first = fingerprint(&m).unwrap();
        assert_eq!(first.len(), 64);
        std::os::unix::fs::symlink(&model, model.join("unet").join("again")).unwrap();
        let e = fingerprint(&m).unwrap_err().to_string();
        assert!(e.contains("symlink loop") && e.contains("again") && !e.contains('\n'), "{e}");
    }

    /// Sets a file's modification time to `secs` after 2000-01-01 (old enough to be cached).
    fn set_mtime(path: &std::path::Path, secs: u64) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800 + secs);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
    }

    /// A second fingerprint of a folder comes from the cache without reading file bytes (a file
    /// rewritten with the same size and time keeps the cached digest), while a changed time or
    /// size hashes again; the digest is the same one computed without a cache.
    #[test]
    fn fingerprint_cache_skips_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("unet")).unwrap();
        let weights = model.join("unet").join("w.safetensors");
        std::fs::write(model.join("model_index.json"), b"{}").unwrap();
        std::fs::write(&weights, b"abcdef").unwrap();
        for f in [&model.join("model_index.json"), &weights] {
            set_mtime(f, 1);
        }
        let cache = dir.path().join("data").join(FINGERPRINT_CACHE);
        let m = ModelRef::Path(model.clone());
        let first = fingerprint_cached(&m, Some(&cache)).unwrap();
        assert_eq!(first, fingerprint_cached(&m, None).unwrap(), "the cache does not change the digest");
        assert!(cache.is_file());

        std::fs::write(&weights, b"ABCDEF").unwrap();
        set_mtime(&weights, 1);
        let uncached = fingerprint_cached(&m, None).unwrap();
        assert_ne!(uncached, first);
        assert_eq!(fingerprint_cached(&m, Some(&cache)).unwrap(), first, "same size and time: bytes not read");

        set_mtime(&weights, 2);
        assert_eq!(fingerprint_cached(&m, Some(&cache)).unwrap(), uncached, "a new time hashes again");
        std::fs::write(&weights, b"ABCDEFG").unwrap();
        set_mtime(&weights, 2);
        assert_ne!(fingerprint_cached(&m, Some(&cache)).unwrap(), uncached, "a new size hashes again");
    }

    /// A single file's fingerprint is still the SHA-256 of its bytes (what existing profiles
    /// recorded), cached or not.
    #[test]
    fn single_file_fingerprint_is_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.safetensors");
        std::fs::write(&f, b"abc").unwrap();
        set_mtime(&f, 5);
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let cache = dir.path().join(FINGERPRINT_CACHE);
        for _ in 0..2 {
            assert_eq!(fingerprint_cached(&ModelRef::Path(f.clone()), Some(&cache)).unwrap(), abc);
        }
    }

    /// A cancel asked for while a file is hashed ends the hash with Error::Cancelled at the next
    /// chunk: after 2 of a 3-chunk file's chunks, not at its end.
    #[test]
    fn hashing_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        std::fs::write(&file, vec![7u8; 2 * HASH_CHUNK_BYTES + 1]).unwrap();
        let asked = std::cell::Cell::new(0);
        let cancelled = || {
            asked.set(asked.get() + 1);
            asked.get() > 2
        };
        let err = fingerprint_checked(&ModelRef::Path(file), &cancelled).unwrap_err();
        assert!(matches!(err, crate::Error::Cancelled), "{err}");
        assert_eq!(asked.get(), 3);
    }
}