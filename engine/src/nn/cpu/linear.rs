//! The linear layer's product on the CPU in f32: `y = x Wᵀ + b` as one matrix product reading `W`
//! in its stored `(out, in)` layout, written on top of the bias rows (no separate bias pass), the
//! product split over rayon's pool by the `gemm` crate.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::expand::{self, Stored};
use super::{View, matmul, threads};

/// `x (rows, in)` times `weight (out, in)` transposed, plus `bias (out)`.
///
/// # Errors
/// The output cannot be allocated.
pub fn linear(x: &[f32], rows: usize, weight: &[f32], out_features: usize, bias: Option<&[f32]>) -> candle_core::Result<Vec<f32>> {
    let in_features = weight.len() / out_features.max(1);
    let mut y = super::zeroed(rows * out_features, "a linear layer's output")?;
    if let Some(b) = bias {
        y.par_chunks_mut(out_features * 64).for_each(|block| {
            for row in block.chunks_exact_mut(out_features) {
                row.copy_from_slice(b);
            }
        });
    }
    let lhs = View { ptr: x.as_ptr(), rs: in_features as isize, cs: 1 };
    // Wᵀ as a view: element (i, j) is weight[j, i]
    let rhs = View { ptr: weight.as_ptr(), rs: 1, cs: in_features as isize };
    let par = if threads() > 1 { gemm::Parallelism::Rayon(threads()) } else { gemm::Parallelism::None };
    // SAFETY: y is rows×out, x rows×in and weight out×in, all contiguous and in bounds
    unsafe { matmul(rows, out_features, in_features, y.as_mut_ptr(), out_features as isize, bias.is_some(), lhs, rhs, par) };
    Ok(y)
}

/// [`linear`] as a candle op over `x`, contiguous f32 `(rows, in)` on the CPU, with the weight as
/// the layer holds it: `(out, in)` values, f32 or narrower ([`expand`]).
pub struct LinearOp<'a> {
    pub weight: Stored<'a>,
    pub out_features: usize,
    pub bias: Option<&'a [f32]>,
}

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "headroom-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = xs else {
            candle_core::bail!("headroom-linear: expected an f32 input");
        };
        let Some((x0, x1)) = xl.contiguous_offsets() else {
            candle_core::bail!("headroom-linear: expected a contiguous input");
        };
        let (rows, in_features) = xl.shape().dims2()?;
        let out_features = self.out_features;
        if self.bias.is_some_and(|b| b.len() != out_features) {
            candle_core::bail!("headroom-linear: bias does not have {out_features} values");
        }
        let y = expand::with_f32(self.weight, |w| {
            (w.len() == out_features * in_features).then(|| linear(&x[x0..x1], rows, w, out_features, self.bias))
        })?;
        let Some(y) = y else {
            candle_core::bail!("headroom-linear: input {:?} does not fit a ({out_features}, ·) weight", xl.dims());
        };
        let y = y?;
        Ok((CpuStorage::F32(y), Shape::from((rows, out_features))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Equals candle's matmul plus bias within 1e-4, with and without a bias, for a row count
    /// that is not a multiple of the bias-fill block.
    #[test]
    fn matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (131, 48), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.2, (40, 48), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 40, &dev).unwrap();
        let bias = b.to_vec1::<f32>().unwrap();
        let plain = x.matmul(&w.t().unwrap()).unwrap();
        let d = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let op = |bias| LinearOp { weight: Stored::Dense(&w), out_features: 40, bias };
        let got = x.apply_op1_no_bwd(&op(Some(&bias))).unwrap();
        assert!(d(&got, &plain.broadcast_add(&b).unwrap()) < 1e-4);
        let got = x.apply_op1_no_bwd(&op(None)).unwrap();
        assert!(d(&got, &plain) < 1e-4);
        // a weight that does not fit the input is an error
        let wrong = LinearOp { weight: Stored::Dense(&w), out_features: 41, bias: None };
        assert!(x.apply_op1_no_bwd(&wrong).is_err());
    }
}
