//! Element-wise kernels fused where the models chain them: GEGLU (`a · gelu(b)` over the two
//! halves of a projection) in one pass over rows split across rayon's pool, with the vectorized
//! [`super::math::gelu_erf`], instead of a narrow, a copy, libm's erf one value at a time and a
//! multiply.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::math::gelu_erf;

/// Rows per task (a row is one token's projection).
const ROWS_PER_TASK: usize = 64;

/// `(…, 2n)` → `(…, n)`: the first half times the exact GELU of the second, per row.
pub struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "headroom-geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("headroom-geglu: expected f32");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("headroom-geglu: expected a contiguous input");
        };
        let mut dims = layout.dims().to_vec();
        let width = dims.last().copied().unwrap_or(0);
        if width == 0 || width % 2 != 0 {
            candle_core::bail!("headroom-geglu: the last dimension ({width}) is not even");
        }
        let half = width / 2;
        let x = &data[a..b];
        let mut out = super::zeroed(x.len() / 2, "a GEGLU's output")?;
        out.par_chunks_mut(half * ROWS_PER_TASK)
            .zip(x.par_chunks(width * ROWS_PER_TASK))
            .for_each(|(o, rows)| geglu_rows(o, rows, half));
        if let Some(last) = dims.last_mut() {
            *last = half;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

wide_fn! {
    /// `out` row i = left half of `rows` row i times the GELU of its right half.
    fn geglu_rows(out: &mut [f32], rows: &[f32], half: usize) -> () {
        for (orow, row) in out.chunks_exact_mut(half).zip(rows.chunks_exact(2 * half)) {
            let (left, gate) = row.split_at(half);
            for ((y, &l), &g) in orow.iter_mut().zip(left).zip(gate) {
                *y = l * gelu_erf(g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Equals candle's narrow · gelu_erf chain within 1e-6 on a 3-D input of more rows than one
    /// task takes.
    #[test]
    fn geglu_matches_chain() {
        let h = Tensor::randn(0f32, 2., (2, 77, 48), &Device::Cpu).unwrap();
        let want = (h.narrow(2, 0, 24).unwrap() * h.narrow(2, 24, 24).unwrap().gelu_erf().unwrap()).unwrap();
        let got = h.apply_op1_no_bwd(&Geglu).unwrap();
        assert_eq!(got.dims(), &[2, 77, 24]);
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
    }
}
