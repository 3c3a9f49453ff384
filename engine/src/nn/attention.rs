//! Scaled dot-product attention computed in slices of query rows (the `attention_slice` knob), so
//! that with slicing on no full `Lq × Lk` score matrix ever exists.

use candle_core::{Result, Tensor};

/// `softmax(scale · Q Kᵀ + mask) V` for `q: (B, Lq, Dh)`, `k: (B, Lk, Dh)`, `v: (B, Lk, Dv)`, where `B`
/// is batch × heads. `mask`, if given, is added to the scores and broadcasts as `(Lq, Lk)`.
///
/// `slice` = 0 computes all query rows at once; `slice` = N computes N query rows at a time, so the
/// largest score block is `B × N × Lk`. Both give the same result up to float rounding.
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
    let lq = q.dim(1)?;
    // scaling Q (Lq·Dh values) is cheaper than scaling the scores (Lq·Lk values)
    let q = (q * scale)?;
    let kt = k.t()?;
    let step = if slice == 0 || slice >= lq { lq } else { slice };
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
    let m: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (len, len), device)
}


#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, DType};

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
