//! Random-weight Stable Diffusion folders built by the engine itself, for benchmarks and memory
//! tests that need SD's real architecture at a chosen size: every tensor the modules ask for is
//! created (so the names and shapes are exactly what a loader expects), filled from a seeded
//! generator, and saved in the diffusers layout with its configs and the shipped CLIP vocabulary.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::clip::{ClipConfig, ClipTextModel};
use super::unet::{PerBlock, Unet, UnetConfig};
use super::vae::{AutoencoderKl, VaeConfig};
use crate::error::{Error, Result};
use crate::nn::Weights;
use crate::rng::TorchCpuRng;

/// The sizes of a synthetic SD-1-style model.
#[derive(Clone, Debug)]
pub struct SyntheticSpec {
    /// UNet channels per level (multiples of 32; attention on all levels but the last).
    pub unet_channels: Vec<usize>,
    /// Resnets per down block.
    pub layers_per_block: usize,
    /// Attention heads in the UNet.
    pub heads: usize,
    /// Text encoder width (a multiple of 64) and depth.
    pub text_hidden: usize,
    pub text_layers: usize,
    /// Autoencoder channels per level (multiples of 32).
    pub vae_channels: Vec<usize>,
    /// Seed of the weights.
    pub seed: u64,
}

impl SyntheticSpec {
    /// The benchmark's "mini" model: SD 1.x's architecture at about 50M parameters
    /// (UNet 64/128/256/256 channels, 8 heads; a 4-layer 256-wide text encoder; a 4-level VAE).
    pub fn mini() -> Self {
        Self {
            unet_channels: vec![64, 128, 256, 256],
            layers_per_block: 2,
            heads: 8,
            text_hidden: 256,
            text_layers: 4,
            vae_channels: vec![32, 64, 128, 128],
            seed: 0,
        }
    }

    fn unet(&self) -> UnetConfig {
        let n = self.unet_channels.len();
        let down = (0..n).map(|i| if i + 1 < n { "CrossAttnDownBlock2D" } else { "DownBlock2D" }.to_string());
        let down: Vec<String> = down.collect();
        UnetConfig {
            up_block_types: down.iter().rev().map(|d| d.replace("Down", "Up")).collect(),
            down_block_types: down,
            block_out_channels: self.unet_channels.clone(),
            layers_per_block: PerBlock::One(self.layers_per_block),
            cross_attention_dim: self.text_hidden,
            attention_head_dim: PerBlock::One(self.heads),
            sample_size: Some(32),
            ..UnetConfig::default()
        }
    }

    fn text(&self) -> ClipConfig {
        ClipConfig {
            hidden_size: self.text_hidden,
            intermediate_size: 4 * self.text_hidden,
            num_hidden_layers: self.text_layers,
            num_attention_heads: (self.text_hidden / 64).max(1),
            ..ClipConfig::default()
        }
    }

    fn vae(&self) -> VaeConfig {
        let n = self.vae_channels.len();
        VaeConfig {
            block_out_channels: self.vae_channels.clone(),
            down_block_types: vec!["DownEncoderBlock2D".into(); n],
            up_block_types: vec!["UpDecoderBlock2D".into(); n],
            ..VaeConfig::default()
        }
    }
}

/// Fills every variable from `rng`: weights ~ N(0, 1/fan_in), norm scales near 1, biases small.
fn randomize(vm: &VarMap, rng: &mut TorchCpuRng) -> Result<u64> {
    let mut vars: Vec<(String, candle_core::Var)> = vm.data().lock().map_err(|_| Error::invalid("poisoned"))?.clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut params = 0u64;
    for (name, var) in vars {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        params += n as u64;
        let noise = rng.randn(n);
        let is_norm = name.contains("norm") && dims.len() == 1;
        let values: Vec<f32> = if is_norm && name.ends_with("weight") {
            noise.iter().map(|v| 1.0 + 0.05 * v).collect()
        } else if dims.len() == 1 {
            noise.iter().map(|v| 0.02 * v).collect()
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let std = (1.0f32 / fan_in.max(1) as f32).sqrt();
            noise.iter().map(|v| std * v).collect()
        };
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?)?;
    }
    Ok(params)
}

fn save_component(dir: &Path, file: &str, config: &serde_json::Value, vm: &VarMap) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::invalid(e.to_string()))?;
    crate::fsutil::write_atomic(&dir.join("config.json"), text.as_bytes())?;
    vm.save(dir.join(file)).map_err(|e| Error::file(dir, e.to_string()))
}

/// Writes a random-weight diffusers folder for `spec` into `dir` and returns its parameter count.
///
/// # Errors
/// The CLIP vocabulary is not found, or a file cannot be written.
pub fn write_folder(dir: &Path, spec: &SyntheticSpec) -> Result<u64> {
    let mut rng = TorchCpuRng::new(spec.seed);
    let dev = Device::Cpu;
    let mut params = 0;

    let (cfg, vm) = (spec.text(), VarMap::new());
    ClipTextModel::new(&cfg, Weights::new(VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("text_model")))?;
    params += randomize(&vm, &mut rng)?;
    let json = serde_json::json!({
        "architectures": ["CLIPTextModel"], "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "max_position_embeddings": cfg.max_position_embeddings, "vocab_size": cfg.vocab_size,
        "hidden_act": cfg.hidden_act, "layer_norm_eps": cfg.layer_norm_eps, "projection_dim": cfg.hidden_size,
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, "model_type": "clip_text_model"
    });
    save_component(&dir.join("text_encoder"), "model.safetensors", &json, &vm)?;

    let (cfg, vm) = (spec.unet(), VarMap::new());
    Unet::new(&cfg, Weights::new(VarBuilder::from_varmap(&vm, DType::F32, &dev)))?;
    params += randomize(&vm, &mut rng)?;
    let json = serde_json::json!({
        "_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "sample_size": cfg.sample_size,
        "down_block_types": cfg.down_block_types, "up_block_types": cfg.up_block_types,
        "block_out_channels": cfg.block_out_channels, "layers_per_block": spec.layers_per_block,
        "cross_attention_dim": cfg.cross_attention_dim, "attention_head_dim": spec.heads,
        "norm_num_groups": cfg.norm_num_groups, "use_linear_projection": false, "act_fn": "silu"
    });
    save_component(&dir.join("unet"), "diffusion_pytorch_model.safetensors", &json, &vm)?;

    let (cfg, vm) = (spec.vae(), VarMap::new());
    AutoencoderKl::new(&cfg, Weights::new(VarBuilder::from_varmap(&vm, DType::F32, &dev)))?;
    params += randomize(&vm, &mut rng)?;
    let json = serde_json::json!({
        "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "down_block_types": cfg.down_block_types, "up_block_types": cfg.up_block_types,
        "block_out_channels": cfg.block_out_channels, "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": cfg.norm_num_groups, "scaling_factor": cfg.scaling_factor, "act_fn": "silu"
    });
    save_component(&dir.join("vae"), "diffusion_pytorch_model.safetensors", &json, &vm)?;

    let sched = serde_json::json!({
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1, "set_alpha_to_one": false,
        "skip_prk_steps": true, "clip_sample": false
    });
    std::fs::create_dir_all(dir.join("scheduler")).map_err(|e| Error::io(dir, e))?;
    let s = serde_json::to_string_pretty(&sched).map_err(|e| Error::invalid(e.to_string()))?;
    crate::fsutil::write_atomic(&dir.join("scheduler/scheduler_config.json"), s.as_bytes())?;

    let vocab = crate::paths::clip_vocabulary_dir()?;
    let tok = dir.join("tokenizer");
    std::fs::create_dir_all(&tok).map_err(|e| Error::io(&tok, e))?;
    for f in ["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"] {
        std::fs::copy(vocab.join(f), tok.join(f)).map_err(|e| Error::io(vocab.join(f), e))?;
    }
    let index = serde_json::json!({
        "_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [null, null], "feature_extractor": [null, null], "requires_safety_checker": false
    });
    let s = serde_json::to_string_pretty(&index).map_err(|e| Error::invalid(e.to_string()))?;
    crate::fsutil::write_atomic(&dir.join("model_index.json"), s.as_bytes())?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::Knobs;

    /// A small synthetic folder loads through the normal path and has the parameters it wrote.
    #[test]
    fn synthetic_folder_loads() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            unet_channels: vec![32, 64],
            layers_per_block: 1,
            heads: 2,
            text_hidden: 64,
            text_layers: 1,
            vae_channels: vec![32, 32],
            seed: 1,
        };
        let params = write_folder(dir.path(), &spec).unwrap();
        let model = super::super::load(dir.path(), &Knobs::default()).unwrap();
        use crate::families::Family;
        let bytes: u64 = model.weight_bytes().iter().map(|(_, b)| b).sum();
        assert_eq!(bytes, params * 4, "f32 weights of every written parameter are resident");
    }
}
