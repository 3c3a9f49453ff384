//! [`MappedGguf`]: a memory-mapped `.gguf` file (stable-diffusion.cpp's, ComfyUI-GGUF's) whose
//! tensors are read one at a time, either as stored ([`MappedGguf::stored`]: GGML blocks become a
//! candle `QTensor` from the file's own bytes, f32/f16/bf16 a dense tensor of that dtype) or as
//! numbers ([`MappedGguf::dense`]: blocks expanded to f32, for a precision knob that converts).
//! As in [`super::mapped`], each tensor's pages are released once copied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use super::weights::StoredWeight;
use crate::error::Result;
use crate::formats::GgmlType;

/// Where one tensor lies and how it is stored.
#[derive(Clone, Debug)]
pub struct GgufEntry {
    /// The file's type (ggml's table), for messages.
    pub ggml: Option<GgmlType>,
    /// GGUF's type id.
    pub type_id: u32,
    /// Dimensions, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl GgufEntry {
    /// ggml's name of the stored type (`Q4_K`, `F16`; `type N` when unknown).
    pub fn type_name(&self) -> String {
        self.ggml.map_or_else(|| format!("type {}", self.type_id), |t| t.name.to_string())
    }

    /// candle's type for it, when this engine runs it (f32, f16, bf16 and the block types whose
    /// f32 expansion exists: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K).
    pub fn runnable(&self) -> Option<GgmlDType> {
        runnable_type(self.type_id)
    }

    /// Elements of the tensor.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// candle's type for GGUF type id `id`, when this engine runs it as a weight (see
/// [`GgufEntry::runnable`]).
pub fn runnable_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        30 => GgmlDType::BF16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        _ => return None,
    })
}

/// Whether a tensor of this stored type name (`Q4_K`, `IQ2_XXS`, `I32` …, as inspect names
/// them) can be run as a weight; integer tensors (ids, never weights) are let through, the
/// layers never read them.
pub fn runnable_type_name(name: &str) -> bool {
    match GgmlType::from_name(name) {
        Some(t) if matches!(t.name, "I8" | "I16" | "I32" | "I64") => true,
        Some(t) => runnable_type(t.id).is_some(),
        None => false,
    }
}

/// The types [`GgufEntry::runnable`] accepts, for messages.
pub const RUNNABLE_TYPES: &str = "F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, Q6_K, Q5_K, Q4_K, Q3_K, Q2_K";

/// A mapped GGUF file.
pub struct MappedGguf {
    path: PathBuf,
    map: Mmap,
    entries: HashMap<String, GgufEntry>,
    /// Tensors ComfyUI-GGUF's converter stored reshaped to rows of 256 (their shape before is in
    /// `comfy.gguf.orig_shape.NAME`).
    reshaped: std::collections::BTreeSet<String>,
}

impl MappedGguf {
    /// Maps `path` and reads its header (every tensor's range checked against the file).
    ///
    /// # Errors
    /// An unreadable file or a malformed GGUF header, naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let map = crate::formats::bin::map(path)?;
        let (loaded, data) = crate::formats::gguf::parse_with_data(&map, path)?;
        let mut entries = HashMap::new();
        for (t, d) in loaded.tensors.iter().cloned().zip(data) {
            let start = d.start as usize;
            let end = start + d.bytes.unwrap_or(0) as usize;
            let shape = t.shape.iter().map(|&s| s as usize).collect();
            entries.insert(t.name, GgufEntry { ggml: GgmlType::from_id(d.type_id), type_id: d.type_id, shape, start, end });
        }
        let reshaped =
            loaded.metadata.keys().filter_map(|k| k.strip_prefix("comfy.gguf.orig_shape.")).map(String::from).collect();
        Ok(Self { path: path.to_path_buf(), map, entries, reshaped })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &GgufEntry)> {
        self.entries.iter().map(|(n, e)| (n.as_str(), e))
    }

    /// Tensor `name`'s entry.
    pub fn entry(&self, name: &str) -> Option<&GgufEntry> {
        self.entries.get(name)
    }

    /// The first of `names` (sorted) whose type this engine cannot run, as a one-line message
    /// naming the tensor and the type.
    pub fn unrunnable<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<String> {
        let mut bad: Vec<(&str, &GgufEntry)> = names
            .filter_map(|n| self.entries.get(n).map(|e| (n, e)))
            .filter(|(_, e)| !runnable_type_name(&e.type_name()))
            .collect();
        bad.sort_by_key(|(n, _)| *n);
        let (name, e) = bad.first()?;
        let more = match bad.len() {
            1 => String::new(),
            n => format!(" ({} more tensors too)", n - 1),
        };
        Some(format!(
            "tensor '{name}' is stored as {}, a GGML type this build cannot run{more}; it runs {RUNNABLE_TYPES}",
            e.type_name()
        ))
    }

    /// The first of `names` (sorted) that ComfyUI-GGUF's converter stored reshaped, as a one-line
    /// message: such a tensor's rows are not the layer's rows, which quantized layers need.
    pub fn reshaped<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<String> {
        let mut bad: Vec<&str> = names.filter(|n| self.reshaped.contains(*n)).collect();
        bad.sort_unstable();
        let first = bad.first()?;
        Some(format!(
            "tensor '{first}' is stored reshaped to rows of 256 (comfy.gguf.orig_shape, ComfyUI-GGUF's converter; {} tensors), \
             which this build does not run yet",
            bad.len()
        ))
    }

    fn entry_or_err(&self, name: &str) -> candle_core::Result<(&GgufEntry, GgmlDType)> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("'{name}' is not in {}", self.path.display())))?;
        let t = e.runnable().ok_or_else(|| {
            candle_core::Error::Msg(format!("tensor '{name}' is stored as {}, a GGML type this build cannot run", e.type_name()))
        })?;
        Ok((e, t))
    }

    /// Tensor `name` as stored, rows `rows` of it (all when `None`; a row being everything after
    /// the first dimension), on `device`: a dense tensor of its stored float dtype shaped as in the
    /// file, or blocks shaped `(rows, row)`.
    ///
    /// # Errors
    /// A name the file does not hold, a type this build cannot run, rows outside the tensor.
    pub fn stored(&self, name: &str, rows: Option<(usize, usize)>, device: &Device) -> candle_core::Result<StoredWeight> {
        let (e, t) = self.entry_or_err(name)?;
        let (bytes, shape) = self.rows(e, name, rows)?;
        let out = match t {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let dtype = match t {
                    GgmlDType::F32 => DType::F32,
                    GgmlDType::F16 => DType::F16,
                    _ => DType::BF16,
                };
                StoredWeight::Dense(Tensor::from_raw_buffer(bytes, dtype, &shape, &Device::Cpu)?.to_device(device)?)
            }
            _ => {
                // one row for a 1-D tensor (its blocks run along it)
                let first = if shape.len() > 1 { shape[0] } else { 1 };
                let dims = vec![first, shape.iter().product::<usize>() / first.max(1)];
                StoredWeight::Quantized(qtensor_from_ggml(t, bytes, dims, device)?)
            }
        };
        super::mapped::release(&self.map, e.start, e.end);
        Ok(out)
    }

    /// Tensor `name`'s values as a dense CPU tensor: f32/f16/bf16 as stored, blocks expanded to
    /// f32 (once, for a precision knob that stores it otherwise).
    ///
    /// # Errors
    /// As [`MappedGguf::stored`].
    pub fn dense(&self, name: &str, rows: Option<(usize, usize)>) -> candle_core::Result<Tensor> {
        let (e, t) = self.entry_or_err(name)?;
        match t {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => match self.stored(name, rows, &Device::Cpu)? {
                StoredWeight::Dense(d) => Ok(d),
                StoredWeight::Quantized(_) => unreachable!("float types are dense"),
            },
            _ => {
                let (bytes, shape) = self.rows(e, name, rows)?;
                let mut out = vec![0f32; shape.iter().product()];
                // `dequantize` reads blocks in place and needs them aligned: copy when not
                let owned;
                let bytes = if (bytes.as_ptr() as usize).is_multiple_of(8) {
                    bytes
                } else {
                    owned = bytes.to_vec();
                    &owned
                };
                super::cpu::expand::dequantize(t, bytes, &mut out)?;
                super::mapped::release(&self.map, e.start, e.end);
                Tensor::from_vec(out, shape, &Device::Cpu)
            }
        }
    }

    /// The bytes and shape of rows `rows` of `e` (all of it when `None`).
    fn rows(&self, e: &GgufEntry, name: &str, rows: Option<(usize, usize)>) -> candle_core::Result<(&[u8], Vec<usize>)> {
        let all = &self.map[e.start..e.end];
        let Some((from, n)) = rows else { return Ok((all, e.shape.clone())) };
        let first = e.shape.first().copied().unwrap_or(1);
        if from + n > first || first == 0 {
            candle_core::bail!("tensor '{name}': rows {from}..{} of {first}", from + n);
        }
        let row_bytes = all.len() / first;
        let mut shape = e.shape.clone();
        shape[0] = n;
        Ok((&all[from * row_bytes..(from + n) * row_bytes], shape))
    }
}
