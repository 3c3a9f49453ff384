//! Reading a diffusers folder: each component's `config.json` into its config struct and its
//! safetensors weights into a memory-mapped `VarBuilder`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Weight file names diffusers and transformers write, in order of preference.
const WEIGHT_NAMES: [&str; 4] = [
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
];

/// Reads `dir/config.json` into `T` (fields absent from the file take `T`'s defaults).
///
/// # Errors
/// A missing or unreadable file, or JSON that does not fit `T`, naming the file.
pub fn read_config<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    read_json(&dir.join("config.json"))
}

/// Reads a JSON file into `T`.
///
/// # Errors
/// A missing or unreadable file, or JSON that does not fit `T`, naming the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not a valid config: {e}")))
}

/// The safetensors weight file of a component folder.
///
/// # Errors
/// No weight file, or only a pickle (`.bin`) one, which this engine does not read.
pub fn weight_file(dir: &Path) -> Result<PathBuf> {
    for name in WEIGHT_NAMES {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let bin = ["diffusion_pytorch_model.bin", "pytorch_model.bin"].iter().any(|n| dir.join(n).is_file());
    let problem = if bin {
        "only a pickle (.bin) weight file; convert it to .safetensors"
    } else {
        "no diffusion_pytorch_model.safetensors or model.safetensors"
    };
    Err(Error::file(dir, problem))
}

/// Memory-maps a component's weights as `dtype` on `device`; returns the builder and the number
/// of weight elements in the file.
///
/// # Errors
/// As [`weight_file`], or a file that is not valid safetensors.
pub fn var_builder(dir: &Path, dtype: DType, device: &Device) -> Result<(VarBuilder<'static>, u64)> {
    let path = weight_file(dir)?;
    // SAFETY: the file is memory-mapped read-only; like every mmap user we rely on nobody
    // truncating the model file while it is loaded.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }
        .map_err(|e| Error::file(&path, format!("not readable as safetensors: {e}")))?;
    let elements = st.tensors().iter().map(|(_, v)| v.shape().iter().product::<usize>() as u64).sum();
    let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
    Ok((vb, elements))
}

/// Weight elements of each offloadable UNet block in a component folder's weight file, by the
/// planner's grouping (label such as `down_blocks.0` or `mid_block`, elements).
///
/// # Errors
/// As [`var_builder`].
pub fn block_elements(dir: &Path) -> Result<Vec<(String, u64)>> {
    let path = weight_file(dir)?;
    // SAFETY: as in `var_builder`.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }
        .map_err(|e| Error::file(&path, format!("not readable as safetensors: {e}")))?;
    let mut out: Vec<(String, u64)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((_, label)) = crate::plan::shape::unet_block_key(&name) {
            let n = view.shape().iter().product::<usize>() as u64;
            match out.iter_mut().find(|(l, _)| *l == label) {
                Some((_, e)) => *e += n,
                None => out.push((label, n)),
            }
        }
    }
    Ok(out)
}

/// Runs a model constructor and turns its tensor error into one naming the component folder.
///
/// # Errors
/// Whatever `build` returns, as a file error on `dir`.
pub fn build<T>(dir: &Path, build: impl FnOnce() -> candle_core::Result<T>) -> Result<T> {
    build().map_err(|e| Error::file(dir, first_line(&e.to_string())))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}
