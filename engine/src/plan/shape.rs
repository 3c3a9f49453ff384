//! What the planner needs to know about a model: weight tensors per component (with the denoiser
//! grouped into the blocks that offload moves), and the few architecture numbers the activation
//! formula uses, read from the components' `config.json` where there is one, else from tensor
//! shapes, else from the family's published defaults.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::formats::{Format, GgmlType, Inspection, TensorInfo};
use crate::knobs::{Component, DeviceKind, Precision};

/// One weight tensor as sizing sees it (name, dtype, shape).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightTensor(pub TensorInfo);

impl WeightTensor {
    /// A float tensor of this shape (for tests and synthetic models).
    pub fn from_shape(shape: &[u64]) -> Self {
        Self(TensorInfo { name: String::new(), dtype: "F32".into(), shape: shape.to_vec(), bytes: None })
    }

    /// Bytes this tensor takes at precision `p`, by the one storage rule
    /// ([`crate::formats::tensor_bytes_at`]). `Auto` here is what [`ModelShape::weight_precision`]
    /// leaves for a model kept as its file stores it: the tensor's stored bytes (f32 when its
    /// type's size is unknown).
    pub fn bytes_at(&self, p: Precision) -> u64 {
        match (p, self.0.bytes) {
            (Precision::Auto, Some(stored)) => stored,
            (Precision::Auto, None) => crate::formats::tensor_bytes_at(&self.0, Precision::F32),
            _ => crate::formats::tensor_bytes_at(&self.0, p),
        }
    }
}

/// Bytes of a list of tensors at precision `p`.
pub fn bytes_at(tensors: &[WeightTensor], p: Precision) -> u64 {
    tensors.iter().map(|t| t.bytes_at(p)).sum()
}

/// The denoiser's architecture numbers that drive activation memory.
#[derive(Clone, Debug, PartialEq)]
pub struct UnetShape {
    /// Channels per resolution level, highest resolution first.
    pub block_channels: Vec<u64>,
    /// Which levels (down blocks) have attention.
    pub attention_levels: Vec<bool>,
    /// Attention heads per level.
    pub heads: Vec<u64>,
    pub layers_per_block: u64,
    pub in_channels: u64,
}

/// The autoencoder's numbers that drive decode memory.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeShape {
    /// Decoder channels per level, highest resolution first (as in `block_out_channels`).
    pub block_channels: Vec<u64>,
    pub latent_channels: u64,
}

/// A model as the planner sees it.
#[derive(Clone, Debug)]
pub struct ModelShape {
    /// The family guess id (`sd1`, `sd2`, `sdxl`, `llm:…`, `unknown`).
    pub family: String,
    /// Weight tensors per component; tensors of no known component are under `None`.
    pub components: BTreeMap<Option<Component>, Vec<WeightTensor>>,
    /// SDXL's second text encoder (`text_encoder_2/`, or a single file's
    /// `conditioner.embedders.1.*`): also under [`Component::Text`] in `components`, planned
    /// apart with the `text_2` knobs.
    pub text_2: Vec<WeightTensor>,
    /// The denoiser's weights split by offloadable block, in execution order
    /// (down blocks, mid block, up blocks). What is not in a block (stem, time embedding,
    /// output conv) is `unet_stem`.
    pub unet_blocks: Vec<(String, Vec<WeightTensor>)>,
    pub unet_stem: Vec<WeightTensor>,
    pub unet: UnetShape,
    pub vae: VaeShape,
    /// Text encoder hidden size (for its small activation term).
    pub text_hidden: u64,
    /// True when the file chose each tensor's type (a GGUF: quantized, f16 and f32 tensors side
    /// by side), so `auto` keeps every tensor as stored instead of f16 on a GPU / f32 on the CPU.
    pub auto_as_stored: bool,
    /// Where a number came from a default rather than the model.
    pub assumptions: Vec<String>,
}

impl ModelShape {
    /// The planner's view of a model that a family of this build runs
    /// ([`crate::families::recognise`]): the planner predicts what a family would hold, so a
    /// model no family runs (a GGUF language model, SDXL) has no plan.
    ///
    /// # Errors
    /// No family of this build runs the model: one line naming the file, what it is and its size
    /// as stored.
    pub fn runnable(insp: &Inspection) -> Result<Self> {
        if crate::families::recognise(insp).is_some() {
            return Ok(Self::from_inspection(insp));
        }
        let uncounted = match insp.uncounted_tensors() {
            0 => String::new(),
            1 => ", 1 tensor of an unknown type not counted".to_string(),
            n => format!(", {n} tensors of unknown types not counted"),
        };
        Err(Error::file(
            &insp.path,
            format!(
                "cannot be planned: no family of this build runs it ({}; {} as stored{uncounted})",
                crate::families::not_supported(insp),
                crate::human_bytes(insp.stored_bytes()),
            ),
        ))
    }

    /// Builds the planner's view of an inspected model, whether or not a family runs it (tests,
    /// and the worker for the model it has loaded); [`ModelShape::runnable`] refuses what none does.
    pub fn from_inspection(insp: &Inspection) -> Self {
        let mut components: BTreeMap<Option<Component>, Vec<WeightTensor>> = BTreeMap::new();
        let mut blocks: BTreeMap<(u8, u32), (String, Vec<WeightTensor>)> = BTreeMap::new();
        let mut stem = Vec::new();
        let mut text_2 = Vec::new();
        let mut unet_tensors: Vec<&TensorInfo> = Vec::new();
        let mut vae_tensors: Vec<&TensorInfo> = Vec::new();
        // a single-file LDM checkpoint's denoiser is grouped under the diffusers names the loader
        // builds it with, so the plan's blocks are the blocks offload moves
        let ldm_shapes: crate::families::latent_diffusion::ldm_keys::Shapes = insp
            .components
            .iter()
            .filter(|c| c.component == Some(Component::Unet))
            .flat_map(|c| &c.tensors)
            .filter(|t| t.name.starts_with("model.diffusion_model."))
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let renamed = crate::families::latent_diffusion::ldm_keys::unet_diffusers_names(&ldm_shapes).unwrap_or_default();
        for c in &insp.components {
            for t in &c.tensors {
                let mut w = WeightTensor(t.clone());
                if t.name.ends_with(".model.text_projection") && t.shape.len() == 2 {
                    // OpenCLIP stores it (width, projection); the loader holds it transposed, as a
                    // linear weight whose rows are `width` long (which a quantized type blocks)
                    w.0.shape.reverse();
                }
                components.entry(c.component).or_default().push(w.clone());
                if c.component == Some(Component::Text) && c.name == "text_encoder_2" {
                    text_2.push(w.clone());
                }
                match c.component {
                    Some(Component::Unet) => {
                        unet_tensors.push(t);
                        match unet_block_key(renamed.get(&t.name).unwrap_or(&t.name)) {
                            Some((key, label)) => blocks.entry(key).or_insert_with(|| (label, Vec::new())).1.push(w),
                            None => stem.push(w),
                        }
                    }
                    Some(Component::Vae) => vae_tensors.push(t),
                    _ => {}
                }
            }
        }
        let mut assumptions = Vec::new();
        let family = insp.family.id.clone();
        let dir = model_dir(&insp.path);
        let unet = unet_shape(dir.as_deref(), &family, &unet_tensors, &mut assumptions);
        let vae = vae_shape(dir.as_deref(), &vae_tensors, &mut assumptions);
        let text_hidden = read_config(dir.as_deref(), "text_encoder")
            .and_then(|c| c.get("hidden_size").and_then(Value::as_u64))
            .unwrap_or(match family.as_str() {
                "sd2" => 1024,
                "sdxl" => 2048,
                _ => 768,
            });
        Self {
            family,
            components,
            text_2,
            unet_blocks: blocks.into_values().collect(),
            unet_stem: stem,
            unet,
            vae,
            text_hidden,
            auto_as_stored: insp.format == Format::Gguf,
            assumptions,
        }
    }

    /// The precision a component's weights are counted at when its knob says `p` on `device`:
    /// `p` resolved for the device ([`Precision::resolve`]), except that `auto` stays `Auto` (each
    /// tensor as stored, [`WeightTensor::bytes_at`]) in a model whose file chose its types
    /// ([`ModelShape::auto_as_stored`]). Explicit precisions keep their meaning.
    pub fn weight_precision(&self, p: Precision, device: DeviceKind) -> Precision {
        if p == Precision::Auto && self.auto_as_stored { p } else { p.resolve(device) }
    }

    /// True when a component kept as stored has a layer weight that a call widens to f32: a
    /// block-quantized one anywhere, a half-precision one on the CPU.
    pub fn stores_narrow(&self, c: Component, device: DeviceKind) -> bool {
        let narrow = |w: &WeightTensor| {
            w.0.shape.len() >= 2
                && GgmlType::from_name(&w.0.dtype)
                    .is_some_and(|t| t.block_elements > 1 || (!device.is_gpu() && matches!(t.name, "F16" | "BF16")))
        };
        self.components.get(&Some(c)).is_some_and(|ts| ts.iter().any(narrow))
    }

    /// Bytes of a component at precision `p` (0 when the model has no such component).
    pub fn component_bytes(&self, c: Component, p: Precision) -> u64 {
        self.components.get(&Some(c)).map_or(0, |t| bytes_at(t, p))
    }

    /// Elements of the component's largest layer weight (what a layer expands to f32 for one
    /// call); embedding tables are looked up, never expanded, so they do not count.
    pub fn largest_tensor_elements(&self, c: Component) -> u64 {
        self.components.get(&Some(c)).map_or(0, |t| {
            t.iter()
                .filter(|w| w.0.shape.len() >= 2 && !w.0.name.contains("embedding"))
                .map(|w| w.0.shape.iter().product::<u64>())
                .max()
                .unwrap_or(0)
        })
    }

    /// Bytes of tensors that belong to no known component, at their stored precision counted as f16.
    pub fn other_bytes(&self, p: Precision) -> u64 {
        self.components.get(&None).map_or(0, |t| bytes_at(t, p))
    }
}

/// The folder a diffusers model lives in, if `path` is one.
fn model_dir(path: &Path) -> Option<std::path::PathBuf> {
    path.join("model_index.json").is_file().then(|| path.to_path_buf())
}

/// Groups a denoiser tensor into its offloadable block: diffusers names (`down_blocks.N`,
/// `mid_block`, `up_blocks.N`) and original LDM names (`input_blocks.N`, `middle_block`,
/// `output_blocks.N`). The key orders blocks in execution order; the label is the block's name
/// prefix (`down_blocks.0`, `mid_block`), which the UNet's offload uses too.
pub(crate) fn unet_block_key(name: &str) -> Option<((u8, u32), String)> {
    let name = name.strip_prefix("model.diffusion_model.").unwrap_or(name);
    let numbered = |prefix: &str, rank: u8| -> Option<((u8, u32), String)> {
        let rest = name.strip_prefix(prefix)?;
        let n: u32 = rest.split('.').next()?.parse().ok()?;
        Some(((rank, n), format!("{prefix}{n}")))
    };
    if name.starts_with("mid_block.") || name.starts_with("middle_block.") {
        return Some(((1, 0), "mid_block".to_string()));
    }
    numbered("down_blocks.", 0)
        .or_else(|| numbered("input_blocks.", 0))
        .or_else(|| numbered("up_blocks.", 2))
        .or_else(|| numbered("output_blocks.", 2))
}

fn read_config(dir: Option<&Path>, sub: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir?.join(sub).join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn u64_list(v: Option<&Value>) -> Option<Vec<u64>> {
    v?.as_array()?.iter().map(Value::as_u64).collect()
}

fn unet_shape(dir: Option<&Path>, family: &str, tensors: &[&TensorInfo], notes: &mut Vec<String>) -> UnetShape {
    let cfg = read_config(dir, "unet");
    // Channels: config, else the first resnet conv of each diffusers down block.
    let from_tensors: Vec<u64> = (0..8)
        .map_while(|i| {
            let name = format!("down_blocks.{i}.resnets.0.conv1.weight");
            tensors.iter().find(|t| t.name == name).and_then(|t| t.shape.first().copied())
        })
        .collect();
    let default_channels = vec![320, 640, 1280, 1280];
    let block_channels = u64_list(cfg.as_ref().and_then(|c| c.get("block_out_channels")))
        .or((!from_tensors.is_empty()).then_some(from_tensors))
        .unwrap_or_else(|| {
            notes.push("unet channels: Stable Diffusion defaults (320, 640, 1280, 1280)".into());
            default_channels
        });
    let levels = block_channels.len();
    let attention_levels: Vec<bool> = match cfg.as_ref().and_then(|c| c.get("down_block_types")).and_then(Value::as_array) {
        Some(types) => types.iter().map(|t| t.as_str().is_some_and(|s| s.contains("Attn"))).collect(),
        None if !tensors.is_empty() && tensors.iter().any(|t| t.name.starts_with("down_blocks.")) => (0..levels)
            .map(|i| tensors.iter().any(|t| t.name.starts_with(&format!("down_blocks.{i}.attentions."))))
            .collect(),
        None => (0..levels).map(|i| i + 1 < levels).collect(),
    };
    // Heads: SD1 uses 8 heads everywhere; SD2/XL use 64-wide heads. diffusers' config calls the
    // head count `attention_head_dim` for SD (a historical misnomer) unless `num_attention_heads` is set.
    let heads_cfg = cfg.as_ref().and_then(|c| {
        let v = c.get("num_attention_heads").filter(|v| !v.is_null()).or_else(|| c.get("attention_head_dim"))?;
        match v {
            Value::Number(n) => n.as_u64().map(|n| vec![n; levels]),
            Value::Array(_) => u64_list(Some(v)),
            _ => None,
        }
    });
    let heads = heads_cfg.unwrap_or_else(|| match family {
        "sd2" | "sdxl" => block_channels.iter().map(|c| (c / 64).max(1)).collect(),
        _ => vec![8; levels],
    });
    let layers_per_block = cfg.as_ref().and_then(|c| c.get("layers_per_block")).and_then(Value::as_u64).unwrap_or(2);
    let in_channels = cfg.as_ref().and_then(|c| c.get("in_channels")).and_then(Value::as_u64).unwrap_or(4);
    UnetShape { block_channels, attention_levels, heads, layers_per_block, in_channels }
}

fn vae_shape(dir: Option<&Path>, tensors: &[&TensorInfo], notes: &mut Vec<String>) -> VaeShape {
    let cfg = read_config(dir, "vae");
    let from_tensors: Vec<u64> = (0..8)
        .map_while(|i| {
            let name = format!("encoder.down_blocks.{i}.resnets.0.conv1.weight");
            tensors.iter().find(|t| t.name == name).and_then(|t| t.shape.first().copied())
        })
        .collect();
    let block_channels = u64_list(cfg.as_ref().and_then(|c| c.get("block_out_channels")))
        .or((!from_tensors.is_empty()).then_some(from_tensors))
        .unwrap_or_else(|| {
            notes.push("vae channels: Stable Diffusion defaults (128, 256, 512, 512)".into());
            vec![128, 256, 512, 512]
        });
    let latent_channels = cfg.as_ref().and_then(|c| c.get("latent_channels")).and_then(Value::as_u64).unwrap_or(4);
    VaeShape { block_channels, latent_channels }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Denoiser tensors group into blocks in execution order, for both naming schemes.
    #[test]
    fn unet_blocks_in_execution_order() {
        let names = ["up_blocks.0.x", "down_blocks.1.x", "mid_block.x", "down_blocks.0.x", "conv_in.weight"];
        let mut keys: Vec<_> = names.iter().filter_map(|n| unet_block_key(n)).collect();
        keys.sort();
        let labels: Vec<_> = keys.into_iter().map(|k| k.1).collect();
        assert_eq!(labels, ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0"]);
        assert_eq!(unet_block_key("model.diffusion_model.output_blocks.11.1.norm.weight").unwrap().1, "output_blocks.11");
        assert!(unet_block_key("time_embedding.linear_1.weight").is_none());
    }

    /// 1-D tensors stay f32 under quantization; 2-D ones take the quantized size.
    #[test]
    fn tensor_bytes_follow_storage_rules() {
        let bias = WeightTensor::from_shape(&[320]);
        let w = WeightTensor::from_shape(&[320, 768]);
        assert_eq!(bias.bytes_at(Precision::Q4K), 320 * 4);
        assert_eq!(bias.bytes_at(Precision::F16), 320 * 2);
        assert_eq!(w.bytes_at(Precision::Q8_0), 320 * 768 / 32 * 34);
        assert_eq!(w.bytes_at(Precision::Q4K), 320 * 768 / 256 * 144);
    }
}
