//! [`MappedSafetensors`]: a memory-mapped `.safetensors` file (or a sharded set) whose tensors are read one at a time,
//! each copied (and converted) into its own buffer, after which the file's pages for that tensor
//! are released from this process (`madvise(MADV_DONTNEED)`).
//!
//! Without the release every page read stays counted in the process's resident set until the map
//! is dropped, so loading held the file *and* the loaded weights: twice the model at f32, and
//! the whole f32 file beside the small quantized weights. The page cache keeps the file; the
//! process no longer holds it, and a streamed block that reads its tensors again simply faults
//! them back in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Where one tensor lies.
#[derive(Clone, Debug)]
struct Entry {
    /// None for a dtype candle cannot hold (reported if a module asks for the tensor).
    dtype: Option<DType>,
    shape: Vec<usize>,
    /// The file (index into the maps) and the byte range in it.
    file: usize,
    start: usize,
    end: usize,
}

/// A mapped safetensors file, or the shards of one (`*.safetensors.index.json`).
pub struct MappedSafetensors {
    /// What errors name: the file, or the shard index.
    path: PathBuf,
    maps: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

fn candle_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        _ => return None,
    })
}

impl MappedSafetensors {
    /// Maps `path` and reads its header; every tensor's byte range is checked against the file.
    ///
    /// # Errors
    /// An unreadable file, a header that is not safetensors, or a tensor outside the file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_shards(path, &[path.to_path_buf()])
    }

    /// Maps every shard of one set (named `name` in errors: the index file); a tensor in two
    /// shards is refused.
    ///
    /// # Errors
    /// As [`MappedSafetensors::open`] for each shard, or a tensor found in two shards.
    pub fn open_shards(name: &Path, shards: &[PathBuf]) -> Result<Self> {
        let mut entries = HashMap::new();
        let mut maps = Vec::with_capacity(shards.len());
        for (file, path) in shards.iter().enumerate() {
            let map = map_file(path)?;
            for (tensor, entry) in read_entries(path, &map, file)? {
                if entries.insert(tensor.clone(), entry).is_some() {
                    return Err(Error::file(name, format!("tensor '{tensor}' is in two shards")));
                }
            }
            maps.push((path.clone(), map));
        }
        Ok(Self { path: name.to_path_buf(), maps, entries })
    }

    /// Names and shapes of every tensor the file holds.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.entries.iter().map(|(n, e)| (n.as_str(), e.shape.as_slice()))
    }

    /// Elements of tensor `name`, if the file holds it.
    pub fn elements(&self, name: &str) -> Option<usize> {
        self.entries.get(name).map(|e| e.shape.iter().product())
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Copies tensor `name` into a new CPU tensor of its stored dtype, then releases its pages.
    ///
    /// # Errors
    /// A name the file does not hold, or a dtype candle cannot hold.
    pub fn load(&self, name: &str) -> candle_core::Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("'{name}' is not in {}", self.path.display())))?;
        let Some(dtype) = e.dtype else {
            return Err(candle_core::Error::Msg(format!("tensor '{name}' in {} has a dtype that is not supported", self.path.display())));
        };
        let map = &self.maps[e.file].1;
        let t = Tensor::from_raw_buffer(&map[e.start..e.end], dtype, &e.shape, &Device::Cpu)?;
        release(map, e.start, e.end);
        Ok(t)
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: mapped read-only; like every mmap user we rely on nobody truncating the model file
    // while it is loaded.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The tensors of one mapped file, each range checked against the file and its shape.
fn read_entries(path: &Path, map: &Mmap, file: usize) -> Result<Vec<(String, Entry)>> {
    let (header, meta) = SafeTensors::read_metadata(map)
        .map_err(|e| Error::file(path, format!("not readable as safetensors or a torch checkpoint: {e}")))?;
    let base = 8 + header;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let (a, b) = info.data_offsets;
        let (start, end) = (base + a, base + b);
        if a > b || end > map.len() {
            return Err(Error::file(path, format!("tensor '{name}' lies outside the file ({end} > {} bytes)", map.len())));
        }
        // a dtype we cannot hold is reported when (and if) a module asks for the tensor
        let entry = match candle_dtype(info.dtype) {
            Some(dtype) => {
                let want = info.shape.iter().product::<usize>() * dtype.size_in_bytes();
                if want != end - start {
                    return Err(Error::file(path, format!("tensor '{name}' has {} bytes for shape {:?}", end - start, info.shape)));
                }
                Entry { dtype: Some(dtype), shape: info.shape.clone(), file, start, end }
            }
            None => Entry { dtype: None, shape: info.shape.clone(), file, start, end },
        };
        out.push((name, entry));
    }
    Ok(out)
}

/// Drops this process's pages of bytes `start..end` of `map` (page-aligned outward: a
/// neighbour's shared page is faulted in again from the page cache if it is read later).
pub(crate) fn release(map: &Mmap, start: usize, end: usize) {
    let page = 4096;
    let a = start / page * page;
    let b = end.div_ceil(page).saturating_mul(page).min(map.len());
    if b > a {
        // SAFETY: a read-only file mapping: MADV_DONTNEED only drops pages, which later reads
        // fault in again with the file's unchanged content; no reference into the range is held.
        let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, a, b - a) };
    }
}

impl SimpleBackend for MappedSafetensors {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "tensor '{name}' in {} has shape {:?}, the model expects {:?}",
                self.path.display(),
                t.dims(),
                s.dims()
            )));
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's resident kilobytes of the mapping that starts at `addr` (from
    /// `/proc/self/smaps`, so other tests' memory does not count).
    fn mapping_rss_kb(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((a, _)) = range.split_once('-')
                && let Ok(start) = usize::from_str_radix(a, 16)
                && range.contains('-')
                && !line.starts_with(|c: char| c.is_ascii_uppercase())
            {
                inside = start == addr;
            } else if inside && let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("mapping at {addr:#x} not found");
    }

    /// Reading a tensor through the map gives its values in the asked dtype and releases its
    /// pages (the mapping's resident size falls back near zero, where without the release it
    /// would hold the whole tensor); a second read still gives the same values.
    #[test]
    fn load_releases_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let n = 4 << 20; // 16 MiB of f32
        let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.5).collect();
        let t = Tensor::from_vec(values, (1024, n / 1024), &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t.clone())]), &path).unwrap();
        let st = MappedSafetensors::open(&path).unwrap();
        let addr = st.maps[0].1.as_ptr() as usize;
        let got = st.load("w").unwrap();
        let d = (&got - &t).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
        let kb = mapping_rss_kb(addr);
        assert!(kb < 1024, "{kb} kB of the 16 MiB tensor still resident in the mapping");
        // the same read without the release keeps it: the measure can tell the two apart
        std::hint::black_box(st.maps[0].1[8..].iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>());
        assert!(mapping_rss_kb(addr) > 8 * 1024);
        let half = SimpleBackend::get_unchecked(&st, "w", DType::F16, &Device::Cpu).unwrap();
        assert_eq!(half.dtype(), DType::F16);
        assert!(st.load("missing").is_err());
    }
}
