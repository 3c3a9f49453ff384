//! PyTorch zip checkpoints (`.ckpt`, `.pth`, `.pt`, `.bin` from `torch.save`): the archive's
//! `<name>/data.pkl` is read with our own [`super::pickle`] reader (which runs nothing), nested
//! dicts are flattened into tensor names (a `{"state_dict": …}` wrapper is unwrapped), and each
//! tensor is checked against its storage entry `<name>/data/<key>` in the archive.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use super::pickle::{self, Heap, Value};
use super::{Format, Loaded, TensorInfo};
use crate::error::{Error, Result};

/// Largest `data.pkl` accepted (real ones are a few MiB even for large models).
const MAX_PICKLE_BYTES: u64 = 512 * 1024 * 1024;
/// Deepest dict nesting followed when flattening.
const MAX_DEPTH: usize = 32;
/// Most values visited when flattening (guards against shared sub-dicts multiplying).
const MAX_VISITS: usize = 5_000_000;
/// Top-level keys whose dict is the model's state dict (names below it are kept unprefixed).
const WRAPPERS: &[&str] = &["state_dict", "model_state_dict", "state_dict_ema", "module", "params_ema", "params"];

/// Reads the tensor names, dtypes and shapes of a PyTorch zip checkpoint's bytes (`path` names
/// it in errors).
pub(crate) fn read_bytes(buf: &[u8], path: &Path) -> Result<Loaded> {
    let (located, metadata, warnings) = locate_in(std::io::Cursor::new(buf), path)?;
    let tensors = located
        .into_iter()
        .map(|t| {
            let bytes = t.elements() * t.elem_bytes;
            TensorInfo { name: t.name, dtype: t.dtype.to_string(), shape: t.shape, bytes: Some(bytes) }
        })
        .collect();
    Ok(Loaded { format: Format::Ckpt, tensors, metadata, warnings, files: vec![path.to_path_buf()] })
}

/// Where one tensor's elements are inside a checkpoint archive.
#[derive(Clone, Debug)]
pub(crate) struct CkptTensor {
    /// The flattened state-dict name.
    pub name: String,
    /// safetensors-style dtype name (`F32`, `F16`, `BF16`, …).
    pub dtype: &'static str,
    /// Bytes per element.
    pub elem_bytes: u64,
    pub shape: Vec<u64>,
    /// Strides in elements.
    pub stride: Vec<u64>,
    /// First element's offset in its storage, in elements.
    pub offset: u64,
    /// The archive entry holding the storage.
    pub entry: String,
}

impl CkptTensor {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Whether the elements are laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1u64;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }
}

/// Reads one tensor's bytes (row-major, as stored) from an open archive.
///
/// # Errors
/// A missing entry, a short read, or a non-contiguous tensor (a view torch saved with strides).
pub(crate) fn read_tensor_bytes(zip: &mut zip::ZipArchive<File>, path: &Path, t: &CkptTensor) -> Result<Vec<u8>> {
    if !t.is_contiguous() {
        return Err(Error::file(
            path,
            format!("tensor '{}' is a strided view (shape {:?}, stride {:?}); save the checkpoint with contiguous tensors", t.name, t.shape, t.stride),
        ));
    }
    let mut entry = zip.by_name(&t.entry).map_err(|e| Error::file(path, format!("{}: {e}", t.entry)))?;
    let skip = t.offset * t.elem_bytes;
    std::io::copy(&mut (&mut entry).take(skip), &mut std::io::sink()).map_err(|e| Error::io(path, e))?;
    let n = (t.elements() * t.elem_bytes) as usize;
    let mut buf = vec![0u8; n];
    entry.read_exact(&mut buf).map_err(|e| Error::file(path, format!("tensor '{}': {e}", t.name)))?;
    Ok(buf)
}

/// Opens a checkpoint archive for [`read_tensor_bytes`].
///
/// # Errors
/// An unreadable file or one that is not a zip archive.
pub(crate) fn open_archive(path: &Path) -> Result<zip::ZipArchive<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    zip::ZipArchive::new(file).map_err(|e| Error::file(path, format!("not a readable zip archive: {e}")))
}

type Located = (Vec<CkptTensor>, BTreeMap<String, String>, Vec<String>);

/// Reads a PyTorch zip checkpoint's tensors with where their bytes are, plus scalar metadata and
/// warnings.
pub(crate) fn locate(path: &Path) -> Result<Located> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    locate_in(file, path)
}

/// [`locate`] in an archive read from `reader` (`path` names it in errors).
fn locate_in<R: Read + Seek>(reader: R, path: &Path) -> Result<Located> {
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| Error::file(path, format!("not a readable zip archive: {e}")))?;
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut pkl: Option<String> = None;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| Error::file(path, format!("zip entry {i}: {e}")))?;
        let name = entry.name().to_string();
        if name.ends_with("/data.pkl") && name.matches('/').count() == 1 || name == "data.pkl" {
            pkl.get_or_insert_with(|| name.clone());
        }
        sizes.insert(name, entry.size());
    }
    let pkl = pkl.ok_or_else(|| {
        Error::file(path, "zip archive has no <name>/data.pkl, so it is not a torch.save checkpoint")
    })?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
    let size = sizes.get(&pkl).copied().unwrap_or(0);
    if size > MAX_PICKLE_BYTES {
        return Err(Error::file(path, format!("{pkl} is {size} bytes; more than 512 MiB is not a plausible header")));
    }
    let mut buf = Vec::new();
    zip.by_name(&pkl)
        .map_err(|e| Error::file(path, format!("{pkl}: {e}")))?
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| Error::file(path, format!("{pkl}: {e}")))?;
    let un = pickle::load(&buf, path)?;
    let mut flat = Flattener { heap: &un.heap, out: Vec::new(), visits: 0 };
    let mut metadata = BTreeMap::new();
    let mut warnings = Vec::new();
    let Value::Dict(root) = un.root else {
        if let Value::Tensor(t) = un.root {
            flat.out.push(("tensor".into(), t));
            return finish(path, &prefix, &sizes, &un.heap, flat.out, metadata, warnings);
        }
        return Err(Error::file(path, "the checkpoint holds no dict of tensors"));
    };
    let entries = &un.heap.dicts[root];
    let wrapper = entries.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Dict(d)) if WRAPPERS.contains(&&**k) => Some((k.to_string(), *d)),
        _ => None,
    });
    let mut ignored = Vec::new();
    for (k, v) in entries {
        let Some(key) = key_name(k) else { continue };
        if let Some(s) = scalar(v) {
            metadata.insert(key, s);
        } else if let Some((w, _)) = &wrapper
            && *w != key
        {
            ignored.push(key);
        }
    }
    match wrapper {
        Some((w, d)) => {
            metadata.insert("checkpoint.state_dict_key".into(), w);
            flat.walk(&Value::Dict(d), String::new(), 0, path)?;
        }
        None => flat.walk(&Value::Dict(root), String::new(), 0, path)?,
    }
    if !ignored.is_empty() {
        warnings.push(format!("ignored top-level checkpoint entries: {}", ignored.join(", ")));
    }
    finish(path, &prefix, &sizes, &un.heap, flat.out, metadata, warnings)
}

/// Checks each tensor against its storage and says where it is.
fn finish(
    path: &Path,
    prefix: &str,
    sizes: &HashMap<String, u64>,
    heap: &Heap,
    named: Vec<(String, usize)>,
    metadata: BTreeMap<String, String>,
    warnings: Vec<String>,
) -> Result<Located> {
    let mut tensors = Vec::new();
    for (name, t) in named {
        let t = &heap.tensors[t];
        let s = &heap.storages[t.storage];
        let bad = |p: String| Error::file(path, format!("tensor '{name}': {p}"));
        let entry = format!("{prefix}data/{}", s.key);
        let stored = sizes.get(&entry).copied().ok_or_else(|| bad(format!("storage {entry} is missing from the archive")))?;
        let storage_bytes = s.numel.checked_mul(s.elem_bytes).ok_or_else(|| bad("storage size overflows".into()))?;
        if stored < storage_bytes {
            return Err(bad(format!("storage {entry} has {stored} bytes, {storage_bytes} expected")));
        }
        let elements = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("too many elements".into()))?;
        if elements > 0 {
            let last = t
                .shape
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset, |a, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| a.checked_add(x)));
            match last {
                Some(last) if last < s.numel => {}
                _ => return Err(bad(format!("shape {:?} at offset {} reaches past its storage of {} elements", t.shape, t.offset, s.numel))),
            }
        }
        elements.checked_mul(s.elem_bytes).ok_or_else(|| bad("size overflows".into()))?;
        tensors.push(CkptTensor {
            name,
            dtype: s.dtype,
            elem_bytes: s.elem_bytes,
            shape: t.shape.clone(),
            stride: t.stride.clone(),
            offset: t.offset,
            entry,
        });
    }
    Ok((tensors, metadata, warnings))
}

/// A dict key as a name part.
fn key_name(k: &Value) -> Option<String> {
    match k {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A scalar value as metadata text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::Int(n) => Some(n.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Walks dicts and sequences, naming tensors by their `.`-joined keys.
struct Flattener<'h> {
    heap: &'h Heap,
    out: Vec<(String, usize)>,
    visits: usize,
}

impl Flattener<'_> {
    fn walk(&mut self, v: &Value, prefix: String, depth: usize, path: &Path) -> Result<()> {
        self.visits += 1;
        if self.visits > MAX_VISITS || depth > MAX_DEPTH {
            return Err(Error::file(path, "checkpoint structure is too deep or too large to be a state dict"));
        }
        let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        match v {
            Value::Tensor(t) => self.out.push((prefix, *t)),
            Value::Dict(d) => {
                for (k, v) in &self.heap.dicts[*d] {
                    if let Some(k) = key_name(k) {
                        self.walk(v, join(&k), depth + 1, path)?;
                    }
                }
            }
            Value::List(s) | Value::Tuple(s) => {
                for (i, v) in self.heap.seqs[*s].iter().enumerate() {
                    self.walk(v, join(&i.to_string()), depth + 1, path)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
