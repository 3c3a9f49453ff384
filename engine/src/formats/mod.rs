//! Model file readers: headers only (safetensors, diffusers folders, GGUF, PyTorch zip checkpoints),
//! and the inspect summary built from them.
//!
//! [`inspect`] is the one entry point: it recognises what a path is (by magic bytes first, then by
//! name), reads only headers (tensor names, dtypes, shapes, byte sizes, metadata) without loading
//! weights, splits the tensors into components (text encoder, UNet, VAE) and guesses the family.
//! Every reader treats the file as hostile: lengths and counts are checked against the file size
//! before anything is sliced or allocated, and a bad file gives one line naming it and the problem.

pub(crate) mod bin;
pub(crate) mod ckpt;
mod components;
pub(crate) mod diffusers;
pub mod ggml;
pub(crate) mod gguf;
mod guess;
mod inspect;
mod pickle;
pub(crate) mod safetensors;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod bad_input_tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

pub use ggml::{GGML_TYPES, GgmlType};
pub use inspect::tensor_bytes_at;
pub(crate) use bin::human_bytes;

/// The container a model came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One `.safetensors` file, or several shards of one model.
    Safetensors,
    /// A diffusers folder: `model_index.json` and one folder per component.
    Diffusers,
    /// A llama.cpp/ggml `.gguf` file.
    Gguf,
    /// A PyTorch zip checkpoint (`.ckpt`, `.pth`, `.pt`, `.bin`).
    Ckpt,
}

impl Format {
    /// The lowercase name used in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Diffusers => "diffusers",
            Format::Gguf => "gguf",
            Format::Ckpt => "ckpt",
        }
    }
}

/// What a model was inspected to be: format, family, components with their tensors, metadata.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// The path that was inspected, as given.
    pub path: PathBuf,
    /// The container format.
    pub format: Format,
    /// Which family the tensors look like, and why.
    pub family: FamilyGuess,
    /// One entry per component found: per subfolder of a diffusers folder; for a single file
    /// split by key prefix (`model.diffusion_model.*` → unet …), else one component `model`.
    pub components: Vec<ComponentInfo>,
    /// `__metadata__`, GGUF key/values (arrays summarized), or `model_index.json` entries.
    pub metadata: BTreeMap<String, String>,
    /// Things a person should know that did not stop the inspection.
    pub warnings: Vec<String>,
    /// The weight files that were read.
    pub files: Vec<PathBuf>,
}

/// A guess at the model family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilyGuess {
    /// `sd1`, `sd2`, `sdxl`, `llm:<arch>` or `unknown`.
    pub id: String,
    /// For people: "Stable Diffusion 1.x" ….
    pub label: String,
    /// Which evidence the guess rests on.
    pub reason: String,
}

/// One separately placed part of a model.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentInfo {
    /// `unet`, `vae`, `text_encoder`, `text_encoder_2`, `model` or another folder/prefix name.
    pub name: String,
    /// The knob component this part is, when it is one.
    pub component: Option<crate::knobs::Component>,
    /// Total elements of all its tensors.
    pub parameters: u64,
    /// Its tensors, in file order.
    pub tensors: Vec<TensorInfo>,
}

/// One tensor as its header describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    /// Full name in the file.
    pub name: String,
    /// `F32`, `F16`, `BF16`, `Q4_K` … or `unknown(N)` for a GGML type id Headroom does not know.
    pub dtype: String,
    /// Dimensions, outermost first (PyTorch order; GGUF's innermost-first order is reversed), so
    /// the last one is the row length.
    pub shape: Vec<u64>,
    /// Bytes stored in the file; `None` when the dtype's size is unknown.
    pub bytes: Option<u64>,
}

impl TensorInfo {
    /// Number of elements (product of the shape; 1 for a scalar). Saturates instead of overflowing.
    pub fn elements(&self) -> u64 {
        self.shape.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// What one reader found in a file (or a set of shards) before components and family are known.
pub(crate) struct Loaded {
    pub format: Format,
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    pub warnings: Vec<String>,
    pub files: Vec<PathBuf>,
}

/// Reads a model's headers and summarizes it: format, family guess, components, tensors, metadata.
///
/// `path` may be a `.safetensors` file (or one shard, or a `*.safetensors.index.json`), a diffusers
/// folder (or its `model_index.json`), a `.gguf`, or a PyTorch zip checkpoint (`.ckpt`, `.pth`,
/// `.pt`, `.bin`). Only headers are read; weights stay on disk.
///
/// # Errors
/// A missing or unreadable path, an unsupported format (including legacy non-zip PyTorch pickles),
/// or a malformed header: one line naming the file and the problem.
pub fn inspect(path: &Path) -> Result<Inspection> {
    inspect_any(path).map_err(one_line)
}

/// Longest problem text kept in an error (names from a hostile file can be huge).
const MAX_PROBLEM_CHARS: usize = 400;

/// Keeps a file error on one readable line: control characters from names inside the file
/// (a key with a newline) are escaped and very long problems are cut.
fn one_line(e: Error) -> Error {
    match e {
        Error::File { path, problem } => {
            let mut out = String::new();
            for (i, c) in problem.chars().enumerate() {
                if i == MAX_PROBLEM_CHARS {
                    out.push('…');
                    break;
                }
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            Error::File { path, problem: out }
        }
        other => other,
    }
}

/// [`inspect`] before its errors are made one line.
fn inspect_any(path: &Path) -> Result<Inspection> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return inspect_dir(path);
    }
    let name = file_name(path);
    if name == "model_index.json" {
        let dir = parent_dir(path);
        return diffusers::inspect_folder(path, &dir);
    }
    if name.ends_with(".index.json") {
        let loaded = safetensors::read_index(path)?;
        return Ok(finish(path, loaded));
    }
    let loaded = read_weight_file(path, true)?;
    Ok(finish(path, loaded))
}

/// Inspects a directory: a diffusers folder, a folder of shards, or a folder with one weight file.
fn inspect_dir(dir: &Path) -> Result<Inspection> {
    if dir.join("model_index.json").is_file() {
        return diffusers::inspect_folder(dir, dir);
    }
    if let Some(comp) = diffusers::component_weights(dir)? {
        return diffusers::inspect_component_folder(dir, comp);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut index = Vec::new();
    let mut weights = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        let n = file_name(&p);
        if n.ends_with(".safetensors.index.json") {
            index.push(p);
        } else if p.is_file() && is_weight_name(&n) {
            weights.push(p);
        }
    }
    index.sort();
    weights.sort();
    if let Some(idx) = index.first() {
        let loaded = safetensors::read_index(idx)?;
        return Ok(finish(dir, loaded));
    }
    if weights.iter().any(|w| safetensors::shard_pattern(&file_name(w)).is_some()) {
        let loaded = safetensors::read_shards_of(dir, &weights[0])?;
        return Ok(finish(dir, loaded));
    }
    match weights.as_slice() {
        [one] => Ok(finish(dir, read_weight_file(one, true)?)),
        [] => Err(Error::file(
            dir,
            "folder has no model_index.json, *.safetensors.index.json or weight file (.safetensors, .gguf, .ckpt, .pth, .pt, .bin)",
        )),
        many => Err(Error::file(
            dir,
            format!(
                "folder has {} weight files and no index saying how they belong together; inspect one file",
                many.len()
            ),
        )),
    }
}

/// True for the file names Headroom reads weights from.
fn is_weight_name(name: &str) -> bool {
    [".safetensors", ".gguf", ".ckpt", ".pth", ".pt", ".bin"].iter().any(|e| name.ends_with(e))
}

/// Reads one weight file, recognised by its first bytes (then by name). With `follow_shards`, a
/// file named like a shard (`*-00001-of-00003.safetensors`) brings its siblings in.
pub(crate) fn read_weight_file(path: &Path, follow_shards: bool) -> Result<Loaded> {
    let head = bin::read_head(path, 9)?;
    let kind = sniff(&head, &file_name(path));
    if follow_shards && kind == Kind::Safetensors && safetensors::shard_pattern(&file_name(path)).is_some() {
        return safetensors::read_shards_of(&parent_dir(path), path);
    }
    if let Some(refusal) = kind.refusal() {
        return Err(Error::file(path, refusal));
    }
    let map = bin::map(path)?;
    read_weight_bytes(&map, path, kind)
}

/// Inspects one model file already in memory, as [`inspect`] inspects a single file: `path` names
/// it in errors and its name breaks ties the first bytes leave open (`.gguf`, `.ckpt` …). Shards
/// and folders need the file system; this reads `bytes` alone.
///
/// # Errors
/// As [`inspect`]: an empty buffer, an unsupported format, or a malformed header — one line
/// naming `path` and the problem.
pub fn inspect_bytes(bytes: &[u8], path: &Path) -> Result<Inspection> {
    let kind = sniff(bytes, &file_name(path));
    let loaded = match kind.refusal() {
        Some(refusal) => Err(Error::file(path, refusal)),
        None => read_weight_bytes(bytes, path, kind),
    };
    loaded.map(|l| finish(path, l)).map_err(one_line)
}

/// What a weight file is, from its first bytes and then its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Empty,
    Gguf,
    Zip,
    LegacyPickle,
    NotZip,
    Safetensors,
}

impl Kind {
    /// The problem with a file of this kind, when it cannot be read at all.
    fn refusal(self) -> Option<&'static str> {
        match self {
            Kind::Empty => Some("empty file (0 bytes)"),
            Kind::LegacyPickle => Some(
                "legacy (non-zip) PyTorch pickle format is not supported; re-save it with torch.save \
                 from PyTorch ≥ 1.6 or convert it to .safetensors",
            ),
            Kind::NotZip => Some("not a PyTorch zip checkpoint (no zip signature at the start)"),
            Kind::Gguf | Kind::Zip | Kind::Safetensors => None,
        }
    }
}

/// Recognises a weight file by its first bytes (at least 9 of them when the file has them), then
/// by its name.
fn sniff(head: &[u8], name: &str) -> Kind {
    if head.is_empty() {
        return Kind::Empty;
    }
    if head.starts_with(b"GGUF") || head.starts_with(b"FUGG") {
        return Kind::Gguf;
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Kind::Zip;
    }
    // A legacy torch pickle starts with PROTO (0x80, 1..=5); a safetensors file whose header
    // length happens to start with 0x80 has its JSON `{` at byte 8.
    let json_at_8 = head.get(8) == Some(&b'{');
    if head[0] == 0x80 && head.get(1).is_some_and(|p| (1..=5).contains(p)) && !json_at_8 {
        return Kind::LegacyPickle;
    }
    if name.ends_with(".gguf") {
        return Kind::Gguf;
    }
    if [".ckpt", ".pth", ".pt", ".bin"].iter().any(|e| name.ends_with(e)) {
        return Kind::NotZip;
    }
    Kind::Safetensors
}

/// Reads the headers of one weight file's bytes, of a kind [`sniff`] accepted.
fn read_weight_bytes(bytes: &[u8], path: &Path, kind: Kind) -> Result<Loaded> {
    match kind {
        Kind::Gguf => gguf::parse(bytes, path),
        Kind::Zip => ckpt::read_bytes(bytes, path),
        _ => safetensors::read_bytes(bytes, path),
    }
}

/// Builds the inspection of a single file (or a set of shards): split, guess.
pub(crate) fn finish(path: &Path, loaded: Loaded) -> Inspection {
    let components = components::split(loaded.tensors);
    let family = guess::family(loaded.format, &components, &loaded.metadata);
    Inspection {
        path: path.to_path_buf(),
        format: loaded.format,
        family,
        components,
        metadata: loaded.metadata,
        warnings: loaded.warnings,
        files: loaded.files,
    }
}

/// The last path component as a string ("" if none).
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The folder a file is in (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
