//! The conditional denoiser (diffusers' `UNet2DConditionModel`) as SD 1.x and 2.x configure it,
//! built from the folder's `unet/config.json`: `CrossAttnDownBlock2D`/`DownBlock2D` down blocks,
//! a `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`/`UpBlock2D` up blocks, conv or linear
//! projections, `attention_head_dim` as one number or one per block.

use candle_core::{Module, Result, Tensor};
use serde::Deserialize;

use super::blocks::{Downsample2D, ResnetBlock2D, SpatialTransformer, Upsample2D};
use crate::nn::{Conv2d, GroupNorm, Linear, Weights};

/// A config value given either once for all blocks or once per block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same for every block.
    One(usize),
    /// One value per down block (in down-block order).
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for block `i` of `n`.
    fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v.get(i).or(v.last()).copied().unwrap_or(1),
        }
    }
}

/// `unet/config.json`, the fields SD 1.x/2.x UNets use; others must be absent or null.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub transformer_layers_per_block: PerBlock,
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub only_cross_attention: serde_json::Value,
    pub act_fn: String,
    pub resnet_time_scale_shift: String,
    pub time_embedding_type: String,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub sample_size: Option<usize>,
}

impl Default for UnetConfig {
    /// SD 1.5's UNet.
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            up_block_types: s(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 768,
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: false,
            only_cross_attention: serde_json::Value::Bool(false),
            act_fn: "silu".into(),
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            class_embed_type: None,
            addition_embed_type: None,
            time_cond_proj_dim: None,
            sample_size: Some(64),
        }
    }
}

impl UnetConfig {
    /// Refuses configs this implementation would run wrongly, naming the field.
    ///
    /// # Errors
    /// The first unsupported field, as a sentence.
    pub fn check(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels has {n} entries but there are {} down and {} up blocks",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for (field, v) in [
            ("class_embed_type", &self.class_embed_type),
            ("addition_embed_type (SDXL-style conditioning)", &self.addition_embed_type),
        ] {
            if let Some(v) = v {
                return Err(format!("{field} = {v} is not supported"));
            }
        }
        if self.time_cond_proj_dim.is_some() {
            return Err("time_cond_proj_dim (LCM-style guidance embedding) is not supported".into());
        }
        if self.act_fn != "silu"
            || self.resnet_time_scale_shift != "default"
            || self.time_embedding_type != "positional"
        {
            return Err(format!(
                "act_fn = {}, resnet_time_scale_shift = {}, time_embedding_type = {}: only silu/default/positional are supported",
                self.act_fn, self.resnet_time_scale_shift, self.time_embedding_type
            ));
        }
        if self.only_cross_attention != serde_json::Value::Bool(false) && !self.only_cross_attention.is_null() {
            return Err("only_cross_attention is not supported".into());
        }
        for t in self.down_block_types.iter().chain(&self.up_block_types) {
            if !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D" | "CrossAttnUpBlock2D" | "UpBlock2D") {
                return Err(format!("block type {t} is not supported"));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => Ok(()),
            Some(other) => Err(format!("mid_block_type {other} is not supported")),
        }
    }

    /// Attention heads of down block `i` (diffusers reads `attention_head_dim` as the head count
    /// when `num_attention_heads` is absent).
    fn heads(&self, i: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(i)
    }

    /// Times the UNet halves the latent size.
    pub fn downsamples(&self) -> usize {
        self.block_out_channels.len().saturating_sub(1)
    }
}

/// A down or up block: resnets, optional transformers after each, optional resampler.
#[derive(Debug)]
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

/// The UNet.
#[derive(Debug)]
pub struct Unet {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    down: Vec<Block>,
    mid_resnets: [ResnetBlock2D; 2],
    mid_attention: Option<SpatialTransformer>,
    up: Vec<Block>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Query rows per attention slice (0 = all at once).
    pub attention_slice: usize,
    /// The config it was built from.
    pub config: UnetConfig,
}

impl Unet {
    /// Builds the UNet from `cfg` with tensors under `vb` named as diffusers saves them.
    ///
    /// # Errors
    /// An unsupported config (named), missing or mis-shaped tensors.
    pub fn new(cfg: &UnetConfig, vb: Weights) -> Result<Self> {
        cfg.check().map_err(candle_core::Error::Msg)?;
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let temb = boc[0] * 4;
        let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let transformer = |ch: usize, i: usize, vb: Weights| {
            let heads = cfg.heads(i);
            SpatialTransformer::new(
                ch,
                heads,
                ch / heads,
                cfg.transformer_layers_per_block.get(i),
                cfg.cross_attention_dim,
                groups,
                cfg.use_linear_projection,
                cfg.upcast_attention,
                vb,
            )
        };

        let mut down = Vec::with_capacity(n);
        let mut out_ch = boc[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = boc[i];
            let vb = vb.pp("down_blocks").pp(i);
            let layers = cfg.layers_per_block.get(i);
            let mut b = Block { resnets: vec![], attentions: vec![], down: None, up: None };
            for j in 0..layers {
                let rin = if j == 0 { in_ch } else { out_ch };
                b.resnets.push(ResnetBlock2D::new(rin, out_ch, Some(temb), groups, eps, 1.0, vb.pp("resnets").pp(j))?);
                if kind == "CrossAttnDownBlock2D" {
                    b.attentions.push(transformer(out_ch, i, vb.pp("attentions").pp(j))?);
                }
            }
            if i + 1 < n {
                b.down = Some(Downsample2D::new(out_ch, cfg.downsample_padding, vb.pp("downsamplers").pp(0))?);
            }
            down.push(b);
        }

        let mid = vb.pp("mid_block");
        let last = boc[n - 1];
        let msf = cfg.mid_block_scale_factor;
        let mid_resnets = [
            ResnetBlock2D::new(last, last, Some(temb), groups, eps, msf, mid.pp("resnets").pp(0))?,
            ResnetBlock2D::new(last, last, Some(temb), groups, eps, msf, mid.pp("resnets").pp(1))?,
        ];
        let mid_attention = match cfg.mid_block_type {
            Some(_) => Some(transformer(last, n - 1, mid.pp("attentions").pp(0))?),
            None => None,
        };

        let mut up = Vec::with_capacity(n);
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut out_ch = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(n - 1)];
            let d = n - 1 - i; // the matching down block, for per-block values
            let layers = cfg.layers_per_block.get(d) + 1;
            let vb = vb.pp("up_blocks").pp(i);
            let mut b = Block { resnets: vec![], attentions: vec![], down: None, up: None };
            for j in 0..layers {
                let skip = if j == layers - 1 { in_ch } else { out_ch };
                let rin = if j == 0 { prev } else { out_ch };
                b.resnets.push(ResnetBlock2D::new(
                    rin + skip,
                    out_ch,
                    Some(temb),
                    groups,
                    eps,
                    1.0,
                    vb.pp("resnets").pp(j),
                )?);
                if kind == "CrossAttnUpBlock2D" {
                    b.attentions.push(transformer(out_ch, d, vb.pp("attentions").pp(j))?);
                }
            }
            if i + 1 < n {
                b.up = Some(Upsample2D::new(out_ch, vb.pp("upsamplers").pp(0))?);
            }
            up.push(b);
        }

        Ok(Self {
            conv_in: Conv2d::new(cfg.in_channels, boc[0], 3, 1, 1, vb.pp("conv_in"))?,
            time_linear_1: Linear::new(boc[0], temb, true, vb.pp("time_embedding").pp("linear_1"))?,
            time_linear_2: Linear::new(temb, temb, true, vb.pp("time_embedding").pp("linear_2"))?,
            time_channels: boc[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            down,
            mid_resnets,
            mid_attention,
            up,
            conv_norm_out: GroupNorm::new(groups, boc[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::new(boc[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
            attention_slice: 0,
            config: cfg.clone(),
        })
    }

    /// Sinusoidal timestep features `(B, C)` as diffusers' `get_timestep_embedding` computes
    /// them in f32.
    fn time_features(&self, timestep: f64, batch: usize, device: &candle_core::Device) -> Result<Tensor> {
        let half = self.time_channels / 2;
        let t = timestep as f32;
        let mut v = Vec::with_capacity(self.time_channels);
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f32.ln()) * i as f32 / (half as f32 - self.freq_shift as f32)).exp() * t)
            .collect();
        let (first, second): (Vec<f32>, Vec<f32>) = if self.flip_sin_to_cos {
            (freqs.iter().map(|a| a.cos()).collect(), freqs.iter().map(|a| a.sin()).collect())
        } else {
            (freqs.iter().map(|a| a.sin()).collect(), freqs.iter().map(|a| a.cos()).collect())
        };
        v.extend(first);
        v.extend(second);
        v.resize(self.time_channels, 0.0); // odd widths are zero-padded
        Tensor::from_vec(v, (1, self.time_channels), device)?.repeat((batch, 1))
    }

    /// Predicts noise (or v) for `x` `(B, C, H, W)` at `timestep`, conditioned on `context`
    /// `(B, L, D)`.
    ///
    /// # Errors
    /// Mismatched shapes and tensor errors.
    pub fn forward(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        let slice = self.attention_slice;
        let b = x.dim(0)?;
        let t = self.time_features(timestep, b, x.device())?.to_dtype(x.dtype())?;
        let emb = self.time_linear_2.forward(&self.time_linear_1.forward(&t)?.silu()?)?;

        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for (j, r) in block.resnets.iter().enumerate() {
                h = r.forward(&h, Some(&emb))?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h, context, slice)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &block.down {
                h = d.forward(&h)?;
                skips.push(h.clone());
            }
        }

        h = self.mid_resnets[0].forward(&h, Some(&emb))?;
        if let Some(a) = &self.mid_attention {
            h = a.forward(&h, context, slice)?;
        }
        h = self.mid_resnets[1].forward(&h, Some(&emb))?;

        for block in &self.up {
            for (j, r) in block.resnets.iter().enumerate() {
                let skip =
                    skips.pop().ok_or_else(|| candle_core::Error::Msg("unet: skip connections ran out".into()))?;
                h = r.forward(&Tensor::cat(&[&h, &skip], 1)?, Some(&emb))?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h, context, slice)?;
                }
            }
            if let Some(u) = &block.up {
                // upsample to the size of the skip it will be joined with (odd sizes round down on
                // the way down, so ×2 is not always right)
                let size = skips.last().map(|s| (s.dim(2).unwrap_or(0), s.dim(3).unwrap_or(0)));
                h = u.forward(&h, size)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}
