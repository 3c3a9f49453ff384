//! 2-D convolution on the CPU in f32: the output is cut into tiles of whole output rows; each tile's
//! input patches are gathered into a small im2col buffer (rows `(c_in, ky, kx)`, the kernel's own
//! memory order, so the weight is used as stored) and multiplied by the `(c_out, c_in·k·k)`
//! kernel straight into the NCHW output, on top of the bias written there first.
//!
//! Against candle's CPU convolution this skips the per-call NHWC copy of the input and reordering of
//! the kernel, the scattered writes of the result, and nested thread pools; a 1×1 convolution is a
//! single product with no gathering at all.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::expand::{self, Stored};
use super::{SharedOut, View, inner_parallelism, matmul};

/// The im2col buffer each task holds, in elements (4 MiB): a tile is as many output rows as fit.
pub const TILE_ELEMENTS: usize = 1 << 20;

/// Geometry of one convolution call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Batch, input channels, input height and width.
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels and the square kernel's side.
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        let f = |n: usize| (n + 2 * self.padding).saturating_sub(self.k) / self.stride + 1;
        (f(self.h), f(self.w))
    }

    /// Elements of one im2col row (`c_in · k · k`).
    fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }
}

/// `y = conv(x, weight) + bias` for contiguous NCHW `x`, a contiguous `(c_out, c_in, k, k)` kernel
/// and an optional `(c_out)` bias; returns the NCHW output.
///
/// # Errors
/// The output cannot be allocated.
pub fn conv2d(x: &[f32], g: ConvGeometry, weight: &[f32], bias: Option<&[f32]>) -> candle_core::Result<Vec<f32>> {
    let (oh, ow) = g.out_hw();
    let plane = oh * ow;
    let mut out = super::zeroed(g.batch * g.c_out * plane, "a convolution's output")?;
    if let Some(b) = bias {
        for img in out.chunks_exact_mut(g.c_out * plane) {
            for (ch, &bv) in img.chunks_exact_mut(plane).zip(b) {
                ch.fill(bv);
            }
        }
    }
    let kk = g.patch();
    let lhs = || View { ptr: weight.as_ptr(), rs: kk as isize, cs: 1 };
    let dst = SharedOut(out.as_mut_ptr());
    if g.k == 1 && g.stride == 1 && g.padding == 0 {
        // a 1×1 convolution is the kernel times each image's (c_in, h·w) matrix
        let par = inner_parallelism(g.batch);
        (0..g.batch).into_par_iter().for_each(|b| {
            let rhs = View { ptr: x[b * g.c_in * plane..].as_ptr(), rs: plane as isize, cs: 1 };
            // SAFETY: image b's output plane block is written by this task only; views are in bounds
            unsafe {
                matmul(g.c_out, plane, kk, dst.get().add(b * g.c_out * plane), plane as isize, bias.is_some(), lhs(), rhs, par)
            };
        });
        return Ok(out);
    }
    let rows_per_tile = (TILE_ELEMENTS / (kk * ow).max(1)).clamp(1, oh);
    let tiles_per_image = oh.div_ceil(rows_per_tile);
    let tasks = g.batch * tiles_per_image;
    let par = inner_parallelism(tasks);
    (0..tasks).into_par_iter().for_each_init(Vec::new, |col, t| {
        let (b, tile) = (t / tiles_per_image, t % tiles_per_image);
        let y0 = tile * rows_per_tile;
        let rows = rows_per_tile.min(oh - y0);
        let n = rows * ow;
        col.resize(kk * n, 0.0);
        gather(x, &g, b, y0, rows, ow, col);
        let rhs = View { ptr: col.as_ptr(), rs: n as isize, cs: 1 };
        // SAFETY: rows y0..y0+rows of image b are written by this task only; views are in bounds
        unsafe {
            let d = dst.get().add(b * g.c_out * plane + y0 * ow);
            matmul(g.c_out, n, kk, d, plane as isize, bias.is_some(), lhs(), rhs, par)
        };
    });
    Ok(out)
}

/// Fills `col` (`c_in·k·k` rows of `rows·ow` values) with the patches of output rows
/// `y0..y0+rows` of image `b`, zeros where the kernel overhangs the padded border.
fn gather(x: &[f32], g: &ConvGeometry, b: usize, y0: usize, rows: usize, ow: usize, col: &mut [f32]) {
    let n = rows * ow;
    let img = &x[b * g.c_in * g.h * g.w..(b + 1) * g.c_in * g.h * g.w];
    let pad = g.padding as isize;
    let mut r = 0;
    for c in 0..g.c_in {
        let chan = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let dst_row = &mut col[r * n..(r + 1) * n];
                r += 1;
                // output columns whose input column ox·s + kx − pad lies inside the image
                let first = ((pad - kx as isize).max(0) as usize).div_ceil(g.stride);
                let last = ((g.w as isize + pad - kx as isize - 1).div_euclid(g.stride as isize) + 1).clamp(0, ow as isize) as usize;
                for (ri, seg) in dst_row.chunks_exact_mut(ow).enumerate() {
                    let iy = ((y0 + ri) * g.stride + ky) as isize - pad;
                    if iy < 0 || iy >= g.h as isize || first >= last {
                        seg.fill(0.0);
                        continue;
                    }
                    let src = &chan[iy as usize * g.w..(iy as usize + 1) * g.w];
                    seg[..first].fill(0.0);
                    seg[last..].fill(0.0);
                    let ix0 = (first * g.stride + kx) as isize - pad;
                    if g.stride == 1 {
                        seg[first..last].copy_from_slice(&src[ix0 as usize..ix0 as usize + (last - first)]);
                    } else {
                        for (j, v) in seg[first..last].iter_mut().enumerate() {
                            *v = src[ix0 as usize + j * g.stride];
                        }
                    }
                }
            }
        }
    }
}

/// [`conv2d`] as a candle op over `x`, contiguous f32 NCHW on the CPU, with the kernel as the
/// layer holds it: `(c_out, c_in, k, k)` values, f32 or narrower ([`expand`]).
pub struct Conv2dOp<'a> {
    pub weight: Stored<'a>,
    /// `(c_out, c_in, k, k)`.
    pub shape: (usize, usize, usize, usize),
    pub stride: usize,
    pub padding: usize,
    /// The `(c_out)` bias, added in the same pass.
    pub bias: Option<&'a [f32]>,
}

impl CustomOp1 for Conv2dOp<'_> {
    fn name(&self) -> &'static str {
        "headroom-conv2d"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = xs else {
            candle_core::bail!("headroom-conv2d: expected an f32 input");
        };
        let Some((x0, x1)) = xl.contiguous_offsets() else {
            candle_core::bail!("headroom-conv2d: expected a contiguous input");
        };
        let (batch, c_in, h, w_) = xl.shape().dims4()?;
        let (c_out, wc_in, kh, kw) = self.shape;
        if wc_in != c_in || kh != kw {
            candle_core::bail!("headroom-conv2d: input {:?} does not fit kernel {:?}", xl.dims(), self.shape);
        }
        if self.bias.is_some_and(|b| b.len() != c_out) {
            candle_core::bail!("headroom-conv2d: bias does not have {c_out} values");
        }
        if h + 2 * self.padding < kh || w_ + 2 * self.padding < kw || self.stride == 0 {
            candle_core::bail!("headroom-conv2d: kernel {kh}×{kw} larger than the padded {h}×{w_} input");
        }
        let g = ConvGeometry { batch, c_in, h, w: w_, c_out, k: kh, stride: self.stride, padding: self.padding };
        let (oh, ow) = g.out_hw();
        let y = expand::with_f32(self.weight, |w| {
            (w.len() == c_out * c_in * kh * kw).then(|| conv2d(&x[x0..x1], g, w, self.bias))
        })?;
        let Some(y) = y else {
            candle_core::bail!("headroom-conv2d: the stored kernel does not hold {:?} values", self.shape);
        };
        let y = y?;
        Ok((CpuStorage::F32(y), Shape::from((batch, c_out, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Against candle's conv2d (+ bias) within 1e-4 for 3×3 stride 1 and 2 (padding 0 and 1),
    /// 1×1, and an input taller than one tile, with odd sizes so borders are exercised.
    #[test]
    fn matches_candle() {
        let dev = Device::Cpu;
        for (c_in, c_out, h, w, k, stride, padding) in [
            (3, 5, 7, 9, 3, 1, 1),
            (4, 6, 9, 8, 3, 2, 1),
            (4, 6, 9, 8, 3, 2, 0),
            (5, 7, 6, 5, 1, 1, 0),
            (2, 3, 5, 5, 3, 1, 0),
            (130, 8, 70, 66, 3, 1, 1),
        ] {
            let x = Tensor::randn(0f32, 1., (2, c_in, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.2, (c_out, c_in, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let bias = b.to_vec1::<f32>().unwrap();
            let want = x.conv2d(&wt, padding, stride, 1, 1).unwrap().broadcast_add(&b.reshape((1, c_out, 1, 1)).unwrap()).unwrap();
            let op = Conv2dOp { weight: Stored::Dense(&wt), shape: (c_out, c_in, k, k), stride, padding, bias: Some(&bias) };
            let got = x.apply_op1_no_bwd(&op).unwrap();
            assert_eq!(got.dims(), want.dims(), "{c_in} {c_out} {h} {w} {k} {stride} {padding}");
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "{c_in} {c_out} {h} {w} k{k} s{stride} p{padding}: {d}");
        }
    }
}
