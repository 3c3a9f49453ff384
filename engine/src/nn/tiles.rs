//! A feature map held as a grid of tiles, each its own tensor, and the layers that run on it
//! giving exactly what they give on the whole map: a convolution reads its border from the
//! neighbouring tiles (zeros at the image's edge) and then runs unpadded; a group norm before it
//! normalizes with the whole map's statistics ([`GroupStats`], summed over every tile); nearest 2×
//! upsampling and per-pixel layers run tile by tile. Nothing is computed twice and no tile's
//! result is blended, so tile boundaries leave no trace. The tiled VAE decode
//! ([`crate::families::latent_diffusion::vae_tiling`]) runs its up path on it: a layer's input and
//! output are held in full (as tiles), its temporaries (normalized input, im2col) one tile at a
//! time.

use candle_core::{Result, Tensor};

use super::norm::GroupStats;
use super::{Conv2d, GroupNorm};

/// A `(B, C, H, W)` map cut along H and W at fixed boundaries; tiles row-major.
#[derive(Debug)]
pub struct TileGrid {
    /// Tile row `r` covers map rows `rows[r]..rows[r + 1]`.
    rows: Vec<usize>,
    /// Tile column `c` covers map columns `cols[c]..cols[c + 1]`.
    cols: Vec<usize>,
    /// `(B, C, rows, columns)` per tile, row-major.
    tiles: Vec<Tensor>,
}

/// The boundaries of `n` pixels cut every `tile`: 0, tile, 2·tile, …, n.
fn cuts(n: usize, tile: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).step_by(tile.max(1)).collect();
    v.push(n);
    v
}

/// Which part of a neighbour a border takes along one dimension.
#[derive(Clone, Copy)]
enum Part {
    /// Its last `n` pixels (the neighbour before).
    Last(usize),
    /// All of it (the tile itself).
    All,
    /// Its first `n` pixels (the neighbour after).
    First(usize),
}

/// `t` narrowed along `dim` to `part`.
fn take(t: &Tensor, dim: usize, part: Part) -> Result<Tensor> {
    let len = t.dim(dim)?;
    match part {
        Part::All => Ok(t.clone()),
        Part::Last(n) | Part::First(n) if n > len => {
            candle_core::bail!("tiled layer: a tile of {len} pixels is thinner than the border of {n} it must lend")
        }
        Part::Last(n) => t.narrow(dim, len - n, n),
        Part::First(n) => t.narrow(dim, 0, n),
    }
}

/// `x` with `halo` zeros on each side in `edges` (top, bottom, left, right) that is the image's.
fn pad_edges(x: &Tensor, edges: [bool; 4], halo: usize) -> Result<Tensor> {
    let z = |edge: bool| if edge { halo } else { 0 };
    if halo == 0 || edges == [false; 4] {
        return Ok(x.clone());
    }
    x.pad_with_zeros(2, z(edges[0]), z(edges[1]))?.pad_with_zeros(3, z(edges[2]), z(edges[3]))
}

impl TileGrid {
    /// Cuts `x` `(B, C, H, W)` into tiles of `tile` pixels a side (the last row and column of
    /// tiles take what is left), each copied out so that `x` can be dropped.
    ///
    /// # Errors
    /// `x` not 4-D; tensor errors.
    pub fn split(x: &Tensor, tile: usize) -> Result<Self> {
        let (_, _, h, w) = x.dims4()?;
        let (rows, cols) = (cuts(h, tile), cuts(w, tile));
        let mut tiles = Vec::with_capacity((rows.len() - 1) * (cols.len() - 1));
        for r in rows.windows(2) {
            let band = x.narrow(2, r[0], r[1] - r[0])?;
            for c in cols.windows(2) {
                tiles.push(band.narrow(3, c[0], c[1] - c[0])?.contiguous()?);
            }
        }
        Ok(Self { rows, cols, tiles })
    }

    /// Tiles down and across.
    pub fn grid(&self) -> (usize, usize) {
        (self.rows.len() - 1, self.cols.len() - 1)
    }

    /// The tiles, row-major.
    pub fn into_tiles(self) -> Vec<Tensor> {
        self.tiles
    }

    /// The whole map: the tiles pasted back together.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn paste(&self) -> Result<Tensor> {
        let (_, nc) = self.grid();
        let bands = self.tiles.chunks(nc).map(|row| Tensor::cat(row, 3)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&bands, 2)
    }

    /// The whole map's group statistics for `norm`, summed tile by tile.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn group_stats(&self, norm: &GroupNorm) -> Result<GroupStats> {
        let mut stats = GroupStats::default();
        for t in &self.tiles {
            norm.accumulate(t, &mut stats)?;
        }
        Ok(stats)
    }

    /// Tile `(r, c)` with `halo` pixels of its neighbours around it where it has neighbours,
    /// and which of its sides (top, bottom, left, right) lie on the image's edge instead.
    fn with_border(&self, r: usize, c: usize, halo: usize) -> Result<(Tensor, [bool; 4])> {
        let (nr, nc) = self.grid();
        let edges = [r == 0, r + 1 == nr, c == 0, c + 1 == nc];
        if halo == 0 {
            return Ok((self.tiles[r * nc + c].clone(), edges));
        }
        let around = |i: usize, n: usize| {
            let mut v = Vec::with_capacity(3);
            if i > 0 {
                v.push((i - 1, Part::Last(halo)));
            }
            v.push((i, Part::All));
            if i + 1 < n {
                v.push((i + 1, Part::First(halo)));
            }
            v
        };
        let mut bands = Vec::with_capacity(3);
        for (rr, rp) in around(r, nr) {
            let pieces = around(c, nc)
                .into_iter()
                .map(|(cc, cp)| take(&take(&self.tiles[rr * nc + cc], 2, rp)?, 3, cp))
                .collect::<Result<Vec<_>>>()?;
            bands.push(Tensor::cat(&pieces, 3)?);
        }
        Ok((Tensor::cat(&bands, 2)?, edges))
    }

    /// `conv` (stride 1, padding keeping the size) over the map, after `pre`'s group norm with
    /// the given whole-map statistics and SiLU when set; `post(i, y)` then turns tile `i`'s
    /// output into what the new grid keeps (a residual add, or `y` itself).
    ///
    /// # Errors
    /// A convolution that changes the size; tensor errors; what `post` returns.
    pub fn conv(
        &self,
        conv: &Conv2d,
        pre: Option<(&GroupNorm, &GroupStats)>,
        mut post: impl FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let Some(halo) = conv.halo() else {
            candle_core::bail!("tiled convolution: only stride-1 convolutions that keep the size can run on tiles");
        };
        let (nr, nc) = self.grid();
        let mut tiles = Vec::with_capacity(self.tiles.len());
        for r in 0..nr {
            for c in 0..nc {
                let (x, edges) = self.with_border(r, c, halo)?;
                // normalized with its border, then the image's zero padding after the norm, as
                // the whole map's padded convolution sees it
                let x = match pre {
                    Some((norm, stats)) => norm.forward_with_stats(&x, stats, true)?,
                    None => x,
                };
                let y = conv.forward_unpadded(&pad_edges(&x, edges, halo)?)?;
                tiles.push(post(r * nc + c, y)?);
            }
        }
        Ok(Self { rows: self.rows.clone(), cols: self.cols.clone(), tiles })
    }

    /// Nearest-neighbour 2× upsampling, then `conv` (stride 1, padding keeping the size): the
    /// grid at twice the resolution, its boundaries doubled.
    ///
    /// # Errors
    /// A convolution that changes the size; tensor errors.
    pub fn upsample_conv(&self, conv: &Conv2d) -> Result<Self> {
        let Some(halo) = conv.halo() else {
            candle_core::bail!("tiled convolution: only stride-1 convolutions that keep the size can run on tiles");
        };
        // the upsampled border needs half as many pixels of the neighbours at this resolution
        let low = halo.div_ceil(2);
        let (nr, nc) = self.grid();
        let mut tiles = Vec::with_capacity(self.tiles.len());
        for r in 0..nr {
            for c in 0..nc {
                let (x, edges) = self.with_border(r, c, low)?;
                let (_, _, h, w) = x.dims4()?;
                let up = x.upsample_nearest2d(2 * h, 2 * w)?;
                drop(x);
                // keep `halo` of the 2·low upsampled border pixels on each side that had one
                let cut = |edge: bool| if edge { 0 } else { 2 * low - halo };
                let (t, b, l, rt) = (cut(edges[0]), cut(edges[1]), cut(edges[2]), cut(edges[3]));
                let up = up.narrow(2, t, 2 * h - t - b)?.narrow(3, l, 2 * w - l - rt)?;
                tiles.push(conv.forward_unpadded(&pad_edges(&up, edges, halo)?)?);
            }
        }
        let double = |v: &[usize]| v.iter().map(|&x| 2 * x).collect();
        Ok(Self { rows: double(&self.rows), cols: double(&self.cols), tiles })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Weights;
    use candle_core::{DType, Device, Module};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    /// Largest absolute difference.
    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Random layers: a 3×3 conv 6→4 (`c3`), a 5×5 conv 6→6 (`c5`), a group norm of 6 channels in
    /// 3 groups (`n`).
    fn layers() -> (Conv2d, Conv2d, GroupNorm) {
        let dev = Device::Cpu;
        let r = |s: &[usize]| Tensor::randn(0f32, 0.3, s, &dev).unwrap();
        let ts = HashMap::from([
            ("c3.weight".to_string(), r(&[4, 6, 3, 3])),
            ("c3.bias".to_string(), r(&[4])),
            ("c5.weight".to_string(), r(&[6, 6, 5, 5])),
            ("c5.bias".to_string(), r(&[6])),
            ("n.weight".to_string(), (r(&[6]) + 1.0).unwrap()),
            ("n.bias".to_string(), r(&[6])),
        ]);
        let vb = Weights::new(VarBuilder::from_tensors(ts, DType::F32, &dev));
        (
            Conv2d::new(6, 4, 3, 1, 1, vb.pp("c3")).unwrap(),
            Conv2d::new(6, 6, 5, 1, 2, vb.pp("c5")).unwrap(),
            GroupNorm::new(3, 6, 1e-6, vb.pp("n")).unwrap(),
        )
    }

    /// Norm + SiLU + conv, and upsample + conv, on tiles of 2, 3 and 5 pixels (a 13×11 map, so
    /// the last tiles are thinner) equal the whole map's within 1e-5 for 3×3 and 5×5 kernels;
    /// split then paste gives the map back.
    #[test]
    fn tiled_layers_equal_whole_map() {
        let (c3, c5, n) = layers();
        let x = (Tensor::randn(0f32, 1.5, (2, 6, 13, 11), &Device::Cpu).unwrap() + 0.7).unwrap();
        let whole_norm_conv = c3.forward(&n.forward_silu(&x).unwrap()).unwrap();
        let whole_up3 = c3.forward(&x.upsample_nearest2d(26, 22).unwrap()).unwrap();
        let whole_up5 = c5.forward(&x.upsample_nearest2d(26, 22).unwrap()).unwrap();
        for tile in [2, 3, 5] {
            let g = TileGrid::split(&x, tile).unwrap();
            assert_eq!(g.grid(), (13usize.div_ceil(tile), 11usize.div_ceil(tile)));
            assert_eq!(diff(&g.paste().unwrap(), &x), 0.0);
            let stats = g.group_stats(&n).unwrap();
            let y = g.conv(&c3, Some((&n, &stats)), |_, t| Ok(t)).unwrap().paste().unwrap();
            let d = diff(&y, &whole_norm_conv);
            assert!(d < 1e-5, "tile {tile}, norm + conv: {d}");
            let d = diff(&g.upsample_conv(&c3).unwrap().paste().unwrap(), &whole_up3);
            assert!(d < 1e-5, "tile {tile}, upsample + 3×3 conv: {d}");
            let d = diff(&g.upsample_conv(&c5).unwrap().paste().unwrap(), &whole_up5);
            assert!(d < 1e-5, "tile {tile}, upsample + 5×5 conv: {d}");
            // a 5×5 kernel borrows two pixels: on a 14×12 map every tile has them to lend
            let x2 = x.pad_with_zeros(2, 0, 1).unwrap().pad_with_zeros(3, 1, 0).unwrap();
            let g2 = TileGrid::split(&x2, tile).unwrap();
            let d = diff(&g2.conv(&c5, None, |_, t| Ok(t)).unwrap().paste().unwrap(), &c5.forward(&x2).unwrap());
            assert!(d < 1e-5, "tile {tile}, 5×5 conv: {d}");
        }
        // a 5×5 kernel needs two pixels of border: a 1-pixel tile cannot lend them
        let thin = TileGrid::split(&x.narrow(2, 0, 5).unwrap(), 4).unwrap();
        assert!(thin.conv(&c5, None, |_, t| Ok(t)).is_err());
    }
}
