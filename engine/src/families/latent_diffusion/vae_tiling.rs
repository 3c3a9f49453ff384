//! Tiled VAE decoding (the `vae_tile` knob): the latents are decoded in overlapping tiles of N
//! latent pixels (stride ¾N) and neighbouring tiles are blended linearly over ¼ of a tile, as
//! diffusers' `AutoencoderKL.tiled_decode` does, so seams do not show. Only the previous row of
//! decoded tiles is kept, so memory above the weights is about two rows of tiles plus the output.

use candle_core::{Result, Tensor};

use super::vae::AutoencoderKl;

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

/// Decodes unscaled latents `(B, C, h, w)` in tiles of `tile` latent pixels; returns the same
/// shape as [`AutoencoderKl::decode`]. Latents no larger than a tile are decoded whole.
///
/// # Errors
/// A tile smaller than 4 latent pixels, tensor errors.
pub fn decode_tiled(vae: &AutoencoderKl, z: &Tensor, tile: usize, check: &mut dyn FnMut() -> Result<()>) -> Result<Tensor> {
    let (_, _, h, w) = z.dims4()?;
    if h <= tile && w <= tile {
        return vae.decode_checked(z, check);
    }
    if tile < 4 {
        candle_core::bail!("vae_tile = {tile}: tiles need at least 4 latent pixels");
    }
    let f = vae.config.scale_factor();
    let stride = tile * 3 / 4; // diffusers: int(tile · (1 − 0.25))
    let sample = tile * f;
    let extent = sample / 4; // int(sample · 0.25)
    let limit = sample - extent;

    let mut prev_row: Vec<Tensor> = Vec::new();
    let mut out_rows = Vec::new();
    for i in (0..h).step_by(stride) {
        let mut row: Vec<Tensor> = Vec::new();
        for (jn, j) in (0..w).step_by(stride).enumerate() {
            let part = z.narrow(2, i, tile.min(h - i))?.narrow(3, j, tile.min(w - j))?;
            let mut t = vae.decode_checked(&part, check)?;
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
    let out = Tensor::cat(&out_rows, 2)?;
    Ok(out)
}
