//! The original LDM key layout of single-file Stable Diffusion checkpoints
//! (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`; SDXL's two text
//! encoders under `conditioner.embedders.0.transformer.*` and `conditioner.embedders.1.model.*`)
//! mapped onto the diffusers names the modules load, and the configs those files do not carry, inferred from
//! tensor shapes (plus the few numbers shapes cannot tell, from an LDM `.yaml` beside the file
//! when there is one).

use std::collections::{BTreeMap, HashMap};

use super::clip::ClipConfig;
use super::schedulers::SchedulerConfig;
use super::unet::{PerBlock, UnetConfig};
use super::vae::VaeConfig;

/// LDM prefix of the denoiser.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// LDM prefix of the autoencoder.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// SD 1.x: a transformers `CLIPTextModel` under this prefix.
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// SD 2.x: an OpenCLIP text tower under this prefix.
pub const OPENCLIP_PREFIX: &str = "cond_stage_model.model.";
/// SDXL's first text encoder (CLIP ViT-L, transformers' layout) under this prefix.
pub const XL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// SDXL's second text encoder (OpenCLIP ViT-bigG) under this prefix.
pub const XL_OPENCLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// How a diffusers tensor is made from an LDM tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Take {
    /// As stored.
    Whole,
    /// A 1×1 convolution weight `(o, i, 1, 1)` used as a linear weight `(o, i)`.
    Squeeze1x1,
    /// Part `k` of 3 along the first dimension (OpenCLIP's fused q/k/v projection).
    Third(usize),
    /// A matrix stored the other way round (OpenCLIP's `text_projection`, `(width, projection)`,
    /// used as transformers' `(projection, width)` linear weight).
    Transpose,
}

/// Where one diffusers-named tensor comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The LDM name in the file.
    pub key: String,
    pub take: Take,
}

/// Which text tower a single-file checkpoint carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextTower {
    /// OpenAI CLIP in transformers' layout (SD 1.x).
    Clip,
    /// OpenCLIP (SD 2.x), used up to its penultimate layer.
    OpenClip,
    /// SDXL's two: CLIP ViT-L in transformers' layout (component `text`) and OpenCLIP ViT-bigG
    /// with its projection (component `text_2`), each read at its penultimate layer.
    Xl,
}

/// The tensor shapes of a single-file checkpoint, by LDM name.
pub type Shapes = BTreeMap<String, Vec<u64>>;

/// Numbers an LDM `.yaml` config may give that tensor shapes cannot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LdmHints {
    pub num_heads: Option<i64>,
    pub num_head_channels: Option<i64>,
    /// `parameterization: "v"` for v-prediction models.
    pub v_prediction: Option<bool>,
    pub scale_factor: Option<f64>,
}

impl LdmHints {
    /// Reads the scalar keys Headroom uses from an LDM inference `.yaml` (a line scan: these keys
    /// are plain `key: value` lines in every released config).
    pub fn from_yaml(text: &str) -> Self {
        let mut h = Self::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((k, v)) = line.split_once(':') else { continue };
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
            match k.trim() {
                "num_heads" => h.num_heads = v.parse().ok(),
                "num_head_channels" => h.num_head_channels = v.parse().ok(),
                "parameterization" => h.v_prediction = Some(v == "v"),
                "scale_factor" => h.scale_factor = v.parse().ok(),
                _ => {}
            }
        }
        h
    }
}

/// Whether the names look like an LDM single-file Stable Diffusion checkpoint.
pub fn is_ldm(shapes: &Shapes) -> bool {
    shapes.keys().any(|k| k.starts_with(UNET_PREFIX)) && shapes.keys().any(|k| k.starts_with(VAE_PREFIX))
}

/// The text tower present, if any (SDXL's when either of its encoders is there).
pub fn text_tower(shapes: &Shapes) -> Option<TextTower> {
    if has_prefix(shapes, XL_CLIP_PREFIX) || has_prefix(shapes, XL_OPENCLIP_PREFIX) {
        Some(TextTower::Xl)
    } else if shapes.keys().any(|k| k.starts_with(OPENCLIP_PREFIX)) {
        Some(TextTower::OpenClip)
    } else if shapes.keys().any(|k| k.starts_with(CLIP_PREFIX)) {
        Some(TextTower::Clip)
    } else {
        None
    }
}

fn strip<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)
}

/// Splits `"12.rest"` into `(12, "rest")`.
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// LDM resnet sub-names → diffusers'.
fn resnet(rest: &str) -> String {
    const MAP: &[(&str, &str)] = &[
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
        ("nin_shortcut.", "conv_shortcut."),
    ];
    for (from, to) in MAP {
        if let Some(r) = rest.strip_prefix(from) {
            return format!("{to}{r}");
        }
    }
    rest.to_string()
}

/// Maps the denoiser's names. `layers` is the number of resnets per down block.
fn unet_map(shapes: &Shapes, layers: usize, out: &mut HashMap<String, Source>) {
    let per_up = layers + 1;
    for key in shapes.keys() {
        let Some(k) = strip(key, UNET_PREFIX) else { continue };
        let name = if let Some(r) = k.strip_prefix("time_embed.0.") {
            format!("time_embedding.linear_1.{r}")
        } else if let Some(r) = k.strip_prefix("label_emb.0.0.") {
            // SDXL: the pooled text and size ids' embedding
            format!("add_embedding.linear_1.{r}")
        } else if let Some(r) = k.strip_prefix("label_emb.0.2.") {
            format!("add_embedding.linear_2.{r}")
        } else if let Some(r) = k.strip_prefix("time_embed.2.") {
            format!("time_embedding.linear_2.{r}")
        } else if let Some(r) = k.strip_prefix("input_blocks.0.0.") {
            format!("conv_in.{r}")
        } else if let Some(r) = k.strip_prefix("out.0.") {
            format!("conv_norm_out.{r}")
        } else if let Some(r) = k.strip_prefix("out.2.") {
            format!("conv_out.{r}")
        } else if let Some((i, r)) = k.strip_prefix("input_blocks.").and_then(index) {
            let (block, layer) = ((i - 1) / (layers + 1), (i - 1) % (layers + 1));
            match index(r) {
                Some((0, r)) if r.starts_with("op.") => {
                    format!("down_blocks.{block}.downsamplers.0.conv.{}", &r[3..])
                }
                Some((0, r)) => format!("down_blocks.{block}.resnets.{layer}.{}", resnet(r)),
                Some((1, r)) => format!("down_blocks.{block}.attentions.{layer}.{r}"),
                _ => continue,
            }
        } else if let Some((i, r)) = k.strip_prefix("middle_block.").and_then(index) {
            match i {
                0 => format!("mid_block.resnets.0.{}", resnet(r)),
                1 => format!("mid_block.attentions.0.{r}"),
                2 => format!("mid_block.resnets.1.{}", resnet(r)),
                _ => continue,
            }
        } else if let Some((i, r)) = k.strip_prefix("output_blocks.").and_then(index) {
            let (block, layer) = (i / per_up, i % per_up);
            match index(r) {
                Some((0, r)) => format!("up_blocks.{block}.resnets.{layer}.{}", resnet(r)),
                Some((_, r)) if r.starts_with("conv.") => format!("up_blocks.{block}.upsamplers.0.{r}"),
                Some((_, r)) => format!("up_blocks.{block}.attentions.{layer}.{r}"),
                None => continue,
            }
        } else {
            continue;
        };
        out.insert(name, Source { key: key.clone(), take: Take::Whole });
    }
}

/// Maps the autoencoder's names. `levels` is the number of resolution levels.
fn vae_map(shapes: &Shapes, levels: usize, out: &mut HashMap<String, Source>) {
    for key in shapes.keys() {
        let Some(k) = strip(key, VAE_PREFIX) else { continue };
        let mut take = Take::Whole;
        let name = if let Some((side, r)) = k.split_once('.').filter(|(s, _)| *s == "encoder" || *s == "decoder") {
            let inner = if let Some(r) = r.strip_prefix("norm_out.") {
                format!("conv_norm_out.{r}")
            } else if let Some(r) = r.strip_prefix("mid.block_1.") {
                format!("mid_block.resnets.0.{}", resnet(r))
            } else if let Some(r) = r.strip_prefix("mid.block_2.") {
                format!("mid_block.resnets.1.{}", resnet(r))
            } else if let Some(r) = r.strip_prefix("mid.attn_1.") {
                let (part, tail) = r.split_once('.').unwrap_or((r, ""));
                let to = match part {
                    "norm" => "group_norm",
                    "q" => "to_q",
                    "k" => "to_k",
                    "v" => "to_v",
                    "proj_out" => "to_out.0",
                    _ => continue,
                };
                if tail == "weight" && shapes[key].len() == 4 {
                    take = Take::Squeeze1x1;
                }
                format!("mid_block.attentions.0.{to}.{tail}")
            } else if let Some((i, r)) = r.strip_prefix("down.").and_then(index) {
                if let Some(r) = r.strip_prefix("downsample.") {
                    format!("down_blocks.{i}.downsamplers.0.{r}")
                } else if let Some((j, r)) = r.strip_prefix("block.").and_then(index) {
                    format!("down_blocks.{i}.resnets.{j}.{}", resnet(r))
                } else {
                    continue;
                }
            } else if let Some((i, r)) = r.strip_prefix("up.").and_then(index) {
                let b = levels.saturating_sub(1 + i);
                if let Some(r) = r.strip_prefix("upsample.") {
                    format!("up_blocks.{b}.upsamplers.0.{r}")
                } else if let Some((j, r)) = r.strip_prefix("block.").and_then(index) {
                    format!("up_blocks.{b}.resnets.{j}.{}", resnet(r))
                } else {
                    continue;
                }
            } else {
                r.to_string()
            };
            format!("{side}.{inner}")
        } else {
            k.to_string()
        };
        out.insert(name, Source { key: key.clone(), take });
    }
}

/// Maps a text tower's names under `prefix` onto transformers' `CLIPTextModel` (`text_model.*`):
/// `openclip` for OpenCLIP's names (fused q/k/v), else transformers' own; `projection` maps
/// OpenCLIP's `text_projection` too (SDXL's second encoder; SD 2.x does not use it).
fn text_map(shapes: &Shapes, prefix: &str, openclip: bool, projection: bool, out: &mut HashMap<String, Source>) {
    for key in shapes.keys() {
        if !openclip {
            let Some(k) = strip(key, prefix) else { continue };
            let k = k.strip_prefix("text_model.").unwrap_or(k);
            out.insert(format!("text_model.{k}"), Source { key: key.clone(), take: Take::Whole });
        } else {
            {
                let Some(k) = strip(key, prefix) else { continue };
                if k == "text_projection" && projection {
                    out.insert("text_projection.weight".into(), Source { key: key.clone(), take: Take::Transpose });
                    continue;
                }
                let whole = |n: String| (n, Take::Whole);
                let mapped: Vec<(String, Take)> = match k {
                    "token_embedding.weight" => vec![whole("embeddings.token_embedding.weight".into())],
                    "positional_embedding" => vec![whole("embeddings.position_embedding.weight".into())],
                    _ if k.starts_with("ln_final.") => vec![whole(format!("final_layer_norm.{}", &k[9..]))],
                    _ => match k.strip_prefix("transformer.resblocks.").and_then(index) {
                        Some((i, r)) => {
                            let l = format!("encoder.layers.{i}");
                            match r {
                                "attn.in_proj_weight" | "attn.in_proj_bias" => {
                                    let what = if r.ends_with("weight") { "weight" } else { "bias" };
                                    ["q_proj", "k_proj", "v_proj"]
                                        .iter()
                                        .enumerate()
                                        .map(|(n, p)| (format!("{l}.self_attn.{p}.{what}"), Take::Third(n)))
                                        .collect()
                                }
                                _ => {
                                    let renamed = [
                                        ("attn.out_proj.", "self_attn.out_proj."),
                                        ("ln_1.", "layer_norm1."),
                                        ("ln_2.", "layer_norm2."),
                                        ("mlp.c_fc.", "mlp.fc1."),
                                        ("mlp.c_proj.", "mlp.fc2."),
                                    ]
                                    .iter()
                                    .find_map(|(from, to)| r.strip_prefix(from).map(|t| format!("{l}.{to}{t}")));
                                    renamed.map(whole).into_iter().collect()
                                }
                            }
                        }
                        None => Vec::new(),
                    },
                };
                for (name, take) in mapped {
                    out.insert(format!("text_model.{name}"), Source { key: key.clone(), take });
                }
            }
        }
    }
}

/// A single-file checkpoint's components as the diffusers modules see them.
#[derive(Clone, Debug)]
pub struct LdmLayout {
    pub unet: UnetConfig,
    pub vae: VaeConfig,
    pub text: ClipConfig,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG with its projection).
    pub text_2: Option<ClipConfig>,
    pub tower: TextTower,
    pub scheduler: SchedulerConfig,
    /// diffusers name → LDM source, per component (text, unet, vae, and SDXL's text_2).
    pub names: [HashMap<String, Source>; 4],
    /// What was assumed rather than read, for the run's notes.
    pub notes: Vec<String>,
}

fn dim(shapes: &Shapes, key: &str, i: usize) -> Result<usize, String> {
    shapes
        .get(key)
        .and_then(|s| s.get(i))
        .map(|&d| d as usize)
        .ok_or_else(|| format!("tensor '{key}' is missing or has too few dimensions"))
}

/// The largest `N` for which `format!("{prefix}{N}.")` starts some key, plus one.
fn count(shapes: &Shapes, prefix: &str) -> usize {
    shapes
        .keys()
        .filter_map(|k| k.strip_prefix(prefix).and_then(index).map(|(i, _)| i + 1))
        .max()
        .unwrap_or(0)
}

fn has_prefix(shapes: &Shapes, prefix: &str) -> bool {
    shapes.range(prefix.to_string()..).next().is_some_and(|(k, _)| k.starts_with(prefix))
}

/// The denoiser's resolution levels and resnets per down block, from its input blocks.
fn unet_levels(shapes: &Shapes) -> Result<(usize, usize), String> {
    let u = UNET_PREFIX;
    let inputs = count(shapes, &format!("{u}input_blocks."));
    let downsamplers = (1..inputs).filter(|i| shapes.contains_key(&format!("{u}input_blocks.{i}.0.op.weight"))).count();
    let levels = downsamplers + 1;
    let per_level = (inputs.max(1) - 1).saturating_sub(downsamplers);
    if inputs < 2 || per_level % levels != 0 {
        return Err(format!("{inputs} input blocks with {downsamplers} downsamplers do not form SD's down path"));
    }
    Ok((levels, per_level / levels))
}

/// The diffusers name of each LDM denoiser tensor (LDM name → diffusers name), as the loader maps
/// them, so that the planner groups a single file's blocks as they are built; `None` when the
/// names do not form SD's down path.
pub fn unet_diffusers_names(shapes: &Shapes) -> Option<HashMap<String, String>> {
    let (_, layers) = unet_levels(shapes).ok()?;
    let mut map = HashMap::new();
    unet_map(shapes, layers, &mut map);
    Some(map.into_iter().map(|(diffusers, src)| (src.key, diffusers)).collect())
}

/// LDM's group norms have 32 groups; a model whose narrowest block has fewer channels (a tiny
/// test model) gets the largest count up to 32 that divides every block's, and a note.
fn norm_groups(channels: &[usize], what: &str, notes: &mut Vec<String>) -> usize {
    let groups = (1..=32).rev().find(|g| channels.iter().all(|c| c % g == 0)).unwrap_or(1);
    if groups != 32 {
        notes.push(format!("{what}: channels {channels:?} do not split into LDM's 32 norm groups; {groups} used"));
    }
    groups
}

/// The denoiser's config inferred from its LDM shapes (`model.diffusion_model.*`), and its
/// resnets per down block.
fn unet_config(shapes: &Shapes, hints: &LdmHints, notes: &mut Vec<String>) -> Result<(UnetConfig, usize), String> {
    let u = UNET_PREFIX;
    let conv_in = format!("{u}input_blocks.0.0.weight");
    let model_channels = dim(shapes, &conv_in, 0)?;
    let (levels, layers) = unet_levels(shapes)?;
    let mut channels = Vec::new();
    let mut down = Vec::new();
    let mut attention_any = None;
    for level in 0..levels {
        let first = 1 + level * (layers + 1);
        channels.push(dim(shapes, &format!("{u}input_blocks.{first}.0.out_layers.3.weight"), 0)?);
        let attn = has_prefix(shapes, &format!("{u}input_blocks.{first}.1."));
        if attn {
            attention_any.get_or_insert(first);
        }
        down.push(if attn { "CrossAttnDownBlock2D" } else { "DownBlock2D" }.to_string());
    }
    let up: Vec<String> = down.iter().rev().map(|d| d.replace("Down", "Up")).collect();
    let first_attn = attention_any.ok_or("the denoiser has no attention blocks; not an SD 1.x/2.x UNet")?;
    let a = format!("{u}input_blocks.{first_attn}.1.");
    let context = dim(shapes, &format!("{a}transformer_blocks.0.attn2.to_k.weight"), 1)?;
    let linear = shapes.get(&format!("{a}proj_in.weight")).is_some_and(|s| s.len() == 2);
    let head_dims: Vec<usize> = match (hints.num_heads.filter(|&n| n > 0), hints.num_head_channels.filter(|&c| c > 0)) {
        (Some(h), _) => vec![h as usize; levels],
        (None, Some(c)) => channels.iter().map(|&ch| (ch / c as usize).max(1)).collect(),
        (None, None) if context >= 1024 => {
            notes.push("unet: no .yaml beside the file; 64 channels per attention head assumed (SD 2.x, SDXL)".into());
            channels.iter().map(|&ch| (ch / 64).max(1)).collect()
        }
        (None, None) => {
            notes.push("unet: no .yaml beside the file; 8 attention heads assumed (SD 1.x)".into());
            vec![8; levels]
        }
    };
    // transformer layers per level (SDXL's differ: 1, 2, 10), the middle block's being the
    // deepest level's as diffusers builds it
    let depth = |block: &str| count(shapes, &format!("{u}{block}.1.transformer_blocks.")).max(1);
    let depths: Vec<usize> = (0..levels).map(|l| depth(&format!("input_blocks.{}", 1 + l * (layers + 1)))).collect();
    let mid = depth("middle_block");
    if has_prefix(shapes, &format!("{u}middle_block.1.")) && Some(&mid) != depths.last() {
        return Err(format!(
            "the middle block has {mid} transformer layers but the deepest level {}; such a UNet is not supported",
            depths.last().unwrap_or(&0)
        ));
    }
    // SDXL: pooled text and size ids embedded by `label_emb` (diffusers' add_embedding); the
    // split of its input between the two is set once the pooled width is known
    let label = format!("{u}label_emb.0.0.weight");
    let added = shapes.contains_key(&label).then(|| dim(shapes, &label, 1)).transpose()?;
    let groups = norm_groups(&channels, "unet", notes);
    let unet = UnetConfig {
        in_channels: dim(shapes, &conv_in, 1)?,
        out_channels: dim(shapes, &format!("{u}out.2.weight"), 0)?,
        down_block_types: down,
        up_block_types: up,
        block_out_channels: channels,
        layers_per_block: PerBlock::One(layers),
        cross_attention_dim: context,
        // diffusers' "attention_head_dim" is SD's head count (a historical misnomer) per block
        attention_head_dim: PerBlock::Each(head_dims),
        use_linear_projection: linear,
        transformer_layers_per_block: if depths.iter().all(|&d| d == 1) { PerBlock::One(1) } else { PerBlock::Each(depths) },
        norm_num_groups: groups,
        addition_embed_type: added.map(|_| "text_time".to_string()),
        projection_class_embeddings_input_dim: added,
        sample_size: None,
        ..UnetConfig::default()
    };
    if model_channels != unet.block_out_channels[0] {
        return Err(format!("conv_in has {model_channels} channels but the first block has {}", unet.block_out_channels[0]));
    }
    Ok((unet, layers))
}

/// For a file that holds only an LDM denoiser (stable-diffusion.cpp's names with
/// `model.diffusion_model.`, or ComfyUI-GGUF's, which strips it): each of its denoiser keys under
/// the full LDM name (full name → the file's key). `None` for a whole model or other names.
pub fn denoiser_keys(shapes: &Shapes) -> Option<BTreeMap<String, String>> {
    if shapes.keys().any(|k| k.starts_with(VAE_PREFIX) || k.starts_with("cond_stage_model.")) {
        return None;
    }
    let prefixed: BTreeMap<String, String> =
        shapes.keys().filter(|k| k.starts_with(UNET_PREFIX)).map(|k| (k.clone(), k.clone())).collect();
    let keys = if !prefixed.is_empty() {
        prefixed
    } else {
        const ROOTS: [&str; 5] = ["input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out."];
        shapes
            .keys()
            .filter(|k| ROOTS.iter().any(|r| k.starts_with(r)))
            .map(|k| (format!("{UNET_PREFIX}{k}"), k.clone()))
            .collect()
    };
    let conv_in = format!("{UNET_PREFIX}input_blocks.0.0.weight");
    (keys.contains_key(&conv_in) && keys.keys().any(|k| k.contains(".attn2.to_k."))).then_some(keys)
}

/// A denoiser-only file as the UNet sees it.
#[derive(Clone, Debug)]
pub struct DenoiserLayout {
    pub unet: UnetConfig,
    /// diffusers name → the file's tensor.
    pub names: HashMap<String, Source>,
    /// What was assumed rather than read.
    pub notes: Vec<String>,
}

/// The config and diffusers name map of a denoiser-only file, whose keys [`denoiser_keys`] found
/// (the map's sources name the file's own keys), and what was assumed.
///
/// # Errors
/// Shapes that do not form an SD 1.x/2.x denoiser, naming the tensor.
pub fn denoiser_layout(shapes: &Shapes, keys: &BTreeMap<String, String>, hints: &LdmHints) -> Result<DenoiserLayout, String> {
    let full: Shapes = keys.iter().filter_map(|(full, file)| shapes.get(file).map(|s| (full.clone(), s.clone()))).collect();
    let mut notes = Vec::new();
    let (unet, layers) = unet_config(&full, hints, &mut notes)?;
    let mut names = HashMap::new();
    unet_map(&full, layers, &mut names);
    for src in names.values_mut() {
        if let Some(file) = keys.get(&src.key) {
            src.key = file.clone();
        }
    }
    Ok(DenoiserLayout { unet, names, notes })
}

/// Stable Diffusion's training schedule as diffusers configures its pipelines (DDIM-style,
/// `leading` spacing), with v-prediction or epsilon.
pub fn sd_scheduler(v_prediction: bool) -> SchedulerConfig {
    SchedulerConfig {
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: "scaled_linear".into(),
        prediction_type: if v_prediction { "v_prediction" } else { "epsilon" }.into(),
        steps_offset: 1,
        set_alpha_to_one: Some(false),
        clip_sample: Some(false),
        timestep_spacing: Some("leading".into()),
        ..SchedulerConfig::default()
    }
}

/// SDXL base's scheduler as it ships (`EulerDiscreteScheduler`, scaled-linear betas
/// 0.00085–0.012 over 1000 steps, `leading` spacing, epsilon, no Karras sigmas, DDIM without
/// clipping).
pub fn xl_scheduler() -> SchedulerConfig {
    SchedulerConfig { use_karras_sigmas: Some(false), ..sd_scheduler(false) }
}

/// SDXL's two text encoders' configs from their shapes: CLIP ViT-L (quick_gelu) in transformers'
/// layout and OpenCLIP ViT-bigG (gelu) with its projection, all layers kept (SDXL reads the
/// penultimate hidden state and pools the last), 64 channels per head.
///
/// # Errors
/// Either encoder missing (one line naming its prefix) or an SDXL refiner's single encoder.
fn xl_text(shapes: &Shapes) -> Result<(ClipConfig, ClipConfig), String> {
    if has_prefix(shapes, "conditioner.embedders.0.model.") {
        return Err("an SDXL refiner (one OpenCLIP text encoder at 'conditioner.embedders.0.model.*'); only SDXL base runs".into());
    }
    let p = format!("{XL_CLIP_PREFIX}text_model.");
    if !has_prefix(shapes, &p) {
        return Err(format!("an SDXL checkpoint missing its first text encoder (CLIP ViT-L): no '{p}*' tensors"));
    }
    if !has_prefix(shapes, XL_OPENCLIP_PREFIX) {
        return Err(format!(
            "an SDXL checkpoint missing its second text encoder (OpenCLIP ViT-bigG): no '{XL_OPENCLIP_PREFIX}*' tensors"
        ));
    }
    let emb = format!("{p}embeddings.token_embedding.weight");
    let hidden = dim(shapes, &emb, 1)?;
    let one = ClipConfig {
        vocab_size: dim(shapes, &emb, 0)?,
        hidden_size: hidden,
        intermediate_size: dim(shapes, &format!("{p}encoder.layers.0.mlp.fc1.weight"), 0)?,
        num_hidden_layers: count(shapes, &format!("{p}encoder.layers.")),
        num_attention_heads: (hidden / 64).max(1),
        max_position_embeddings: dim(shapes, &format!("{p}embeddings.position_embedding.weight"), 0)?,
        hidden_act: "quick_gelu".into(),
        layer_norm_eps: 1e-5,
        ..ClipConfig::default()
    };
    let g = XL_OPENCLIP_PREFIX;
    let emb = format!("{g}token_embedding.weight");
    let hidden = dim(shapes, &emb, 1)?;
    let two = ClipConfig {
        vocab_size: dim(shapes, &emb, 0)?,
        hidden_size: hidden,
        intermediate_size: dim(shapes, &format!("{g}transformer.resblocks.0.mlp.c_fc.weight"), 0)?,
        num_hidden_layers: count(shapes, &format!("{g}transformer.resblocks.")),
        num_attention_heads: (hidden / 64).max(1),
        max_position_embeddings: dim(shapes, &format!("{g}positional_embedding"), 0)?,
        hidden_act: "gelu".into(),
        layer_norm_eps: 1e-5,
        // stored (width, projection)
        projection_dim: dim(shapes, &format!("{g}text_projection"), 1)?,
        ..ClipConfig::default()
    };
    for (c, cfg) in [("text", &one), ("text_2", &two)] {
        if cfg.num_hidden_layers < 2 {
            return Err(format!("{c}: {} layers; SDXL reads the penultimate one, so 2 or more are needed", cfg.num_hidden_layers));
        }
    }
    Ok((one, two))
}

/// Infers the configs from the shapes and builds the name maps.
///
/// # Errors
/// Not an LDM checkpoint, or one whose shapes do not fit SD 1.x/2.x: the message names a few keys.
pub fn layout(shapes: &Shapes, hints: &LdmHints, metadata: &BTreeMap<String, String>) -> Result<LdmLayout, String> {
    if !is_ldm(shapes) {
        let some: Vec<&str> = shapes.keys().take(4).map(String::as_str).collect();
        return Err(format!(
            "not a Stable Diffusion checkpoint in the original LDM layout (no '{UNET_PREFIX}*' and '{VAE_PREFIX}*' keys; first keys: {})",
            some.join(", ")
        ));
    }
    let tower = text_tower(shapes).ok_or_else(|| {
        format!("no text encoder ('{CLIP_PREFIX}*', '{OPENCLIP_PREFIX}*' or SDXL's 'conditioner.embedders.*'); other layouts are not supported")
    })?;
    let mut notes = Vec::new();

    // ---- text encoder(s)
    let mut text_2 = None;
    let text = match tower {
        TextTower::Xl => {
            let (one, two) = xl_text(shapes)?;
            text_2 = Some(two);
            one
        }
        TextTower::Clip => {
            let p = if has_prefix(shapes, &format!("{CLIP_PREFIX}text_model.")) {
                format!("{CLIP_PREFIX}text_model.")
            } else {
                CLIP_PREFIX.to_string()
            };
            let emb = format!("{p}embeddings.token_embedding.weight");
            let hidden = dim(shapes, &emb, 1)?;
            ClipConfig {
                vocab_size: dim(shapes, &emb, 0)?,
                hidden_size: hidden,
                intermediate_size: dim(shapes, &format!("{p}encoder.layers.0.mlp.fc1.weight"), 0)?,
                num_hidden_layers: count(shapes, &format!("{p}encoder.layers.")),
                num_attention_heads: (hidden / 64).max(1),
                max_position_embeddings: dim(shapes, &format!("{p}embeddings.position_embedding.weight"), 0)?,
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
                ..ClipConfig::default()
            }
        }
        TextTower::OpenClip => {
            let p = OPENCLIP_PREFIX;
            let emb = format!("{p}token_embedding.weight");
            let hidden = dim(shapes, &emb, 1)?;
            let blocks = count(shapes, &format!("{p}transformer.resblocks."));
            if blocks < 2 {
                return Err(format!("OpenCLIP text tower has {blocks} layers; SD 2.x uses all but the last, so 2 or more are needed"));
            }
            ClipConfig {
                vocab_size: dim(shapes, &emb, 0)?,
                hidden_size: hidden,
                intermediate_size: dim(shapes, &format!("{p}transformer.resblocks.0.mlp.c_fc.weight"), 0)?,
                // SD 2.x conditions on the penultimate layer's output (then the final norm)
                num_hidden_layers: blocks - 1,
                num_attention_heads: (hidden / 64).max(1),
                max_position_embeddings: dim(shapes, &format!("{p}positional_embedding"), 0)?,
                hidden_act: "gelu".into(),
                layer_norm_eps: 1e-5,
                ..ClipConfig::default()
            }
        }
    };
    for (c, cfg) in std::iter::once(("text", &text)).chain(text_2.as_ref().map(|t| ("text_2", t))) {
        if cfg.hidden_size < 64 {
            notes.push(format!("{c}: hidden size {} < 64, so one attention head (CLIP uses 64 per head)", cfg.hidden_size));
        }
    }

    // ---- denoiser
    let (mut unet, layers) = unet_config(shapes, hints, &mut notes)?;
    match (&text_2, unet.projection_class_embeddings_input_dim) {
        (Some(two), Some(input)) => {
            let ids = input.checked_sub(two.projection_dim).filter(|n| n % 6 == 0 && *n > 0).ok_or_else(|| {
                format!(
                    "'{UNET_PREFIX}label_emb.0.0.weight' takes {input} inputs, which is not the second text encoder's pooled {} plus six size ids",
                    two.projection_dim
                )
            })?;
            unet.addition_time_embed_dim = Some(ids / 6);
            let width = text.hidden_size + two.hidden_size;
            if unet.cross_attention_dim != width {
                return Err(format!(
                    "the UNet's cross-attention takes text {} wide but the two text encoders give {} + {} = {width}",
                    unet.cross_attention_dim, text.hidden_size, two.hidden_size
                ));
            }
        }
        (Some(_), None) => {
            return Err(format!("SDXL text encoders but the UNet has no '{UNET_PREFIX}label_emb.*' (SDXL's pooled and size conditioning)"));
        }
        (None, Some(_)) => {
            return Err(format!(
                "the UNet takes SDXL's conditioning ('{UNET_PREFIX}label_emb.*') but the file has no SDXL text encoders ('{XL_CLIP_PREFIX}*', '{XL_OPENCLIP_PREFIX}*')"
            ));
        }
        (None, None) => {}
    }

    // ---- autoencoder
    let e = format!("{VAE_PREFIX}encoder.");
    let vae_levels = count(shapes, &format!("{e}down."));
    let vae_channels = (0..vae_levels)
        .map(|i| dim(shapes, &format!("{e}down.{i}.block.0.conv1.weight"), 0))
        .collect::<Result<Vec<_>, _>>()?;
    let vae_groups = norm_groups(&vae_channels, "vae", &mut notes);
    let mut vae = VaeConfig {
        in_channels: dim(shapes, &format!("{e}conv_in.weight"), 1)?,
        out_channels: dim(shapes, &format!("{VAE_PREFIX}decoder.conv_out.weight"), 0)?,
        down_block_types: vec!["DownEncoderBlock2D".into(); vae_levels],
        up_block_types: vec!["UpDecoderBlock2D".into(); vae_levels],
        block_out_channels: vae_channels,
        layers_per_block: count(shapes, &format!("{e}down.0.block.")),
        latent_channels: dim(shapes, &format!("{VAE_PREFIX}post_quant_conv.weight"), 0)?,
        // LDM's Normalize is GroupNorm(32) everywhere
        norm_num_groups: vae_groups,
        ..VaeConfig::default()
    };
    if let Some(s) = hints.scale_factor {
        vae.scaling_factor = s;
    } else if tower == TextTower::Xl {
        // SDXL's autoencoder (sd_xl_base.yaml's scale_factor)
        vae.scaling_factor = 0.13025;
    }

    // ---- scheduler: SD's training schedule; v-prediction from the yaml, else by the SD 2.x rule
    let v = match hints.v_prediction {
        Some(v) => v,
        None if tower == TextTower::OpenClip => {
            // diffusers' rule: SD 2.x checkpoints are the 768-v model unless they are the 512 base
            // (saved at global step 875000)
            let base = metadata.get("global_step").is_some_and(|s| s == "875000");
            notes.push(format!(
                "scheduler: no .yaml beside the file; {} assumed for an SD 2.x checkpoint",
                if base { "epsilon prediction (global_step 875000, the 512 base)" } else { "v-prediction" }
            ));
            !base
        }
        None => false,
    };
    let scheduler = if tower == TextTower::Xl { xl_scheduler() } else { sd_scheduler(v) };

    let mut names: [HashMap<String, Source>; 4] = Default::default();
    match tower {
        TextTower::Clip => text_map(shapes, CLIP_PREFIX, false, false, &mut names[0]),
        TextTower::OpenClip => text_map(shapes, OPENCLIP_PREFIX, true, false, &mut names[0]),
        TextTower::Xl => {
            text_map(shapes, XL_CLIP_PREFIX, false, false, &mut names[0]);
            text_map(shapes, XL_OPENCLIP_PREFIX, true, true, &mut names[3]);
        }
    }
    unet_map(shapes, layers, &mut names[1]);
    vae_map(shapes, vae_levels, &mut names[2]);
    Ok(LdmLayout { unet, vae, text, text_2, tower, scheduler, names, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(keys: &[(&str, &[u64])]) -> Shapes {
        keys.iter().map(|(k, s)| (k.to_string(), s.to_vec())).collect()
    }

    #[test]
    fn unet_names_follow_diffusers() {
        let s = shapes(&[
            ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight", &[32]),
            ("model.diffusion_model.input_blocks.1.1.proj_in.weight", &[32, 32, 1, 1]),
            ("model.diffusion_model.input_blocks.2.0.op.weight", &[32, 32, 3, 3]),
            ("model.diffusion_model.input_blocks.3.0.skip_connection.weight", &[64, 32, 1, 1]),
            ("model.diffusion_model.middle_block.2.emb_layers.1.bias", &[64]),
            ("model.diffusion_model.output_blocks.1.0.out_layers.3.weight", &[64, 64, 3, 3]),
            ("model.diffusion_model.output_blocks.1.1.conv.weight", &[64, 64, 3, 3]),
            ("model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_q.weight", &[32, 32]),
            ("model.diffusion_model.output_blocks.3.2.conv.weight", &[32, 32, 3, 3]),
            ("model.diffusion_model.time_embed.2.bias", &[128]),
        ]);
        let mut m = HashMap::new();
        unet_map(&s, 1, &mut m);
        let name = |d: &str| m.get(d).map(|s| s.key.as_str());
        assert_eq!(name("down_blocks.0.resnets.0.norm1.weight"), Some("model.diffusion_model.input_blocks.1.0.in_layers.0.weight"));
        assert!(name("down_blocks.0.attentions.0.proj_in.weight").is_some());
        assert!(name("down_blocks.0.downsamplers.0.conv.weight").is_some());
        assert!(name("down_blocks.1.resnets.0.conv_shortcut.weight").is_some());
        assert!(name("mid_block.resnets.1.time_emb_proj.bias").is_some());
        assert!(name("up_blocks.0.resnets.1.conv2.weight").is_some());
        assert!(name("up_blocks.0.upsamplers.0.conv.weight").is_some());
        assert!(name("up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q.weight").is_some());
        assert!(name("up_blocks.1.upsamplers.0.conv.weight").is_some());
        assert!(name("time_embedding.linear_2.bias").is_some());
        assert_eq!(m.len(), s.len());
    }

    #[test]
    fn openclip_fused_projection_splits_in_three() {
        let s = shapes(&[
            ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", &[96, 32]),
            ("cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.bias", &[64]),
            ("cond_stage_model.model.positional_embedding", &[77, 32]),
            ("cond_stage_model.model.text_projection", &[32, 32]),
        ]);
        let mut m = HashMap::new();
        text_map(&s, OPENCLIP_PREFIX, true, false, &mut m);
        assert_eq!(m["text_model.encoder.layers.0.self_attn.k_proj.weight"].take, Take::Third(1));
        assert!(m.contains_key("text_model.encoder.layers.0.mlp.fc1.bias"));
        assert!(m.contains_key("text_model.embeddings.position_embedding.weight"));
        assert_eq!(m.len(), 5, "text_projection is not used: {m:?}");
    }

    #[test]
    fn sdxl_text_encoders_map_apart() {
        let s = shapes(&[
            ("conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight", &[64, 32]),
            ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", &[144, 48]),
            ("conditioner.embedders.1.model.text_projection", &[48, 32]),
            ("conditioner.embedders.1.model.logit_scale", &[]),
            ("model.diffusion_model.label_emb.0.2.weight", &[32, 32]),
        ]);
        let (mut one, mut two, mut unet) = (HashMap::new(), HashMap::new(), HashMap::new());
        text_map(&s, XL_CLIP_PREFIX, false, false, &mut one);
        text_map(&s, XL_OPENCLIP_PREFIX, true, true, &mut two);
        unet_map(&s, 1, &mut unet);
        assert_eq!(one.keys().collect::<Vec<_>>(), ["text_model.encoder.layers.0.mlp.fc1.weight"]);
        assert_eq!(two["text_projection.weight"].take, Take::Transpose);
        assert_eq!(two["text_model.encoder.layers.0.self_attn.v_proj.weight"].take, Take::Third(2));
        assert_eq!(two.len(), 4, "logit_scale is not used: {two:?}");
        assert!(unet.contains_key("add_embedding.linear_2.weight"));
        assert_eq!(text_tower(&s), Some(TextTower::Xl));
    }

    #[test]
    fn sdxl_refiner_and_missing_encoders_are_named() {
        let refiner = shapes(&[("conditioner.embedders.0.model.text_projection", &[48, 32])]);
        assert!(xl_text(&refiner).unwrap_err().contains("refiner"));
        let no_first = shapes(&[("conditioner.embedders.1.model.positional_embedding", &[77, 48])]);
        let e = xl_text(&no_first).unwrap_err();
        assert!(e.contains("first text encoder") && e.contains(XL_CLIP_PREFIX), "{e}");
    }

    #[test]
    fn vae_levels_reverse_on_the_decoder() {
        let s = shapes(&[
            ("first_stage_model.decoder.up.0.block.1.nin_shortcut.weight", &[16, 32, 1, 1]),
            ("first_stage_model.decoder.up.1.upsample.conv.weight", &[32, 32, 3, 3]),
            ("first_stage_model.encoder.mid.attn_1.q.weight", &[32, 32, 1, 1]),
            ("first_stage_model.encoder.norm_out.bias", &[32]),
            ("first_stage_model.post_quant_conv.weight", &[4, 4, 1, 1]),
        ]);
        let mut m = HashMap::new();
        vae_map(&s, 2, &mut m);
        assert!(m.contains_key("decoder.up_blocks.1.resnets.1.conv_shortcut.weight"));
        assert!(m.contains_key("decoder.up_blocks.0.upsamplers.0.conv.weight"));
        assert_eq!(m["encoder.mid_block.attentions.0.to_q.weight"].take, Take::Squeeze1x1);
        assert!(m.contains_key("encoder.conv_norm_out.bias"));
        assert!(m.contains_key("post_quant_conv.weight"));
    }

    #[test]
    fn yaml_hints_are_read() {
        let h = LdmHints::from_yaml(
            "model:\n  params:\n    parameterization: \"v\"\n    scale_factor: 0.18215\n    unet_config:\n      params:\n        num_head_channels: 64 # need to fix for flash-attn\n        num_heads: -1\n",
        );
        assert_eq!(h.v_prediction, Some(true));
        assert_eq!(h.num_head_channels, Some(64));
        assert_eq!(h.num_heads, Some(-1));
        assert_eq!(h.scale_factor, Some(0.18215));
    }

    #[test]
    fn unknown_layout_names_keys() {
        let s = shapes(&[("transformer.h.0.attn.weight", &[4, 4]), ("lm_head.weight", &[4, 4])]);
        let e = layout(&s, &LdmHints::default(), &BTreeMap::new()).unwrap_err();
        assert!(e.contains("lm_head.weight") && e.contains("LDM"), "{e}");
    }
}
