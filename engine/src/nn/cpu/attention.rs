//! Scaled dot-product attention on the CPU in f32, one block of query rows at a time per task:
//! `S = Q_blk Kᵀ` (scaled, mask added), a row softmax in place with a vectorizable `exp`, then
//! `O_blk = S V` written straight into the output. No task holds more than `rows × Lk` scores, so
//! the full `Lq × Lk` matrix never exists and nothing is copied or concatenated.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::math::exp;
use super::{SharedOut, View, inner_parallelism, matmul};

/// Scores one task holds at most (1 MiB of f32, about one core's L2).
pub const BLOCK_SCORES: usize = 1 << 18;

/// Shapes of one attention call: `q (bh, lq, d)`, `k (bh, lk, d)`, `v (bh, lk, dv)`.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub bh: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
}

/// Query rows per block: the user's slice when set (0 = not set), and never more than fit
/// [`BLOCK_SCORES`] (at least 1).
pub fn block_rows(lq: usize, lk: usize, slice: usize) -> usize {
    let cap = (BLOCK_SCORES / lk.max(1)).max(1);
    let rows = if slice == 0 { cap } else { slice.min(cap) };
    rows.clamp(1, lq.max(1))
}

/// `softmax(scale · q kᵀ + mask) v` over contiguous row-major slices; `mask` is `(lq, lk)`.
///
/// # Errors
/// The output cannot be allocated.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    scale: f32,
    mask: Option<&[f32]>,
    slice: usize,
) -> candle_core::Result<Vec<f32>> {
    let mut out = super::zeroed(s.bh * s.lq * s.dv, "an attention's output")?;
    let rows = block_rows(s.lq, s.lk, slice);
    let blocks = s.lq.div_ceil(rows);
    let tasks = s.bh * blocks;
    let par = inner_parallelism(tasks);
    let dst = SharedOut(out.as_mut_ptr());
    (0..tasks).into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, t| {
        let (h, blk) = (t / blocks, t % blocks);
        let r0 = blk * rows;
        let n = rows.min(s.lq - r0);
        scores.resize(n * s.lk, 0.0);
        let qv = View { ptr: q[(h * s.lq + r0) * s.d..].as_ptr(), rs: s.d as isize, cs: 1 };
        // Kᵀ as a view: element (i, j) is k[j, i]
        let kt = View { ptr: k[h * s.lk * s.d..].as_ptr(), rs: 1, cs: s.d as isize };
        // SAFETY: `scores` is this task's own n×lk buffer; the views address q, k in bounds
        unsafe { matmul(n, s.lk, s.d, scores.as_mut_ptr(), s.lk as isize, false, qv, kt, par) };
        for (i, row) in scores.chunks_exact_mut(s.lk).enumerate() {
            let m = mask.map(|m| &m[(r0 + i) * s.lk..(r0 + i + 1) * s.lk]);
            softmax_row(row, scale, m);
        }
        let pv = View { ptr: scores.as_ptr(), rs: s.lk as isize, cs: 1 };
        let vv = View { ptr: v[h * s.lk * s.dv..].as_ptr(), rs: s.dv as isize, cs: 1 };
        // SAFETY: rows r0..r0+n of head h are written by this task only
        unsafe {
            let d = dst.get().add((h * s.lq + r0) * s.dv);
            matmul(n, s.dv, s.lk, d, s.dv as isize, false, pv, vv, par)
        };
    });
    Ok(out)
}

/// `row ← softmax(scale · row + mask)` in place. A row that is all −∞ becomes all zeros.
fn softmax_row(row: &mut [f32], scale: f32, mask: Option<&[f32]>) {
    if let Some(m) = mask {
        for (x, &mv) in row.iter_mut().zip(m) {
            *x = *x * scale + mv;
        }
    } else {
        for x in row.iter_mut() {
            *x *= scale;
        }
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let sum = exp_sub_sum(row, max);
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

wide_fn! {
    /// `x ← exp(x − max)` over the row, returning the sum (in 16 lanes, so it vectorizes).
    fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
        let mut lanes = [0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            for (x, l) in c.iter_mut().zip(lanes.iter_mut()) {
                *x = exp(*x - max);
                *l += *x;
            }
        }
        let mut sum: f32 = lanes.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            sum += *x;
        }
        sum
    }
}

/// [`attention`] as a candle op over `(q, k, v)`, f32 on the CPU, each `(bh, l, d)` contiguous.
pub struct AttentionOp<'a> {
    pub scale: f32,
    /// `(lq, lk)` values added to the scores (a causal mask), contiguous.
    pub mask: Option<&'a [f32]>,
    /// Query rows per block (the `attention_slice` knob; 0 = the kernel's own block).
    pub slice: usize,
}

impl CustomOp3 for AttentionOp<'_> {
    fn name(&self) -> &'static str {
        "headroom-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            candle_core::bail!("headroom-attention: expected f32 q, k, v");
        };
        let slice = |s: &'_ [f32], l: &Layout| -> Result<Vec<usize>> {
            match l.contiguous_offsets() {
                Some((a, b)) if b <= s.len() => Ok(vec![a, b]),
                _ => candle_core::bail!("headroom-attention: expected contiguous q, k, v"),
            }
        };
        let (qo, ko, vo) = (slice(q, ql)?, slice(k, kl)?, slice(v, vl)?);
        let (bh, lq, d) = ql.shape().dims3()?;
        let (kb, lk, kd) = kl.shape().dims3()?;
        let (vb, vlk, dv) = vl.shape().dims3()?;
        if kb != bh || vb != bh || kd != d || vlk != lk {
            candle_core::bail!("headroom-attention: q {:?}, k {:?}, v {:?} do not fit", ql.dims(), kl.dims(), vl.dims());
        }
        if self.mask.is_some_and(|m| m.len() != lq * lk) {
            candle_core::bail!("headroom-attention: the mask is not {lq}×{lk}");
        }
        let shape = AttnShape { bh, lq, lk, d, dv };
        let out = attention(&q[qo[0]..qo[1]], &k[ko[0]..ko[1]], &v[vo[0]..vo[1]], shape, self.scale, self.mask, self.slice)?;
        Ok((CpuStorage::F32(out), Shape::from((bh, lq, dv))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of rows are chosen from the slice knob and capped by the score budget.
    #[test]
    fn block_rows_rules() {
        assert_eq!(block_rows(4096, 4096, 0), 64);
        assert_eq!(block_rows(4096, 4096, 8), 8);
        assert_eq!(block_rows(4096, 4096, 1024), 64);
        assert_eq!(block_rows(77, 77, 0), 77);
        assert_eq!(block_rows(10, 1 << 20, 0), 1);
    }
}
