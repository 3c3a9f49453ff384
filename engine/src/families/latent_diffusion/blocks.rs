//! Building blocks shared by the UNet and the VAE, named as diffusers names them:
//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D`, the spatial transformer (`Transformer2DModel`
//! with `BasicTransformerBlock`s) and the VAE's single-head attention block.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::LayerNorm;

use crate::nn::attention::{attention, merge_heads, split_heads};
use crate::nn::{Conv2d, GroupNorm, Linear, TileGrid, Weights, geglu, layer_norm};

/// `ResnetBlock2D`: two norm-SiLU-conv stages, an optional time-embedding shift, a shortcut.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// `temb_channels` = None for the VAE's blocks, which take no time embedding.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
        vb: Weights,
    ) -> Result<Self> {
        let conv_shortcut = if in_channels != out_channels {
            Some(Conv2d::new(in_channels, out_channels, 1, 1, 0, vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(groups, in_channels, eps, vb.pp("norm1"))?,
            conv1: Conv2d::new(in_channels, out_channels, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: match temb_channels {
                Some(t) => Some(Linear::new(t, out_channels, true, vb.pp("time_emb_proj"))?),
                None => None,
            },
            norm2: GroupNorm::new(groups, out_channels, eps, vb.pp("norm2"))?,
            conv2: Conv2d::new(out_channels, out_channels, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut,
            output_scale_factor,
        })
    }

    /// `x` `(B, C, H, W)`; `temb` `(B, T)` for UNet blocks.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = match (&self.time_emb_proj, temb) {
            (Some(p), Some(t)) => h.broadcast_add(&p.forward(&t.silu()?)?.unsqueeze(2)?.unsqueeze(3)?)?,
            _ => h,
        };
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 { Ok(out) } else { out / self.output_scale_factor }
    }

    /// [`Self::forward`] without a time embedding (the VAE's blocks) on a map held as tiles: the
    /// same result, with each norm's statistics taken over the whole map and each convolution
    /// reading its border from the neighbouring tiles. Holds the input and `conv1`'s output in
    /// full; the second convolution's output replaces the input tile by tile.
    ///
    /// # Errors
    /// A block that takes a time embedding; tensor errors.
    pub fn forward_tiled(&self, x: TileGrid) -> Result<TileGrid> {
        if self.time_emb_proj.is_some() {
            candle_core::bail!("resnet block: a block with a time embedding cannot run on tiles");
        }
        let stats = x.group_stats(&self.norm1)?;
        let h = x.conv(&self.conv1, Some((&self.norm1, &stats)), |_, t| Ok(t))?;
        let stats = h.group_stats(&self.norm2)?;
        let mut skip: Vec<Option<Tensor>> = x.into_tiles().into_iter().map(Some).collect();
        h.conv(&self.conv2, Some((&self.norm2, &stats)), |i, t| {
            let Some(x) = skip.get_mut(i).and_then(Option::take) else {
                candle_core::bail!("resnet block: tile {i} has no input");
            };
            let shortcut = match &self.conv_shortcut {
                Some(c) => c.forward(&x)?,
                None => x,
            };
            let out = (shortcut + t)?;
            if self.output_scale_factor == 1.0 { Ok(out) } else { out / self.output_scale_factor }
        })
    }
}

/// `Downsample2D` with a convolution of stride 2 (`downsamplers.0.conv`). The VAE's uses padding 0
/// after padding the right and bottom by one; the UNet's pads 1 on every side.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric: bool,
}

impl Downsample2D {
    /// `padding` as in the config's `downsample_padding` (0 means the VAE's asymmetric padding).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(channels: usize, padding: usize, vb: Weights) -> Result<Self> {
        Ok(Self { conv: Conv2d::new(channels, channels, 3, 2, padding, vb.pp("conv"))?, asymmetric: padding == 0 })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.asymmetric {
            let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// `Upsample2D`: nearest-neighbour ×2 (or to a given size), then a 3×3 convolution.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(channels: usize, vb: Weights) -> Result<Self> {
        Ok(Self { conv: Conv2d::new(channels, channels, 3, 1, 1, vb.pp("conv"))? })
    }

    /// Upsamples to `size` (H, W), or to twice the input's size when `None`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }

    /// [`Self::forward`] ×2 on a map held as tiles: the same result, each tile's convolution
    /// reading its border from its neighbours.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn forward_tiled(&self, x: &TileGrid) -> Result<TileGrid> {
        x.upsample_conv(&self.conv)
    }
}

/// diffusers' `Attention` as the UNet uses it: multi-head, no q/k/v bias, `to_out.0` with bias.
#[derive(Debug)]
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    upcast: bool,
}

impl CrossAttention {
    fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        dim_head: usize,
        upcast: bool,
        vb: Weights,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        Ok(Self {
            to_q: Linear::new(query_dim, inner, false, vb.pp("to_q"))?,
            to_k: Linear::new(context_dim, inner, false, vb.pp("to_k"))?,
            to_v: Linear::new(context_dim, inner, false, vb.pp("to_v"))?,
            to_out: Linear::new(inner, query_dim, true, vb.pp("to_out").pp(0))?,
            heads,
            scale: 1.0 / (dim_head as f64).sqrt(),
            upcast,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>, slice: usize) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = split_heads(&self.to_q.forward(x)?, self.heads)?;
        let k = split_heads(&self.to_k.forward(ctx)?, self.heads)?;
        let v = split_heads(&self.to_v.forward(ctx)?, self.heads)?;
        // `upcast_attention` (SD 2.1): scores and softmax in f32 when computing in a half type,
        // where they would otherwise overflow
        let o = if self.upcast && q.dtype() != DType::F32 {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            attention(&f(&q)?, &f(&k)?, &f(&v)?, self.scale, None, slice)?.to_dtype(q.dtype())?
        } else {
            attention(&q, &k, &v, self.scale, None, slice)?
        };
        self.to_out.forward(&merge_heads(&o, self.heads)?)
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each pre-norm.
#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn new(
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
        upcast: bool,
        vb: Weights,
    ) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: CrossAttention::new(dim, dim, heads, dim_head, upcast, vb.pp("attn1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: CrossAttention::new(dim, context_dim, heads, dim_head, upcast, vb.pp("attn2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_proj: Linear::new(dim, inner * 2, true, vb.pp("ff").pp("net").pp(0).pp("proj"))?,
            ff_out: Linear::new(inner, dim, true, vb.pp("ff").pp("net").pp(2))?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, slice: usize) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None, slice)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(context), slice)? + &x)?;
        let h = self.ff_proj.forward(&self.norm3.forward(&x)?)?;
        self.ff_out.forward(&geglu(&h)?)? + x
    }
}

/// A 1×1 convolution or a linear layer, for the spatial transformer's `proj_in`/`proj_out`.
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// `Transformer2DModel` on continuous input: group norm, `proj_in`, transformer blocks, `proj_out`,
/// and a residual.
#[derive(Debug)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
    inner: usize,
}

impl SpatialTransformer {
    /// # Errors
    /// Missing or mis-shaped tensors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: usize,
        heads: usize,
        dim_head: usize,
        layers: usize,
        context_dim: usize,
        groups: usize,
        linear_projection: bool,
        upcast_attention: bool,
        vb: Weights,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let (proj_in, proj_out) = if linear_projection {
            (
                Projection::Linear(Linear::new(channels, inner, true, vb.pp("proj_in"))?),
                Projection::Linear(Linear::new(inner, channels, true, vb.pp("proj_out"))?),
            )
        } else {
            (
                Projection::Conv(Conv2d::new(channels, inner, 1, 1, 0, vb.pp("proj_in"))?),
                Projection::Conv(Conv2d::new(inner, channels, 1, 1, 0, vb.pp("proj_out"))?),
            )
        };
        let blocks = (0..layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    inner,
                    heads,
                    dim_head,
                    context_dim,
                    upcast_attention,
                    vb.pp("transformer_blocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { norm: GroupNorm::new(groups, channels, 1e-6, vb.pp("norm"))?, proj_in, blocks, proj_out, inner })
    }

    /// `x` `(B, C, H, W)`, `context` `(B, L, D)`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn forward(&self, x: &Tensor, context: &Tensor, slice: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.norm.forward(x)?;
        let mut t = match &self.proj_in {
            Projection::Conv(p) => to_tokens(&p.forward(&n)?)?,
            Projection::Linear(p) => p.forward(&to_tokens(&n)?)?,
        };
        for block in &self.blocks {
            t = block.forward(&t, context, slice)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(p) => p.forward(&from_tokens(&t, b, self.inner, h, w)?)?,
            Projection::Linear(p) => from_tokens(&p.forward(&t)?, b, c, h, w)?,
        };
        out + x
    }
}

/// `(B, C, H, W)` → `(B, H·W, C)`, contiguous.
fn to_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// `(B, H·W, C)` → `(B, C, H, W)`, contiguous.
fn from_tokens(x: &Tensor, b: usize, c: usize, h: usize, w: usize) -> Result<Tensor> {
    x.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
}

/// The VAE's attention block: group norm, single-head attention over all pixels, residual.
/// Tensors `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`, all with bias.
#[derive(Debug)]
pub struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    channels: usize,
}

impl VaeAttention {
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(channels: usize, groups: usize, eps: f64, vb: Weights) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(groups, channels, eps, vb.pp("group_norm"))?,
            to_q: Linear::new(channels, channels, true, vb.pp("to_q"))?,
            to_k: Linear::new(channels, channels, true, vb.pp("to_k"))?,
            to_v: Linear::new(channels, channels, true, vb.pp("to_v"))?,
            to_out: Linear::new(channels, channels, true, vb.pp("to_out").pp(0))?,
            channels,
        })
    }

    /// `x` `(B, C, H, W)`; attention rows computed `slice` at a time (0 = all).
    ///
    /// # Errors
    /// Tensor errors.
    pub fn forward(&self, x: &Tensor, slice: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = to_tokens(&self.group_norm.forward(x)?)?;
        let q = self.to_q.forward(&t)?;
        let k = self.to_k.forward(&t)?;
        let v = self.to_v.forward(&t)?;
        let o = attention(&q, &k, &v, 1.0 / (self.channels as f64).sqrt(), None, slice)?;
        from_tokens(&self.to_out.forward(&o)?, b, c, h, w)? + x
    }
}
