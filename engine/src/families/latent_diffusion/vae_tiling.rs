//! Tiled VAE decoding (the `vae_tile` knob): the latents are decoded in overlapping tiles of N
//! latent pixels (stride ¾N) and neighbouring tiles are blended linearly over ¼ of a tile, as
//! diffusers' `AutoencoderKL.tiled_decode` does. Each tile is decoded with [`context`] latent pixels
//! of its neighbours around it, cropped off after, so the convolutions' zero padding at a tile's
//! border does not reach the part kept. Only the previous row of decoded tiles is kept, so memory
//! above the weights is about two rows of tiles (each with its context) plus the output.
//!
//! Unlike diffusers (kept as [`TileNorm::PerTile`] for parity), every `GroupNorm` normalizes each
//! tile with statistics of the whole image, so tiles do not change colour ([`TileNorm::WholeImage`],
//! the default): the decoder's head (conv_in and the mid block, with its attention, at latent
//! resolution, 1/64 of the pixels) runs on the whole latent; then [`STAT_PASSES`] passes run the up blocks tile by tile
//! only to add up each `GroupNorm`'s per-(image, group) sums over the part of the image each tile
//! stands for (the first pass normalizing with each tile's own statistics, the next with the
//! previous pass's), and the real pass normalizes every tile with the last pass's. A pass holds one
//! tile's feature maps at a time; the statistics are three f64 per (image, group) per norm.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::vae::AutoencoderKl;
use crate::nn::norm::{NormStats, StatsScope, TileRegion};

/// Statistics-collecting passes before the real one. The first normalizes with each tile's own
/// statistics, so later norms' sums are slightly off; each further pass (normalizing with the
/// previous pass's) makes them closer. One gives 45–51 dB PSNR against the untiled decode on the
/// tiny fixtures at tiles of 4–12, two 50–55 dB at one more pass of time.
pub const STAT_PASSES: usize = 1;

/// Which statistics the `GroupNorm`s of a tiled decode normalize with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileNorm {
    /// The whole image's, collected in extra passes (matches the untiled decode).
    WholeImage,
    /// Each tile's own, as diffusers' `tiled_decode` (tiles may differ in colour).
    PerTile,
}

/// Blends the last `extent` rows (dim 2) or columns (dim 3) of `a` into the first of `b`:
/// `b[k] = a[−extent + k]·(1 − k/extent) + b[k]·k/extent`.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let ramp: Vec<f32> = (0..extent).map(|k| k as f32 / extent as f32).collect();
    let shape = if dim == 2 { (1, 1, extent, 1) } else { (1, 1, 1, extent) };
    let w = Tensor::from_vec(ramp, shape, b.device())?.to_dtype(b.dtype())?;
    let a_end = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let b_start = b.narrow(dim, 0, extent)?;
    let mixed = (a_end.broadcast_mul(&(1.0 - &w)?)? + b_start.broadcast_mul(&w)?)?;
    let rest = b.narrow(dim, extent, b.dim(dim)? - extent)?;
    Tensor::cat(&[&mixed, &rest], dim)
}

/// The part of `0..n` the tile starting at `starts[k]` stands for, relative to its start: from
/// the middle of its overlap with the tile before to the middle of its overlap with the next, so
/// the parts cover `0..n` once and stay away from the tiles' borders.
fn owned(starts: &[usize], k: usize, n: usize, overlap: usize) -> Range<usize> {
    let begin = if k == 0 { 0 } else { (starts[k] + overlap / 2).min(n) };
    let end = match starts.get(k + 1) {
        Some(&next) => (next + overlap / 2).min(n),
        None => n,
    };
    begin - starts[k]..end.max(begin) - starts[k]
}

/// Latent pixels of context decoded around each tile (and cropped off): 0.6 of the radius of the
/// up path's receptive field (3×3 convolutions at 1, 2, 4 … times latent resolution), so the
/// tiles' zero padding barely reaches the kept part. 8 for SD's autoencoder, 5 for the tiny ones.
fn context(cfg: &super::vae::VaeConfig) -> usize {
    tile_context(cfg.block_out_channels.len(), cfg.layers_per_block)
}

/// [`context`] for a decoder of `n` levels with `layers_per_block` resnets per encoder block (the
/// planner's view, which has no config struct).
pub fn tile_context(n: usize, layers_per_block: usize) -> usize {
    let mut radius = 0.0;
    for j in 0..n {
        let scale = (1usize << j) as f64;
        radius += 2.0 * (layers_per_block + 1) as f64 / scale; // resnets' two convs each
        radius += if j + 1 < n { 0.5 / scale } else { 1.0 / scale }; // upsampler's conv, or conv_out
    }
    (0.6 * radius).ceil() as usize
}

/// Decodes unscaled latents `(B, C, h, w)` in tiles of `tile` latent pixels, normalizing with the
/// whole image's statistics; returns the same shape as [`AutoencoderKl::decode`]. Latents no larger
/// than a tile are decoded whole.
///
/// # Errors
/// A tile smaller than 4 latent pixels, tensor errors.
pub fn decode_tiled(vae: &AutoencoderKl, z: &Tensor, tile: usize) -> Result<Tensor> {
    decode_tiled_with(vae, z, tile, TileNorm::WholeImage, &mut || Ok(()))
}

/// [`decode_tiled`] with a choice of statistics, running `check` before every tile of every pass
/// and between up blocks (a cancel check: its error ends the decode).
///
/// # Errors
/// A tile smaller than 4 latent pixels, tensor errors, what `check` returns.
pub fn decode_tiled_with(
    vae: &AutoencoderKl,
    z: &Tensor,
    tile: usize,
    norm: TileNorm,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Tensor> {
    let (_, _, h, w) = z.dims4()?;
    if h <= tile && w <= tile {
        check()?;
        return vae.decode_up(&vae.decode_head(z)?, check);
    }
    if tile < 4 {
        candle_core::bail!("vae_tile = {tile}: tiles need at least 4 latent pixels");
    }
    let f = vae.config.scale_factor();
    let stride = tile * 3 / 4; // diffusers: int(tile · (1 − 0.25))
    let sample = tile * f;
    // diffusers: limit = sample − int(sample · 0.25), the same for tiles that are multiples of 4;
    // this way the rows (columns) kept per tile add up to the image for any tile
    let limit = stride * f;
    let extent = sample - limit;
    let rows: Vec<usize> = (0..h).step_by(stride).collect();
    let cols: Vec<usize> = (0..w).step_by(stride).collect();
    let pad = context(&vae.config);
    // a tile with up to `pad` latent pixels of context on each side: (tensor, rows skipped, cols skipped)
    let padded = |x: &Tensor, i: usize, j: usize, pad: usize| -> Result<(Tensor, usize, usize)> {
        let (i0, j0) = (i.saturating_sub(pad), j.saturating_sub(pad));
        let (i1, j1) = ((i + tile + pad).min(h), (j + tile + pad).min(w));
        Ok((x.narrow(2, i0, i1 - i0)?.narrow(3, j0, j1 - j0)?, i - i0, j - j0))
    };
    // a decoded padded tile cropped to its core
    let crop = |t: Tensor, di: usize, dj: usize, i: usize, j: usize| -> Result<Tensor> {
        t.narrow(2, di * f, tile.min(h - i) * f)?.narrow(3, dj * f, tile.min(w - j) * f)
    };

    // WholeImage: the head whole, then passes that only collect statistics tile by tile
    let (source, stats) = match norm {
        TileNorm::PerTile => (z.clone(), None),
        TileNorm::WholeImage => {
            check()?;
            let head = vae.decode_head(z)?;
            let mut stats: Option<Arc<NormStats>> = None;
            for _ in 0..STAT_PASSES {
                let mut acc = NormStats::default();
                for (ik, &i) in rows.iter().enumerate() {
                    for (jk, &j) in cols.iter().enumerate() {
                        check()?;
                        let (t, di, dj) = padded(&head, i, j, pad)?;
                        let (r, c) = (owned(&rows, ik, h, tile - stride), owned(&cols, jk, w, tile - stride));
                        let region = TileRegion {
                            tile: (t.dim(2)?, t.dim(3)?),
                            rows: r.start + di..r.end + di,
                            cols: c.start + dj..c.end + dj,
                        };
                        let scope = StatsScope::begin(stats.clone(), Some((acc, region)))?;
                        vae.decode_up(&t, check)?;
                        acc = scope.finish().unwrap_or_default();
                    }
                }
                stats = Some(Arc::new(acc));
            }
            (head, stats)
        }
    };

    let mut prev_row: Vec<Tensor> = Vec::new();
    let mut out_rows = Vec::new();
    for &i in &rows {
        let mut row: Vec<Tensor> = Vec::new();
        for (jn, &j) in cols.iter().enumerate() {
            check()?;
            let mut t = match &stats {
                Some(s) => {
                    let (p, di, dj) = padded(&source, i, j, pad)?;
                    let _scope = StatsScope::begin(Some(s.clone()), None)?;
                    crop(vae.decode_up(&p, check)?, di, dj, i, j)?
                }
                None => vae.decode(&source.narrow(2, i, tile.min(h - i))?.narrow(3, j, tile.min(w - j))?)?,
            };
            if let Some(above) = prev_row.get(jn) {
                t = blend(above, &t, extent, 2)?;
            }
            if let Some(left) = row.last() {
                t = blend(left, &t, extent, 3)?;
            }
            row.push(t);
        }
        let cropped = row
            .iter()
            .map(|t| {
                let t = t.narrow(2, 0, limit.min(t.dim(2)?))?;
                t.narrow(3, 0, limit.min(t.dim(3)?))
            })
            .collect::<Result<Vec<_>>>()?;
        out_rows.push(Tensor::cat(&cropped, 3)?);
        prev_row = row;
    }
    Tensor::cat(&out_rows, 2)
}
