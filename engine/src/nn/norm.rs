//! Group normalization with an optional fused SiLU. On the CPU with f32 it is one custom op that
//! reads the input twice (statistics, then the normalized write), one (image, group) per task on
//! rayon's pool, instead of candle's chain of eight element-wise passes plus a separate SiLU pass;
//! elsewhere it falls back to candle's.
//!
//! A map held in pieces (the tiled VAE decode's tiles) is normalized with the whole map's
//! statistics: [`GroupNorm::accumulate`] sums each piece into a [`GroupStats`], and
//! [`GroupNorm::forward_with_stats`] applies them to any piece, with the same kernel, eps and
//! variance (`E[x²] − E[x]²`, in f64) as the whole-map [`GroupNorm::forward_silu`].

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
    /// The affine weight and bias `(channels)`, for applying given statistics off the fused kernel.
    weight: Tensor,
    bias: Tensor,
    /// The affine weight and bias copied out once for the CPU kernel (f32 only).
    cpu_affine: Option<(Vec<f32>, Vec<f32>)>,
    groups: usize,
    eps: f64,
}

/// Per (image, group) sums over the pieces of one feature map seen so far, in f64: what
/// [`GroupNorm::forward_with_stats`] needs to normalize each piece as the whole map.
#[derive(Clone, Debug, Default)]
pub struct GroupStats {
    /// `[Σx, Σx²]` per (image, group), image-major.
    sums: Vec<[f64; 2]>,
    /// Elements per (image, group) summed so far.
    count: u64,
}

impl GroupStats {
    /// Mean and `1/√(var + eps)` per (image, group), the variance as the fused kernel takes it.
    fn moments(&self, eps: f64) -> Vec<(f64, f64)> {
        self.sums.iter().map(|&[s, q]| moments(s, q, self.count as f64, eps)).collect()
    }
}

/// Mean and `1/√(var + eps)` of `n` values with sum `sum` and sum of squares `sq`.
fn moments(sum: f64, sq: f64, n: f64, eps: f64) -> (f64, f64) {
    let mean = sum / n;
    let var = (sq / n - mean * mean).max(0.0);
    (mean, 1.0 / (var + eps).sqrt())
}

/// `Σx` and `Σx²` of `src`, in f64.
fn sums(src: &[f32]) -> [f64; 2] {
    let (mut sum, mut sq) = (0f64, 0f64);
    for &v in src {
        sum += v as f64;
        sq += (v as f64) * (v as f64);
    }
    [sum, sq]
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

    /// Whether `x` runs on the fused CPU kernel; its affine values when it does.
    fn fused_for(&self, x: &Tensor) -> Option<&(Vec<f32>, Vec<f32>)> {
        self.cpu_affine.as_ref().filter(|_| x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() >= 2)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        match self.fused_for(x) {
            Some((w, b)) => x.contiguous()?.apply_op1_no_bwd(&FusedGroupNorm {
                weight: w,
                bias: b,
                groups: self.groups,
                eps: self.eps,
                silu,
                moments: None,
            }),
            None => {
                let y = self.fallback.forward(x)?;
                if silu { y.silu() } else { Ok(y) }
            }
        }
    }

    /// Adds `x` `(B, C, …)`, one piece of a feature map, to the map's running per (image, group)
    /// sums in `stats` (every piece must have the same batch and channels).
    ///
    /// # Errors
    /// A piece whose batch or channels differ from the earlier pieces'; tensor errors.
    pub fn accumulate(&self, x: &Tensor, stats: &mut GroupStats) -> Result<()> {
        let dims = x.dims();
        if dims.len() < 2 || !dims[1].is_multiple_of(self.groups) {
            candle_core::bail!("group norm: input {dims:?} does not split into {} groups", self.groups);
        }
        let (b, per_group) = (dims[0], x.elem_count() / (dims[0] * self.groups).max(1));
        let piece: Vec<[f64; 2]> = if self.fused_for(x).is_some() {
            let s = x.contiguous()?.apply_op1_no_bwd(&GroupSums { groups: self.groups })?;
            s.flatten_all()?.to_vec1::<f64>()?.chunks_exact(2).map(|c| [c[0], c[1]]).collect()
        } else {
            let x3 = x.to_dtype(DType::F32)?.reshape((b, self.groups, per_group))?;
            let s = x3.sum_keepdim(2)?.flatten_all()?.to_vec1::<f32>()?;
            let q = x3.sqr()?.sum_keepdim(2)?.flatten_all()?.to_vec1::<f32>()?;
            s.iter().zip(&q).map(|(&s, &q)| [s as f64, q as f64]).collect()
        };
        if stats.sums.is_empty() {
            stats.sums = piece;
        } else if stats.sums.len() != piece.len() {
            candle_core::bail!("group norm: a piece of {} (image, group) pairs added to sums of {}", piece.len(), stats.sums.len());
        } else {
            for (acc, p) in stats.sums.iter_mut().zip(&piece) {
                acc[0] += p[0];
                acc[1] += p[1];
            }
        }
        stats.count += per_group as u64;
        Ok(())
    }

    /// Normalizes `x`, one piece of a feature map, with the whole map's `stats` (from
    /// [`Self::accumulate`] over all its pieces), then applies SiLU when `silu`: the piece of what
    /// [`Self::forward_silu`] (or `forward`) gives on the whole map.
    ///
    /// # Errors
    /// `stats` empty or for another batch; tensor errors.
    pub fn forward_with_stats(&self, x: &Tensor, stats: &GroupStats, silu: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || stats.count == 0 || stats.sums.len() != dims[0] * self.groups {
            candle_core::bail!("group norm: statistics for {} (image, group) pairs, input {dims:?}", stats.sums.len());
        }
        let m = stats.moments(self.eps);
        if let Some((w, b)) = self.fused_for(x) {
            let op = FusedGroupNorm { weight: w, bias: b, groups: self.groups, eps: self.eps, silu, moments: Some(&m) };
            return x.contiguous()?.apply_op1_no_bwd(&op);
        }
        // elsewhere: (x − mean)·inv per (image, group) in f32, then the affine per channel
        let (bsz, c) = (dims[0], dims[1]);
        let dev = x.device();
        let mean = Tensor::from_vec(m.iter().map(|p| p.0 as f32).collect::<Vec<_>>(), (bsz, self.groups, 1), dev)?;
        let inv = Tensor::from_vec(m.iter().map(|p| p.1 as f32).collect::<Vec<_>>(), (bsz, self.groups, 1), dev)?;
        let x3 = x.to_dtype(DType::F32)?.reshape((bsz, self.groups, ()))?;
        let mut affine_shape = vec![1; dims.len()];
        affine_shape[1] = c;
        let w = self.weight.to_dtype(DType::F32)?.reshape(affine_shape.as_slice())?;
        let b = self.bias.to_dtype(DType::F32)?.reshape(affine_shape.as_slice())?;
        let y = x3.broadcast_sub(&mean)?.broadcast_mul(&inv)?.reshape(dims)?.broadcast_mul(&w)?.broadcast_add(&b)?;
        let y = if silu { y.silu()? } else { y };
        y.to_dtype(x.dtype())
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

/// The shape checks both CPU ops share: `(b, c, spatial)` of a contiguous f32 input.
fn cpu_input<'s>(storage: &'s CpuStorage, layout: &Layout, groups: usize, op: &str) -> Result<(&'s [f32], usize, usize, usize)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expected f32");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: expected a contiguous input");
    };
    let dims = layout.dims();
    let (b, c) = (dims[0], dims[1]);
    if c % groups != 0 {
        candle_core::bail!("{op}: {c} channels do not split into {groups} groups");
    }
    Ok((&data[start..end], b, c, dims[2..].iter().product()))
}

/// Per (image, group) `[Σx, Σx²]` in f64, as a `(B·groups, 2)` tensor, one task each.
struct GroupSums {
    groups: usize,
}

impl CustomOp1 for GroupSums {
    fn name(&self) -> &'static str {
        "group-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b, c, spatial) = cpu_input(storage, layout, self.groups, "group-sums")?;
        let per_group = c / self.groups * spatial;
        let pairs: Vec<[f64; 2]> = x.par_chunks_exact(per_group).map(sums).collect();
        let out: Vec<f64> = pairs.into_iter().flatten().collect();
        Ok((CpuStorage::F64(out), Shape::from((b * self.groups, 2))))
    }
}

struct FusedGroupNorm<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    groups: usize,
    eps: f64,
    silu: bool,
    /// Mean and `1/√(var + eps)` per (image, group) to apply; `None`: the input's own.
    moments: Option<&'a [(f64, f64)]>,
}

impl CustomOp1 for FusedGroupNorm<'_> {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b, c, spatial) = cpu_input(storage, layout, self.groups, "fused-group-norm")?;
        if c != self.weight.len() {
            candle_core::bail!("fused-group-norm: {c} channels, {} weights", self.weight.len());
        }
        if self.moments.is_some_and(|m| m.len() != b * self.groups) {
            candle_core::bail!("fused-group-norm: statistics do not cover {b} images of {} groups", self.groups);
        }
        let per_group = c / self.groups * spatial;
        let mut out = crate::nn::cpu::zeroed(x.len(), "a group norm's output")?;
        // each (image, group) is independent: one task each on rayon's pool
        out.par_chunks_exact_mut(per_group).zip(x.par_chunks_exact(per_group)).enumerate().for_each(|(gi, (dst, src))| {
            let (mean, inv) = match self.moments {
                Some(m) => m[gi],
                None => {
                    let [sum, sq] = sums(src);
                    moments(sum, sq, per_group as f64, self.eps)
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

    /// A map normalized in three unequal pieces with the sums of all of them equals the whole
    /// map normalized at once (within 1e-5), on the fused kernel and on the fallback (candle's ops),
    /// with and without SiLU; a piece of another batch is refused.
    #[test]
    fn pieces_with_shared_stats_match_whole() {
        let dev = Device::Cpu;
        let w = Tensor::randn(1f32, 0.5, 12, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 12, &dev).unwrap();
        let ts = HashMap::from([("weight".to_string(), w), ("bias".to_string(), b)]);
        let d = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()
        };
        let x = (Tensor::randn(0f32, 2., (2, 12, 6, 11), &dev).unwrap() + 3.0).unwrap();
        let fused = GroupNorm::new(4, 12, 1e-6, Weights::new(VarBuilder::from_tensors(ts, DType::F32, &dev))).unwrap();
        assert!(fused.cpu_affine.is_some());
        let fallback = GroupNorm { cpu_affine: None, ..fused.clone() };
        for (kind, gn) in [("fused", fused), ("fallback", fallback)] {
            let pieces = [x.narrow(3, 0, 4).unwrap(), x.narrow(3, 4, 1).unwrap(), x.narrow(3, 5, 6).unwrap()];
            let mut stats = GroupStats::default();
            for p in &pieces {
                gn.accumulate(p, &mut stats).unwrap();
            }
            for silu in [false, true] {
                let whole = gn.run(&x, silu).unwrap();
                let parts: Vec<Tensor> = pieces.iter().map(|p| gn.forward_with_stats(p, &stats, silu).unwrap()).collect();
                let e = d(&Tensor::cat(&parts, 3).unwrap(), &whole);
                assert!(e < 1e-5, "{kind} silu {silu}: {e}");
            }
            // the pieces' own statistics differ from the whole's: the shared sums matter
            assert!(d(&gn.forward(&pieces[0]).unwrap(), &gn.forward_with_stats(&pieces[0], &stats, false).unwrap()) > 1e-3);
            assert!(gn.accumulate(&x.narrow(0, 0, 1).unwrap(), &mut stats).is_err());
        }
    }
}
