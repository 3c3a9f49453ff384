//! The conditional denoiser (diffusers' `UNet2DConditionModel`) as SD 1.x, 2.x and XL configure
//! it, built from the folder's `unet/config.json`: `CrossAttnDownBlock2D`/`DownBlock2D` down
//! blocks, a `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`/`UpBlock2D` up blocks, conv or linear
//! projections, `attention_head_dim` and `transformer_layers_per_block` as one number or one per
//! block, and SDXL's `addition_embed_type = "text_time"` (pooled text embedding and size/crop
//! ids through `add_time_proj` and `add_embedding`, added to the time embedding).

use candle_core::{Module, Result, Tensor};
use serde::Deserialize;

use super::blocks::{Downsample2D, ResnetBlock2D, SpatialTransformer, Upsample2D};
use super::offload::{BlockPlacement, CondCache, Slot, SlotKind};
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
    /// SDXL (`text_time`): width of the sinusoidal features of each of the six size/crop ids.
    pub addition_time_embed_dim: Option<usize>,
    /// SDXL (`text_time`): input width of `add_embedding` (pooled text width + 6 ×
    /// `addition_time_embed_dim`).
    pub projection_class_embeddings_input_dim: Option<usize>,
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
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
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
        if let Some(v) = &self.class_embed_type {
            return Err(format!("class_embed_type = {v} is not supported"));
        }
        let sized = |d: Option<usize>| d.is_some_and(|d| d > 0);
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time")
                if sized(self.addition_time_embed_dim) && sized(self.projection_class_embeddings_input_dim) => {}
            Some("text_time") => {
                return Err("addition_embed_type = text_time needs addition_time_embed_dim and \
                            projection_class_embeddings_input_dim (both at least 1)"
                    .into());
            }
            Some(other) => {
                return Err(format!("addition_embed_type = {other} is not supported (only SDXL's text_time)"));
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

/// One of the UNet's offloadable blocks, named and ordered as the planner groups its weights
/// ([`crate::plan::shape::ModelShape::unet_blocks`]): down blocks, the mid block, up blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockId {
    /// `down_blocks.N`.
    Down(usize),
    /// `mid_block`.
    Mid,
    /// `up_blocks.N`.
    Up(usize),
}

impl BlockId {
    /// The tensor-name prefix of the block (`down_blocks.0`, `mid_block`, `up_blocks.2`), which is
    /// also the planner's label for it.
    pub fn label(self) -> String {
        match self {
            BlockId::Down(i) => format!("down_blocks.{i}"),
            BlockId::Mid => "mid_block".into(),
            BlockId::Up(i) => format!("up_blocks.{i}"),
        }
    }
}

/// A down, mid or up block: resnets, optional transformers after each, optional resampler.
#[derive(Debug)]
pub struct UnetBlock {
    id: BlockId,
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

/// What every block of one UNet call shares: the time embedding, the text context and the
/// attention slice size.
pub struct Cond<'a> {
    pub emb: &'a Tensor,
    pub context: &'a Tensor,
    pub slice: usize,
    /// Asked before each resnet: an error (a cancel) ends the call there.
    pub check: &'a dyn Fn() -> Result<()>,
}

impl UnetBlock {
    /// Runs the block on `h`. `skips` are the skip connections an up block joins, in the order
    /// it takes them (one per resnet); `size` is where an up block's upsampler goes (the size of
    /// the next skip). Returns the output and the skip connections a down block makes.
    ///
    /// # Errors
    /// Mismatched shapes, too few skips, tensor errors.
    pub fn forward(
        &self,
        h: &Tensor,
        cond: &Cond,
        skips: Vec<Tensor>,
        size: Option<(usize, usize)>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = h.clone();
        let mut made = Vec::new();
        match self.id {
            BlockId::Mid => {
                (cond.check)()?;
                h = self.resnets[0].forward(&h, Some(cond.emb))?;
                if let Some(a) = self.attentions.first() {
                    h = a.forward(&h, cond.context, cond.slice)?;
                }
                (cond.check)()?;
                h = self.resnets[1].forward(&h, Some(cond.emb))?;
            }
            BlockId::Down(_) => {
                for (j, r) in self.resnets.iter().enumerate() {
                    (cond.check)()?;
                    h = r.forward(&h, Some(cond.emb))?;
                    if let Some(a) = self.attentions.get(j) {
                        h = a.forward(&h, cond.context, cond.slice)?;
                    }
                    made.push(h.clone());
                }
                if let Some(d) = &self.down {
                    h = d.forward(&h)?;
                    made.push(h.clone());
                }
            }
            BlockId::Up(_) => {
                if skips.len() != self.resnets.len() {
                    return Err(candle_core::Error::Msg("unet: skip connections ran out".into()));
                }
                for ((j, r), skip) in self.resnets.iter().enumerate().zip(&skips) {
                    (cond.check)()?;
                    h = r.forward(&Tensor::cat(&[&h, skip], 1)?, Some(cond.emb))?;
                    if let Some(a) = self.attentions.get(j) {
                        h = a.forward(&h, cond.context, cond.slice)?;
                    }
                }
                if let Some(u) = &self.up {
                    // upsample to the size of the skip it will be joined with (odd sizes round down
                    // on the way down, so ×2 is not always right)
                    h = u.forward(&h, size)?;
                }
            }
        }
        Ok((h, made))
    }
}

impl UnetConfig {
    /// True for SDXL-style UNets, which take a pooled text embedding and size/crop ids
    /// ([`AddedCond`]) besides the text context.
    pub fn is_text_time(&self) -> bool {
        self.addition_embed_type.as_deref() == Some("text_time")
    }

    /// Width of the pooled text embedding a `text_time` UNet expects: `add_embedding`'s input
    /// less the six size/crop ids' features.
    pub fn pooled_width(&self) -> Option<usize> {
        let ids = 6 * self.addition_time_embed_dim?;
        self.projection_class_embeddings_input_dim?.checked_sub(ids)
    }

    /// The offloadable blocks in execution order.
    pub fn block_ids(&self) -> Vec<BlockId> {
        let n = self.block_out_channels.len();
        let mid = self.mid_block_type.is_some().then_some(BlockId::Mid);
        (0..n).map(BlockId::Down).chain(mid).chain((0..n).map(BlockId::Up)).collect()
    }

    /// Skip connections block `id` joins (up blocks: one per resnet).
    pub fn skips_taken(&self, id: BlockId) -> usize {
        match id {
            BlockId::Up(i) => self.layers_per_block.get(self.block_out_channels.len() - 1 - i) + 1,
            _ => 0,
        }
    }

    fn transformer(&self, ch: usize, i: usize, vb: Weights) -> Result<SpatialTransformer> {
        let heads = self.heads(i);
        SpatialTransformer::new(
            ch,
            heads,
            ch / heads,
            self.transformer_layers_per_block.get(i),
            self.cross_attention_dim,
            self.norm_num_groups,
            self.use_linear_projection,
            self.upcast_attention,
            vb,
        )
    }

    /// Builds block `id` from the UNet's root weights `vb` (its tensors are read — and placed on
    /// `vb`'s device — now).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn build_block(&self, id: BlockId, vb: Weights) -> Result<UnetBlock> {
        let boc = &self.block_out_channels;
        let n = boc.len();
        let temb = boc[0] * 4;
        let (groups, eps) = (self.norm_num_groups, self.norm_eps);
        let vb = vb.pp(id.label());
        let mut b = UnetBlock { id, resnets: vec![], attentions: vec![], down: None, up: None };
        match id {
            BlockId::Down(i) => {
                let in_ch = if i == 0 { boc[0] } else { boc[i - 1] };
                let out_ch = boc[i];
                for j in 0..self.layers_per_block.get(i) {
                    let rin = if j == 0 { in_ch } else { out_ch };
                    b.resnets.push(ResnetBlock2D::new(rin, out_ch, Some(temb), groups, eps, 1.0, vb.pp("resnets").pp(j))?);
                    if self.down_block_types[i] == "CrossAttnDownBlock2D" {
                        b.attentions.push(self.transformer(out_ch, i, vb.pp("attentions").pp(j))?);
                    }
                }
                if i + 1 < n {
                    b.down = Some(Downsample2D::new(out_ch, self.downsample_padding, vb.pp("downsamplers").pp(0))?);
                }
            }
            BlockId::Mid => {
                let last = boc[n - 1];
                let msf = self.mid_block_scale_factor;
                for j in 0..2 {
                    b.resnets.push(ResnetBlock2D::new(last, last, Some(temb), groups, eps, msf, vb.pp("resnets").pp(j))?);
                }
                b.attentions.push(self.transformer(last, n - 1, vb.pp("attentions").pp(0))?);
            }
            BlockId::Up(i) => {
                let rev: Vec<usize> = boc.iter().rev().copied().collect();
                let prev = rev[i.saturating_sub(1)];
                let out_ch = rev[i];
                let in_ch = rev[(i + 1).min(n - 1)];
                let d = n - 1 - i; // the matching down block, for per-block values
                let layers = self.skips_taken(id);
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
                    if self.up_block_types[i] == "CrossAttnUpBlock2D" {
                        b.attentions.push(self.transformer(out_ch, d, vb.pp("attentions").pp(j))?);
                    }
                }
                if i + 1 < n {
                    b.up = Some(Upsample2D::new(out_ch, vb.pp("upsamplers").pp(0))?);
                }
            }
        }
        Ok(b)
    }
}

/// SDXL's extra conditioning for one UNet call (diffusers' `added_cond_kwargs`).
pub struct AddedCond<'a> {
    /// The pooled, projected text embedding of the second text encoder, `(B, P)`.
    pub text_embeds: &'a Tensor,
    /// Original size, crop top-left and target size, `(B, 6)` (height before width).
    pub time_ids: &'a Tensor,
}

/// SDXL's `add_time_proj` (sinusoidal features of each id) and `add_embedding` (linear, SiLU,
/// linear), whose output is added to the time embedding.
struct AddEmbedding {
    time_dim: usize,
    linear_1: Linear,
    linear_2: Linear,
}

/// The UNet: a resident stem (input conv, time embedding, SDXL's added embedding, output norm
/// and conv) and its blocks, each held as its [`Slot`] says.
pub struct Unet {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    add_embedding: Option<AddEmbedding>,
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    blocks: Vec<(BlockId, Slot)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Query rows per attention slice (0 = all at once).
    pub attention_slice: usize,
    /// The config it was built from.
    pub config: UnetConfig,
}

impl Unet {
    /// Builds the UNet from `cfg` with tensors under `vb` named as diffusers saves them, every
    /// block resident on `vb`'s device.
    ///
    /// # Errors
    /// An unsupported config (named), missing or mis-shaped tensors.
    pub fn new(cfg: &UnetConfig, vb: Weights<'static>) -> Result<Self> {
        Self::with_offload(cfg, vb, &BlockPlacement::resident())
    }

    /// Builds the UNet with its blocks placed as `placement` says: the first
    /// `placement.resident` blocks (in execution order) on `vb`'s device, the rest split to the
    /// CPU or streamed from `vb`'s source at each use.
    ///
    /// # Errors
    /// An unsupported config (named), missing or mis-shaped tensors.
    pub fn with_offload(cfg: &UnetConfig, vb: Weights<'static>, placement: &BlockPlacement) -> Result<Self> {
        cfg.check().map_err(candle_core::Error::Msg)?;
        let boc = &cfg.block_out_channels;
        let temb = boc[0] * 4;
        let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let blocks = cfg
            .block_ids()
            .into_iter()
            .enumerate()
            .map(|(k, id)| Ok((id, Slot::new(cfg, id, k, &vb, placement)?)))
            .collect::<Result<Vec<_>>>()?;
        let add_embedding = match (cfg.is_text_time(), cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim) {
            (true, Some(time_dim), Some(input)) => Some(AddEmbedding {
                time_dim,
                linear_1: Linear::new(input, temb, true, vb.pp("add_embedding").pp("linear_1"))?,
                linear_2: Linear::new(temb, temb, true, vb.pp("add_embedding").pp("linear_2"))?,
            }),
            _ => None,
        };
        Ok(Self {
            conv_in: Conv2d::new(cfg.in_channels, boc[0], 3, 1, 1, vb.pp("conv_in"))?,
            time_linear_1: Linear::new(boc[0], temb, true, vb.pp("time_embedding").pp("linear_1"))?,
            time_linear_2: Linear::new(temb, temb, true, vb.pp("time_embedding").pp("linear_2"))?,
            add_embedding,
            time_channels: boc[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            blocks,
            conv_norm_out: GroupNorm::new(groups, boc[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::new(boc[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
            attention_slice: 0,
            config: cfg.clone(),
        })
    }

    /// Weight bytes of the blocks split onto the CPU.
    pub fn split_bytes(&self) -> u64 {
        self.blocks.iter().map(|(_, s)| s.split_bytes()).sum()
    }

    /// How each block is held, in execution order (label, slot kind).
    pub fn slots(&self) -> Vec<(String, SlotKind)> {
        self.blocks.iter().map(|(id, s)| (id.label(), s.kind())).collect()
    }

    /// Sinusoidal timestep features `(B, C)` as diffusers' `get_timestep_embedding` computes
    /// them in f32.
    fn time_features(&self, timestep: f64, batch: usize, device: &candle_core::Device) -> Result<Tensor> {
        let v = self.sinusoid(timestep as f32, self.time_channels);
        Tensor::from_vec(v, (1, self.time_channels), device)?.repeat((batch, 1))
    }

    /// diffusers' `get_timestep_embedding` of one value `t` at `width` channels, in f32.
    fn sinusoid(&self, t: f32, width: usize) -> Vec<f32> {
        let half = width / 2;
        let mut v = Vec::with_capacity(width);
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
        v.resize(width, 0.0); // odd widths are zero-padded
        v
    }

    /// SDXL's added embedding `(B, T)`: each of the six ids as sinusoidal features, after the
    /// pooled text embedding, through `add_embedding`.
    fn added_embedding(&self, add: &AddEmbedding, added: &AddedCond, dtype: candle_core::DType) -> Result<Tensor> {
        let (b, n) = added.time_ids.dims2()?;
        let ids = added.time_ids.to_dtype(candle_core::DType::F32)?.to_device(&candle_core::Device::Cpu)?;
        let ids = ids.flatten_all()?.to_vec1::<f32>()?;
        let feats: Vec<f32> = ids.iter().flat_map(|&t| self.sinusoid(t, add.time_dim)).collect();
        let device = added.text_embeds.device();
        let time = Tensor::from_vec(feats, (b, n * add.time_dim), device)?.to_dtype(dtype)?;
        let x = Tensor::cat(&[&added.text_embeds.to_dtype(dtype)?, &time], 1)?;
        add.linear_2.forward(&add.linear_1.forward(&x)?.silu()?)
    }

    /// Predicts noise (or v) for `x` `(B, C, H, W)` at `timestep`, conditioned on `context`
    /// `(B, L, D)`.
    ///
    /// # Errors
    /// Mismatched shapes and tensor errors.
    pub fn forward(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_checked(x, timestep, context, &|| Ok(()))
    }

    /// [`Self::forward`], asking `check` before each resnet (a cancel check: on a CPU a step of
    /// an SD 1.5-sized UNet takes seconds, one resnet a fraction of one).
    ///
    /// # Errors
    /// As [`Self::forward`], or what `check` returns.
    pub fn forward_checked(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<Tensor> {
        self.forward_added(x, timestep, context, None, check)
    }

    /// [`Self::forward_checked`] with SDXL's extra conditioning, which a `text_time` UNet needs
    /// and others refuse.
    ///
    /// # Errors
    /// As [`Self::forward`]; `added` missing for a UNet that needs it, or given to one that
    /// takes none.
    pub fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<Tensor> {
        let slice = self.attention_slice;
        let b = x.dim(0)?;
        let t = self.time_features(timestep, b, x.device())?.to_dtype(x.dtype())?;
        let mut emb = self.time_linear_2.forward(&self.time_linear_1.forward(&t)?.silu()?)?;
        match (&self.add_embedding, added) {
            (Some(add), Some(added)) => emb = (emb + self.added_embedding(add, added, x.dtype())?)?,
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("unet: addition_embed_type = text_time needs text_embeds and time_ids"),
            (None, Some(_)) => candle_core::bail!("unet: text_embeds and time_ids given to a UNet that takes none"),
        }

        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        let mut cond = CondCache::new(Cond { emb: &emb, context, slice, check });
        for (id, slot) in &self.blocks {
            let taken = self.config.skips_taken(*id);
            let mut joined = Vec::with_capacity(taken);
            for _ in 0..taken {
                joined.push(
                    skips.pop().ok_or_else(|| candle_core::Error::Msg("unet: skip connections ran out".into()))?,
                );
            }
            let size = skips.last().map(|s| (s.dim(2).unwrap_or(0), s.dim(3).unwrap_or(0)));
            let (out, made) = slot.run(&self.config, *id, &h, &mut cond, joined, size)?;
            h = out;
            skips.extend(made);
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}
