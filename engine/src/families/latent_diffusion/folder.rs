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
/// No weight file (safetensors preferred, then torch's `.bin` zip).
pub fn weight_file(dir: &Path) -> Result<PathBuf> {
    for name in WEIGHT_NAMES {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    for name in ["diffusion_pytorch_model.bin", "pytorch_model.bin", "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::file(dir, "no weights (diffusion_pytorch_model.safetensors, model.safetensors or a .bin)"))
}

/// Memory-maps a component's weights as `dtype` on `device`; returns the builder and the number
/// of weight elements in the file.
///
/// # Errors
/// As [`weight_file`], or a file that is not valid safetensors.
pub fn var_builder(dir: &Path, dtype: DType, device: &Device) -> Result<(VarBuilder<'static>, u64)> {
    let path = weight_file(dir)?;
    if path.extension().is_some_and(|e| e == "bin") {
        return super::single_file::zip_var_builder(&path, dtype, device);
    }
    let st = crate::nn::mapped::MappedSafetensors::open(&path)?;
    let elements = st.shapes().map(|(_, shape)| shape.iter().product::<usize>() as u64).sum();
    let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
    Ok((vb, elements))
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
