//! Group normalization with an optional fused SiLU. On the CPU with f32 it is one custom op that
//! reads the input twice (statistics, then the normalized write), one (image, group) per task on
//! rayon's pool, instead of candle's chain of eight element-wise passes plus a separate SiLU pass;
//! elsewhere it falls back to candle's.

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
        let fallback = candle_nn::GroupNorm::new(weight, bias, channels, groups, eps)?;
        Ok(Self { fallback, cpu_affine, groups, eps })
    }

    /// Normalizes, then applies SiLU.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        match &self.cpu_affine {
            Some((w, b)) if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() >= 2 => x
                .contiguous()?
                .apply_op1_no_bwd(&FusedGroupNorm { weight: w, bias: b, groups: self.groups, eps: self.eps, silu }),
            _ => {
                let y = self.fallback.forward(x)?;
                if silu { y.silu() } else { Ok(y) }
            }
        }
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
        let mut out = crate::nn::cpu::zeroed(x.len(), "a group norm's output")?;
        // each (image, group) is independent: one task each on rayon's pool
        out.par_chunks_exact_mut(per_group).zip(x.par_chunks_exact(per_group)).enumerate().for_each(|(gi, (dst, src))| {
            let (mut sum, mut sq) = (0f64, 0f64);
            for &v in src {
                sum += v as f64;
                sq += (v as f64) * (v as f64);
            }
            let n = per_group as f64;
            let mean = sum / n;
            let var = (sq / n - mean * mean).max(0.0);
            let inv = 1.0 / (var + self.eps).sqrt();
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
}
