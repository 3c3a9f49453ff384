//! Reading a diffusers folder: each component's `config.json` into its config struct and its
//! safetensors weights into a memory-mapped `VarBuilder`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::nn::mapped::MappedSafetensors;

/// Safetensors weight files and shard indexes (`weight_map`: tensor → shard file) diffusers and
/// transformers write, in order of preference — as `formats::diffusers` picks them for inspect
/// and plan: plain before the fp16 variant, and within each a single file before an index.
const WEIGHT_NAMES: [&str; 8] = [
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.fp16.json",
    "model.safetensors.index.fp16.json",
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

/// The weight file of a component folder: a safetensors file or shard index (`*.safetensors.index.json`,
/// see `WEIGHT_NAMES` for the order), else torch's `.bin` zip.
///
/// # Errors
/// No weight file.
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
    Err(Error::file(dir, "no weights (diffusion_pytorch_model.safetensors, model.safetensors, a .safetensors.index.json with its shards, or a .bin)"))
}

/// Memory-maps a component's weights (one file, or every shard an index names) as `dtype` on
/// `device`; returns the builder and the number of weight elements.
///
/// # Errors
/// As [`weight_file`], a file that is not valid safetensors, or an index naming a shard that is
/// missing or outside the folder.
pub fn var_builder(dir: &Path, dtype: DType, device: &Device) -> Result<(VarBuilder<'static>, u64)> {
    let path = weight_file(dir)?;
    if path.extension().is_some_and(|e| e == "bin") {
        return super::single_file::zip_var_builder(&path, dtype, device);
    }
    let st = if path.to_string_lossy().ends_with(".json") {
        // The index is checked (shards inside the folder, present, no tensor in two) as inspect does.
        let shards = crate::formats::safetensors::read_index(&path)?.files;
        MappedSafetensors::open_shards(&path, &shards)?
    } else {
        MappedSafetensors::open(&path)?
    };
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::var_builder;
    use crate::knobs::Knobs;

    /// A diffusers folder whose UNet is split into two shards with an index loads: the sharded
    /// builder serves every tensor of the original file, and the whole model loads from it.
    #[test]
    fn sharded_unet_loads() {
        let fixture = super::super::parity_tests::fixture("tiny-sd1");
        let dir = tempfile::tempdir().unwrap();
        super::super::config_check::tests::copy_dir(&fixture, dir.path());
        let unet = dir.path().join("unet");
        let whole = unet.join("diffusion_pytorch_model.safetensors");
        let tensors = candle_core::safetensors::load(&whole, &Device::Cpu).unwrap();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
        let mut weight_map = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i % 2 + 1);
            shards[i % 2].insert(name.to_string(), tensors[*name].clone());
            weight_map.insert(name.to_string(), file.into());
        }
        for (i, shard) in shards.iter().enumerate() {
            let file = unet.join(format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1));
            candle_core::safetensors::save(shard, file).unwrap();
        }
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        std::fs::write(unet.join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
        std::fs::remove_file(&whole).unwrap();

        let (vb, elements) = var_builder(&unet, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(elements, tensors.values().map(|t| t.elem_count() as u64).sum::<u64>());
        for (name, t) in &tensors {
            let got = vb.get(t.dims(), name).unwrap();
            let diff = (got - t).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
        super::super::load(dir.path(), &Knobs::default()).map(|_| ()).unwrap();
    }

    /// With a plain shard index and an fp16 single file side by side, the loader takes the plain
    /// index, as inspect and the planner do (non-variant first).
    #[test]
    fn plain_index_wins_over_fp16_file() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.fp16.safetensors"] {
            std::fs::write(dir.path().join(name), b"{}").unwrap();
        }
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let picked = super::weight_file(dir.path()).unwrap();
        assert!(picked.ends_with("diffusion_pytorch_model.safetensors.index.json"), "{}", picked.display());
        let chosen = crate::formats::diffusers::component_weights(dir.path()).unwrap().unwrap();
        assert_eq!(chosen.file, picked, "inspect and the loader pick the same file");
    }
}
