//! Scaled dot-product attention computed in blocks of query rows: at most `attention_slice` rows
//! when the knob is set, and never more than a fixed score budget either way, so no full `Lq × Lk`
//! score matrix ever exists. On the CPU in f32 it is one fused kernel ([`super::cpu::attention`]).

use candle_core::{DType, Result, Tensor};

use super::cpu;

/// Scores one block holds at most off the CPU f32 kernel (2²⁷ values: 512 MiB in f32).
pub const DEVICE_BLOCK_SCORES: usize = 1 << 27;

/// `softmax(scale · Q Kᵀ + mask) V` for `q: (B, Lq, Dh)`, `k: (B, Lk, Dh)`, `v: (B, Lk, Dv)`, where `B`
/// is batch × heads. `mask`, if given, is added to the scores and broadcasts as `(Lq, Lk)`.
///
/// `slice` = 0 lets the engine choose the block of query rows (bounded by a fixed score budget);
/// `slice` = N computes at most N query rows at a time. Every choice gives the same result up to
/// float rounding.
///
/// # Errors
/// Shape mismatches and tensor errors.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    slice: usize,
) -> Result<Tensor> {
    if q.device().is_cpu() && [q, k, v].iter().all(|t| t.dtype() == DType::F32) {
        return cpu_attention(q, k, v, scale, mask, slice);
    }
    let lq = q.dim(1)?;
    // scaling Q (Lq·Dh values) is cheaper than scaling the scores (Lq·Lk values)
    let q = (q * scale)?;
    let kt = k.t()?;
    // elsewhere (a GPU, half types) one block holds every head, up to a budget of scores
    let per_row = q.dim(0)? * k.dim(1)?;
    let cap = (DEVICE_BLOCK_SCORES / per_row.max(1)).max(1);
    let step = if slice == 0 { cap } else { slice.min(cap) }.min(lq);
    if step == lq {
        return rows(&q, &kt, v, mask);
    }
    let mut outs = Vec::with_capacity(lq.div_ceil(step));
    let mut start = 0;
    while start < lq {
        let n = step.min(lq - start);
        let qs = q.narrow(1, start, n)?;
        let ms = match mask {
            Some(m) => Some(m.narrow(0, start, n)?),
            None => None,
        };
        outs.push(rows(&qs, &kt, v, ms.as_ref())?);
        start += n;
    }
    Tensor::cat(&outs, 1)
}

/// The CPU f32 path: one fused op over contiguous `q`, `k`, `v` (see [`cpu::attention`]).
fn cpu_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>, slice: usize) -> Result<Tensor> {
    let mask = match mask {
        Some(m) => Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    let op = cpu::attention::AttentionOp { scale: scale as f32, mask: mask.as_deref(), slice };
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

/// One block of query rows: `softmax(q kt + mask) v`.
fn rows(q: &Tensor, kt: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let mut scores = q.matmul(kt)?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    drop(scores);
    probs.matmul(v)
}

/// Splits `(B, L, H·Dh)` into `(B·H, L, Dh)` heads, contiguous.
///
/// # Errors
/// When the last dimension is not a multiple of `heads`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, c) = x.dims3()?;
    x.reshape((b, l, heads, c / heads))?.transpose(1, 2)?.reshape((b * heads, l, c / heads))
}

/// Joins `(B·H, L, Dh)` heads back into `(B, L, H·Dh)`.
///
/// # Errors
/// When the batch is not a multiple of `heads`.
pub fn merge_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (bh, l, d) = x.dims3()?;
    x.reshape((bh / heads, heads, l, d))?.transpose(1, 2)?.reshape((bh / heads, l, heads * d))
}

/// A causal mask `(L, L)`: 0 on and below the diagonal, −∞ above.
///
/// # Errors
/// Tensor errors.
pub fn causal_mask(len: usize, device: &candle_core::Device) -> Result<Tensor> {
    let m: Vec<f32> =
        (0..len).flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(m, (len, len), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Sliced attention equals unsliced attention within 1e-5, with and without a mask, including
    /// a slice that does not divide the row count.
    #[test]
    fn sliced_equals_full() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (3, 37, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (3, 37, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (3, 37, 5), &dev).unwrap();
        let mask = causal_mask(37, &dev).unwrap();
        for m in [None, Some(&mask)] {
            let full = attention(&q, &k, &v, 0.35, m, 0).unwrap();
            for s in [1, 5, 16, 36, 37, 100] {
                let sl = attention(&q, &k, &v, 0.35, m, s).unwrap();
                let d = (&full - &sl).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d <= 1e-5, "slice {s}: {d}");
            }
        }
        // the mask really masks: row 0 sees only key 0
        let out = attention(&q, &k, &v, 0.35, Some(&mask), 4).unwrap();
        let row0 = out.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let v0 = v.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let d = (row0 - v0).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F32).unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }

    /// Heads split and merge back to the input.
    #[test]
    fn heads_round_trip() {
        let x = Tensor::randn(0f32, 1., (2, 7, 12), &Device::Cpu).unwrap();
        let back = merge_heads(&split_heads(&x, 3).unwrap(), 3).unwrap();
        assert_eq!((x - back).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
