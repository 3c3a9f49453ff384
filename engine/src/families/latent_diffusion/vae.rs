//! The KL autoencoder (diffusers' `AutoencoderKL`) built from `vae/config.json`: an encoder to the
//! latent distribution's mean and a decoder from latents to pixels, with `scaling_factor`.

use candle_core::{Module, Result, Tensor};
use serde::Deserialize;

use super::blocks::{Downsample2D, ResnetBlock2D, Upsample2D, VaeAttention};
use crate::nn::{Conv2d, GroupNorm, TileGrid, Weights};

/// `vae/config.json`, the fields an SD 1.x/2.x autoencoder uses.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    pub act_fn: String,
    /// The autoencoder overflows in f16; diffusers decodes it in f32.
    pub force_upcast: bool,
}

impl Default for VaeConfig {
    /// SD 1.x/2.x's autoencoder.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            act_fn: "silu".into(),
            force_upcast: true,
        }
    }
}

impl VaeConfig {
    /// Pixels per latent pixel along each side: 2^(blocks − 1), 8 for SD.
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Refuses configs this implementation would run wrongly.
    ///
    /// # Errors
    /// The first unsupported field, as a sentence.
    pub fn check(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!("vae: block_out_channels has {n} entries, block type lists differ"));
        }
        if self.act_fn != "silu" {
            return Err(format!("vae: act_fn {} is not supported", self.act_fn));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .chain(&self.up_block_types)
            .find(|t| !matches!(t.as_str(), "DownEncoderBlock2D" | "UpDecoderBlock2D"))
        {
            return Err(format!("vae: block type {t} is not supported"));
        }
        Ok(())
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, attention, resnet.
#[derive(Debug)]
struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<VaeAttention>,
}

impl MidBlock {
    fn new(ch: usize, groups: usize, attention: bool, vb: Weights) -> Result<Self> {
        let r = |i: usize| ResnetBlock2D::new(ch, ch, None, groups, 1e-6, 1.0, vb.pp("resnets").pp(i));
        Ok(Self {
            resnets: [r(0)?, r(1)?],
            attention: if attention {
                Some(VaeAttention::new(ch, groups, 1e-6, vb.pp("attentions").pp(0))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, slice: usize) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h, slice)?;
        }
        self.resnets[1].forward(&h, None)
    }
}

/// A `DownEncoderBlock2D` or `UpDecoderBlock2D`.
#[derive(Debug)]
struct Stage {
    resnets: Vec<ResnetBlock2D>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

impl Stage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        if let Some(d) = &self.down {
            h = d.forward(&h)?;
        }
        if let Some(u) = &self.up {
            h = u.forward(&h, None)?;
        }
        Ok(h)
    }

    /// [`Self::forward`] of a decoder stage on a map held as tiles, running `check` before each
    /// of its layers.
    fn forward_tiled(&self, x: TileGrid, check: &mut dyn FnMut() -> Result<()>) -> Result<TileGrid> {
        if self.down.is_some() {
            candle_core::bail!("vae: an encoder stage cannot run on tiles");
        }
        let mut h = x;
        for r in &self.resnets {
            check()?;
            h = r.forward_tiled(h)?;
        }
        if let Some(u) = &self.up {
            check()?;
            h = u.forward_tiled(&h)?;
        }
        Ok(h)
    }
}

/// The autoencoder.
#[derive(Debug)]
pub struct AutoencoderKl {
    enc_conv_in: Conv2d,
    enc_stages: Vec<Stage>,
    enc_mid: MidBlock,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_stages: Vec<Stage>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
    /// Query rows per attention slice (0 = all at once).
    pub attention_slice: usize,
    /// Decode in tiles of this many latent pixels (0 = whole), see [`super::vae_tiling`].
    pub tile: usize,
    /// The config it was built from.
    pub config: VaeConfig,
}

impl AutoencoderKl {
    /// Builds encoder and decoder from `cfg` with tensors under `vb` named as diffusers saves them.
    ///
    /// # Errors
    /// An unsupported config (named), missing or mis-shaped tensors.
    pub fn new(cfg: &VaeConfig, vb: Weights) -> Result<Self> {
        cfg.check().map_err(candle_core::Error::Msg)?;
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let g = cfg.norm_num_groups;
        let lat = cfg.latent_channels;
        let last = boc[n - 1];

        let e = vb.pp("encoder");
        let mut enc_stages = Vec::with_capacity(n);
        let mut out_ch = boc[0];
        for (i, &ch) in boc.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = ch;
            let b = e.pp("down_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let rin = if j == 0 { in_ch } else { out_ch };
                    ResnetBlock2D::new(rin, out_ch, None, g, 1e-6, 1.0, b.pp("resnets").pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let down = if i + 1 < n { Some(Downsample2D::new(out_ch, 0, b.pp("downsamplers").pp(0))?) } else { None };
            enc_stages.push(Stage { resnets, down, up: None });
        }

        let d = vb.pp("decoder");
        let mut dec_stages = Vec::with_capacity(n);
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut out_ch = rev[0];
        for (i, &ch) in rev.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            let b = d.pp("up_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let rin = if j == 0 { prev } else { out_ch };
                    ResnetBlock2D::new(rin, out_ch, None, g, 1e-6, 1.0, b.pp("resnets").pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let up = if i + 1 < n { Some(Upsample2D::new(out_ch, b.pp("upsamplers").pp(0))?) } else { None };
            dec_stages.push(Stage { resnets, down: None, up });
        }

        Ok(Self {
            enc_conv_in: Conv2d::new(cfg.in_channels, boc[0], 3, 1, 1, e.pp("conv_in"))?,
            enc_stages,
            enc_mid: MidBlock::new(last, g, cfg.mid_block_add_attention, e.pp("mid_block"))?,
            enc_norm_out: GroupNorm::new(g, last, 1e-6, e.pp("conv_norm_out"))?,
            enc_conv_out: Conv2d::new(last, 2 * lat, 3, 1, 1, e.pp("conv_out"))?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::new(2 * lat, 2 * lat, 1, 1, 0, vb.pp("quant_conv"))?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::new(lat, lat, 1, 1, 0, vb.pp("post_quant_conv"))?)
            } else {
                None
            },
            dec_conv_in: Conv2d::new(lat, last, 3, 1, 1, d.pp("conv_in"))?,
            dec_mid: MidBlock::new(last, g, cfg.mid_block_add_attention, d.pp("mid_block"))?,
            dec_stages,
            dec_norm_out: GroupNorm::new(g, boc[0], 1e-6, d.pp("conv_norm_out"))?,
            dec_conv_out: Conv2d::new(boc[0], cfg.out_channels, 3, 1, 1, d.pp("conv_out"))?,
            attention_slice: 0,
            tile: 0,
            config: cfg.clone(),
        })
    }

    /// Pixels `(B, 3, H, W)` in [−1, 1] → the latent distribution's mean `(B, C, H/f, W/f)`,
    /// unscaled (multiply by `scaling_factor` to get diffusion latents).
    ///
    /// # Errors
    /// Tensor errors.
    pub fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.enc_conv_in.forward(x)?;
        for s in &self.enc_stages {
            h = s.forward(&h)?;
        }
        h = self.enc_mid.forward(&h, self.attention_slice)?;
        h = self.enc_conv_out.forward(&self.enc_norm_out.forward_silu(&h)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        h.narrow(1, 0, self.config.latent_channels)
    }

    /// Unscaled latents `(B, C, h, w)` → pixels `(B, 3, h·f, w·f)` in about [−1, 1].
    ///
    /// # Errors
    /// Tensor errors.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_checked(z, &mut || Ok(()))
    }

    /// [`Self::decode`], running `check` before each up block (a cancel check).
    ///
    /// # Errors
    /// Tensor errors, or what `check` returns.
    pub fn decode_checked(&self, z: &Tensor, check: &mut dyn FnMut() -> Result<()>) -> Result<Tensor> {
        let mut h = self.decode_head(z)?;
        for s in &self.dec_stages {
            check()?;
            h = s.forward(&h)?;
        }
        self.dec_conv_out.forward(&self.dec_norm_out.forward_silu(&h)?)
    }

    /// The decoder up to its up path, on the whole latent: `post_quant_conv`, `conv_in` and the mid
    /// block (whose attention is global).
    ///
    /// # Errors
    /// Tensor errors.
    pub(super) fn decode_head(&self, z: &Tensor) -> Result<Tensor> {
        let h = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        let h = self.dec_conv_in.forward(&h)?;
        self.dec_mid.forward(&h, self.attention_slice)
    }

    /// The decoder from its up path on, on a map held as tiles: the up blocks, `conv_norm_out`
    /// with SiLU and `conv_out`, running `check` before each up block and each of its layers.
    ///
    /// # Errors
    /// Tensor errors, or what `check` returns.
    pub(super) fn decode_tail_tiled(&self, h: TileGrid, check: &mut dyn FnMut() -> Result<()>) -> Result<TileGrid> {
        let mut h = h;
        for s in &self.dec_stages {
            h = s.forward_tiled(h, check)?;
        }
        check()?;
        let stats = h.group_stats(&self.dec_norm_out)?;
        h.conv(&self.dec_conv_out, Some((&self.dec_norm_out, &stats)), |_, t| Ok(t))
    }

    /// Diffusion latents (as the denoiser sees them) → pixels: divides by `scaling_factor` (and
    /// adds `shift_factor` where the config has one), then [`Self::decode`], tiled when
    /// [`Self::tile`] is set and the latents are larger than a tile.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn decode_scaled(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_scaled_checked(latents, &mut || Ok(()))
    }

    /// [`Self::decode_scaled`], running `check` before each up block (and, tiled, each of its
    /// layers): a cancel check.
    ///
    /// # Errors
    /// Tensor errors, or what `check` returns.
    pub fn decode_scaled_checked(&self, latents: &Tensor, check: &mut dyn FnMut() -> Result<()>) -> Result<Tensor> {
        let mut z = (latents / self.config.scaling_factor)?;
        if let Some(s) = self.config.shift_factor {
            z = (z + s)?;
        }
        if self.tile > 0 { super::vae_tiling::decode_tiled(self, &z, self.tile, check) } else { self.decode_checked(&z, check) }
    }
}
