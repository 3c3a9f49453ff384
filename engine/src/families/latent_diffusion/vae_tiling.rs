//! Tiled VAE decoding (the `vae_tile` knob), exact: the decoder's result, not an approximation of
//! it. `post_quant_conv`, `conv_in` and the mid block (whose attention is global) run on the whole
//! latent, which is small (512 channels × 128² × 4 B = 32 MB for a 1024² SD image). The up path,
//! `conv_norm_out` + SiLU and `conv_out` then run on a grid of tiles of N latent pixels (N·2ʲ at
//! up stage j) in lockstep, layer by layer, each tile's map its own tensor ([`TileGrid`]): a 3×3
//! convolution reads a one-pixel border from the neighbouring tiles (zeros at the image's edge)
//! and runs unpadded; a group norm takes its statistics over the whole map, summed tile by tile;
//! upsampling, 1×1 shortcuts and residual adds run per tile. Nothing is blended or computed twice.
//!
//! Memory above the weights is a layer's input and output held in full as tiles (a resnet block
//! also holds its first convolution's output), plus one tile's temporaries (its normalized input
//! with border, the convolution's im2col), where the whole decode holds several full maps of the
//! top resolution's temporaries at once.

use candle_core::{Result, Tensor};

use super::vae::AutoencoderKl;
use crate::nn::TileGrid;

/// Decodes unscaled latents `(B, C, h, w)` in tiles of `tile` latent pixels; returns what
/// [`AutoencoderKl::decode`] returns. Latents no larger than a tile are decoded whole. `check`
/// runs before each up block and each of its layers (a cancel check).
///
/// # Errors
/// A tile smaller than 4 latent pixels, tensor errors, what `check` returns.
pub fn decode_tiled(vae: &AutoencoderKl, z: &Tensor, tile: usize, check: &mut dyn FnMut() -> Result<()>) -> Result<Tensor> {
    let (_, _, h, w) = z.dims4()?;
    if h <= tile && w <= tile {
        return vae.decode_checked(z, check);
    }
    if tile < 4 {
        candle_core::bail!("vae_tile = {tile}: tiles need at least 4 latent pixels");
    }
    let mid = vae.decode_head(z)?;
    let grid = TileGrid::split(&mid, tile)?;
    drop(mid);
    vae.decode_tail_tiled(grid, check)?.paste()
}
