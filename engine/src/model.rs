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
/// # Errors
/// A file that exists but cannot be read.
pub fn fingerprint(model: &ModelRef) -> crate::Result<String> {
    use sha2::{Digest, Sha256};
    let Ok(root) = model.resolve() else {
        return Ok("unknown".to_string());
    };
    let mut files = Vec::new();
    collect_files(&root, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        if root.is_dir() {
            let rel = f.strip_prefix(&root).unwrap_or(f);
            h.update(rel.to_string_lossy().as_bytes());
            h.update([0]);
        }
        let file = std::fs::File::open(f).map_err(|e| crate::Error::io(f, e))?;
        let len = file.metadata().map_err(|e| crate::Error::io(f, e))?.len();
        if root.is_dir() {
            h.update(len.to_le_bytes());
        }
        if len > 0 {
            // SAFETY: read-only map of a file we only read; a concurrent truncation is the
            // same hazard every mmap-based model loader accepts.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| crate::Error::io(f, e))?;
            h.update(&map[..]);
        }
    }
    Ok(format!("{:x}", h.finalize()))
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
}
