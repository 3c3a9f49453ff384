//! Group normalization with an optional fused SiLU. On the CPU with f32 it is one custom op that
//! reads the input twice (statistics, then the normalized write), one (image, group) per task on
//! rayon's pool, instead of candle's chain of eight element-wise passes plus a separate SiLU pass;
//! elsewhere it falls back to candle's.
//!
//! A tiled pass (the VAE's `vae_tile`) can make every `GroupNorm` it runs normalize with statistics
//! of the whole image instead of the tile's own, so tiles do not change colour: see [`StatsScope`].

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};

use rayon::prelude::*;

use super::Weights;
use super::cpu::math::exp;
use super::cpu::wide_fn;

/// `GroupNorm` (affine) over `(B, C, …)`, with [`GroupNorm::forward_silu`] fusing the SiLU that
/// usually follows it.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    fallback: candle_nn::GroupNorm,
    /// `(channels)` each, for normalizing with given statistics off the fused kernel.
    weight: Tensor,
    bias: Tensor,
    /// The affine weight and bias copied out once for the CPU kernel (f32 only).
    cpu_affine: Option<(Vec<f32>, Vec<f32>)>,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` `(channels)` under `vb`.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors, or `channels` not a multiple of `groups`.
    pub fn new(groups: usize, channels: usize, eps: f64, vb: Weights) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        // the fused kernel's copy is f32 whatever the storage (bf16 stored, f32 computed)
        let cpu_affine = if vb.device().is_cpu() && vb.dtype() == DType::F32 {
            let f = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
            Some((f(&weight)?, f(&bias)?))
        } else {
            None
        };
        let fallback = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self { fallback, weight, bias, cpu_affine, groups, eps })
    }

    /// Normalizes, then applies SiLU.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let given = match scope_next() {
            Some(call) => self.scoped(x, call)?,
            None => None,
        };
        let given = given.as_deref();
        match &self.cpu_affine {
            Some((w, b)) if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() >= 2 => {
                x.contiguous()?.apply_op1_no_bwd(&FusedGroupNorm {
                    weight: w,
                    bias: b,
                    groups: self.groups,
                    eps: self.eps,
                    silu,
                    given,
                })
            }
            _ => {
                let y = match given {
                    Some(g) => self.normalize_with(x, g)?,
                    None => self.fallback.forward(x)?,
                };
                if silu { y.silu() } else { Ok(y) }
            }
        }
    }

    /// Inside a [`StatsScope`]: adds this call's sums over the tile's owned part to the
    /// collection, and returns the whole-image `(mean, 1/σ)` per (image, group) to normalize with.
    fn scoped(&self, x: &Tensor, call: ScopeCall) -> Result<Option<Vec<(f64, f64)>>> {
        let (b, c, h, w) = x.dims4()?;
        if let Some(region) = call.region {
            let (th, tw) = region.tile;
            if th == 0 || tw == 0 || h % th != 0 || w % tw != 0 || h / th != w / tw {
                candle_core::bail!("group-norm stats: a {h}×{w} map is not a multiple of the {th}×{tw} tile");
            }
            let s = h / th;
            let (rows, cols) = (region.rows.len() * s, region.cols.len() * s);
            let mut sums = vec![[0f64; 3]; b * self.groups];
            if rows > 0 && cols > 0 {
                let part = x.narrow(2, region.rows.start * s, rows)?.narrow(3, region.cols.start * s, cols)?;
                let part = part.to_dtype(DType::F64)?.contiguous()?.reshape((b, self.groups, ()))?;
                let sum = part.sum(2)?.flatten_all()?.to_vec1::<f64>()?;
                let sq = part.sqr()?.sum(2)?.flatten_all()?.to_vec1::<f64>()?;
                let n = (c / self.groups * rows * cols) as f64;
                for (k, acc) in sums.iter_mut().enumerate() {
                    *acc = [sum[k], sq[k], n];
                }
            }
            scope_add(call.index, sums)?;
        }
        let Some(stats) = call.apply else { return Ok(None) };
        let Some(layer) = stats.layers.get(call.index) else {
            candle_core::bail!("group-norm stats: none collected for norm call {}", call.index);
        };
        if layer.len() != b * self.groups {
            candle_core::bail!("group-norm stats: {} (image, group) pairs collected, {} here", layer.len(), b * self.groups);
        }
        Ok(Some(
            layer
                .iter()
                .map(|&[sum, sq, n]| {
                    let n = n.max(1.0);
                    let mean = sum / n;
                    let var = (sq / n - mean * mean).max(0.0);
                    (mean, 1.0 / (var + self.eps).sqrt())
                })
                .collect(),
        ))
    }

    /// candle's GroupNorm with given `(mean, 1/σ)` per (image, group) instead of the input's own.
    fn normalize_with(&self, x: &Tensor, given: &[(f64, f64)]) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let dev = x.device();
        let col = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<f32> = given.iter().map(|p| f(p) as f32).collect();
            Tensor::from_vec(v, (b, self.groups, 1), dev)?.to_dtype(x.dtype())
        };
        let (mean, inv) = (col(|p| p.0)?, col(|p| p.1)?);
        let y = x.reshape((b, self.groups, ()))?.broadcast_sub(&mean)?.broadcast_mul(&inv)?.reshape(dims.as_slice())?;
        let mut affine_shape = vec![1usize; dims.len()];
        affine_shape[1] = c;
        let wt = self.weight.to_dtype(x.dtype())?.reshape(affine_shape.as_slice())?;
        let bs = self.bias.to_dtype(x.dtype())?.reshape(affine_shape.as_slice())?;
        y.broadcast_mul(&wt)?.broadcast_add(&bs)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }
}

/// candle's `LayerNorm` (affine, with bias) over the last dimension, its `weight` and `bias`
/// `(size)` read under `vb` in the compute dtype (candle's kernel wants them there) and counted in
/// its ledger.
///
/// # Errors
/// Missing or mis-shaped tensors.
pub fn layer_norm(size: usize, eps: f64, vb: Weights) -> Result<candle_nn::LayerNorm> {
    Ok(candle_nn::LayerNorm::new(vb.get_compute(size, "weight")?, vb.get_compute(size, "bias")?, eps))
}

struct FusedGroupNorm<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    groups: usize,
    eps: f64,
    silu: bool,
    /// `(mean, 1/σ)` per (image, group) to use instead of the input's own.
    given: Option<&'a [(f64, f64)]>,
}

impl CustomOp1 for FusedGroupNorm<'_> {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused-group-norm: expected f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused-group-norm: expected a contiguous input");
        };
        let x = &data[start..end];
        let dims = layout.dims();
        let (b, c) = (dims[0], dims[1]);
        if c != self.weight.len() || c % self.groups != 0 {
            candle_core::bail!("fused-group-norm: {c} channels, {} weights, {} groups", self.weight.len(), self.groups);
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = c / self.groups * spatial;
        if self.given.is_some_and(|g| g.len() != b * self.groups) {
            candle_core::bail!("fused-group-norm: statistics for other than {b}×{} groups", self.groups);
        }
        let mut out = vec![0f32; x.len()];
        // each (image, group) is independent: one task each on rayon's pool
        out.par_chunks_exact_mut(per_group).zip(x.par_chunks_exact(per_group)).enumerate().for_each(|(gi, (dst, src))| {
            let (mean, inv) = match self.given {
                Some(g) => g[gi],
                None => {
                    let (mut sum, mut sq) = (0f64, 0f64);
                    for &v in src {
                        sum += v as f64;
                        sq += (v as f64) * (v as f64);
                    }
                    let n = per_group as f64;
                    let mean = sum / n;
                    let var = (sq / n - mean * mean).max(0.0);
                    (mean, 1.0 / (var + self.eps).sqrt())
                }
            };
            let first_channel = (gi % self.groups) * (c / self.groups);
            for (k, (s, d)) in src.chunks_exact(spatial).zip(dst.chunks_exact_mut(spatial)).enumerate() {
                let ch = first_channel + k;
                let scale = (self.weight[ch] as f64 * inv) as f32;
                let shift = (self.bias[ch] as f64 - mean * self.weight[ch] as f64 * inv) as f32;
                affine(d, s, scale, shift, self.silu);
            }
        });
        debug_assert_eq!(out.len(), b * c * spatial);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Per `GroupNorm` call of a tiled pass, in call order: per (image, group) the sum, the sum of
/// squares (f64) and the count of the values seen, over the whole image.
#[derive(Clone, Debug, Default)]
pub struct NormStats {
    layers: Vec<Vec<[f64; 3]>>,
}

impl NormStats {
    /// How many `GroupNorm` calls were collected.
    pub fn calls(&self) -> usize {
        self.layers.len()
    }
}

/// The part of the whole image a tile stands for while statistics are collected, in the tile's
/// base grid (latent pixels): a map `s` times the tile's size counts rows `s·rows` and columns
/// `s·cols` of itself, so overlapping tiles count every pixel of the image once.
#[derive(Clone, Debug)]
pub struct TileRegion {
    /// The tile's `(height, width)` in base pixels.
    pub tile: (usize, usize),
    /// Owned rows, relative to the tile.
    pub rows: Range<usize>,
    /// Owned columns, relative to the tile.
    pub cols: Range<usize>,
}

struct Scope {
    apply: Option<Arc<NormStats>>,
    collect: Option<(NormStats, TileRegion)>,
    next: usize,
}

struct ScopeCall {
    index: usize,
    apply: Option<Arc<NormStats>>,
    region: Option<TileRegion>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// The next `GroupNorm` call's place in the active scope, if one is active on this thread.
fn scope_next() -> Option<ScopeCall> {
    SCOPE.with(|s| {
        s.borrow_mut().as_mut().map(|sc| {
            let index = sc.next;
            sc.next += 1;
            ScopeCall { index, apply: sc.apply.clone(), region: sc.collect.as_ref().map(|c| c.1.clone()) }
        })
    })
}

fn scope_add(index: usize, sums: Vec<[f64; 3]>) -> Result<()> {
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let Some((acc, _)) = s.as_mut().and_then(|sc| sc.collect.as_mut()) else { return Ok(()) };
        if acc.layers.len() <= index {
            acc.layers.resize(index + 1, Vec::new());
        }
        let layer = &mut acc.layers[index];
        if layer.is_empty() {
            *layer = sums;
        } else if layer.len() != sums.len() {
            candle_core::bail!("group-norm stats: norm call {index} saw {} groups, earlier {}", sums.len(), layer.len());
        } else {
            for (a, s) in layer.iter_mut().zip(sums) {
                for k in 0..3 {
                    a[k] += s[k];
                }
            }
        }
        Ok(())
    })
}

/// While alive, every [`GroupNorm`] run on this thread (in a fixed call order: the k-th call of
/// each tile is the same layer) may add its sums over the tile's [`TileRegion`] to a collection
/// and normalize with the k-th entry of given whole-image statistics instead of its own input's.
/// Dropping it (or [`StatsScope::finish`]) ends the scope.
pub struct StatsScope(());

impl StatsScope {
    /// Starts a scope: normalize with `apply` (own statistics where `None`), and add sums to
    /// `collect`'s statistics over its region where given.
    ///
    /// # Errors
    /// A scope already active on this thread.
    pub fn begin(apply: Option<Arc<NormStats>>, collect: Option<(NormStats, TileRegion)>) -> Result<Self> {
        SCOPE.with(|s| {
            let mut s = s.borrow_mut();
            if s.is_some() {
                candle_core::bail!("group-norm stats: scopes do not nest");
            }
            *s = Some(Scope { apply, collect, next: 0 });
            Ok(Self(()))
        })
    }

    /// Ends the scope, returning the collection (with this scope's sums added), if one was given.
    pub fn finish(self) -> Option<NormStats> {
        SCOPE.with(|s| s.borrow_mut().take()).and_then(|sc| sc.collect.map(|c| c.0))
    }
}

impl Drop for StatsScope {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().take());
    }
}

wide_fn! {
    /// `dst = src · scale + shift`, then SiLU when `silu`.
    fn affine(dst: &mut [f32], src: &[f32], scale: f32, shift: f32, silu: bool) -> () {
        if silu {
            for (o, &v) in dst.iter_mut().zip(src) {
                let y = v * scale + shift;
                *o = y / (1.0 + exp(-y));
            }
        } else {
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = v * scale + shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    /// The fused kernel equals candle's GroupNorm (+ SiLU) within 1e-5, on a 4-D input with an
    /// offset mean so a naive variance would lose precision.
    #[test]
    fn fused_matches_candle() {
        let dev = Device::Cpu;
        let w = Tensor::randn(1f32, 0.5, 12, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 12, &dev).unwrap();
        let vb = VarBuilder::from_tensors(
            HashMap::from([("weight".to_string(), w), ("bias".to_string(), b)]),
            DType::F32,
            &dev,
        );
        let gn = GroupNorm::new(4, 12, 1e-6, Weights::new(vb.clone())).unwrap();
        assert!(gn.cpu_affine.is_some());
        let reference = candle_nn::group_norm(4, 12, 1e-6, vb).unwrap();
        let x = (Tensor::randn(0f32, 2., (2, 12, 5, 7), &dev).unwrap() + 3.0).unwrap();
        let want = reference.forward(&x).unwrap();
        let d = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d(&gn.forward(&x).unwrap(), &want) < 1e-5);
        assert!(d(&gn.forward_silu(&x).unwrap(), &want.silu().unwrap()) < 1e-5);
        // a non-contiguous input takes the same result
        let xt = x.transpose(2, 3).unwrap();
        let d2 = d(&gn.forward(&xt).unwrap(), &reference.forward(&xt.contiguous().unwrap()).unwrap());
        assert!(d2 < 1e-5, "{d2}");
    }
}
