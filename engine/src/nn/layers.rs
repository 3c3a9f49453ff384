//! Weight-holding layers that model code builds from: [`Linear`], [`Conv2d`], and the
//! activations the checkpoints name in their configs.
//!
//! Each layer keeps its weight as [`Weights::matrix`] hands it over: dense, or quantized. On the
//! CPU in f32 the products run on [`super::cpu`]'s kernels, a narrow weight (f16, bf16, GGML
//! blocks) widened to f32 for the call into a buffer the thread reuses
//! ([`super::cpu::expand`]); elsewhere a dense weight is converted to the input's dtype at use
//! and a quantized linear runs candle's quantized matmul (`QMatMul`) on f32 inputs. Biases stay
//! dense.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Result, Tensor};

use super::Weights;
use super::cpu::conv::Conv2dOp;
use super::cpu::expand::Stored;
use super::cpu::linear::LinearOp;
use super::weights::StoredWeight;

/// How a linear layer stores its weight.
#[derive(Clone, Debug)]
enum LinearWeight {
    /// A dense `(out, in)` matrix, in its storage dtype.
    Dense(Tensor),
    /// A quantized `(out, in)` matrix and candle's matmul for it.
    Quantized(QMatMul),
}

/// `y = x Wᵀ + b` over the last dimension, for inputs of any rank ≥ 1.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    /// The bias as f32 values for the CPU kernel, which adds it in the same pass.
    cpu_bias: Option<Vec<f32>>,
    out_features: usize,
}

/// A CPU bias's values in f32, for the kernels that add it in their own pass.
fn cpu_values(bias: &Option<Tensor>) -> Result<Option<Vec<f32>>> {
    match bias {
        Some(b) if b.device().is_cpu() => Ok(Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?)),
        _ => Ok(None),
    }
}

/// Bytes a dense tensor holds.
fn dense_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// `t` in `dtype`, converting only when it differs.
fn as_dtype(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype { Ok(t.clone()) } else { t.to_dtype(dtype) }
}

impl Linear {
    /// Loads `weight` `(out, in)` and, when `bias`, `bias` `(out)` under `vb`.
    ///
    /// # Errors
    /// A missing tensor or one of the wrong shape.
    pub fn new(in_features: usize, out_features: usize, bias: bool, vb: Weights) -> Result<Self> {
        let weight = match vb.matrix((out_features, in_features), "weight")? {
            StoredWeight::Dense(w) => LinearWeight::Dense(w),
            StoredWeight::Quantized(q) => LinearWeight::Quantized(QMatMul::from_qtensor(q)?),
        };
        let b = if bias { Some(vb.get(out_features, "bias")?) } else { None };
        let cpu_bias = cpu_values(&b)?;
        Ok(Self { weight, bias: b, cpu_bias, out_features })
    }

    /// Bytes the layer holds (weight as stored, and bias).
    pub fn weight_bytes(&self) -> u64 {
        let w = match &self.weight {
            LinearWeight::Dense(w) => dense_bytes(w),
            LinearWeight::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes() as u64,
            LinearWeight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => dense_bytes(t),
        };
        w + self.bias.as_ref().map_or(0, dense_bytes)
    }

    /// Adds the bias to the `(rows, out)` product and restores the input's leading dimensions.
    fn finish(&self, y: Tensor, dims: &[usize]) -> Result<Tensor> {
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&as_dtype(b, y.dtype())?)?,
            None => y,
        };
        y.reshape(out_shape(dims, self.out_features))
    }

    /// Whether the weight is held quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, LinearWeight::Quantized(QMatMul::QTensor(_)))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_features = *dims.last().unwrap_or(&1);
        let rows = x.elem_count() / in_features.max(1);
        // one contiguous 2-D matmul instead of a broadcast batched one
        let x2 = x.reshape((rows, in_features))?;
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            // the CPU kernel: the weight widened to f32 for this call when stored narrower (the
            // fast product for a diffusion model's many rows; candle's quantized kernel would also
            // keep a repacked copy of the weight beside the quantized one for good), the bias
            // added in the same pass
            let weight = match &self.weight {
                LinearWeight::Dense(w) => Stored::Dense(w),
                LinearWeight::Quantized(QMatMul::QTensor(q)) => Stored::Blocks(q),
                LinearWeight::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => Stored::Dense(w),
            };
            let op = LinearOp { weight, out_features: self.out_features, bias: self.cpu_bias.as_deref() };
            return x2.contiguous()?.apply_op1_no_bwd(&op)?.reshape(out_shape(&dims, self.out_features));
        }
        match &self.weight {
            LinearWeight::Dense(w) => self.finish(x2.matmul(&as_dtype(w, x.dtype())?.t()?)?, &dims),
            // elsewhere candle's quantized matmul, on f32 rows
            LinearWeight::Quantized(q) => {
                let y = q.forward(&as_dtype(&x2, DType::F32)?.contiguous()?)?;
                self.finish(as_dtype(&y, x.dtype())?, &dims)
            }
        }
    }
}

/// `dims` with the last replaced by `last`.
fn out_shape(dims: &[usize], last: usize) -> Vec<usize> {
    let mut out = dims.to_vec();
    if let Some(l) = out.last_mut() {
        *l = last;
    }
    out
}

/// How a convolution stores its kernel.
#[derive(Clone, Debug)]
enum ConvWeight {
    /// A dense `(out, in, k, k)` kernel, in its storage dtype.
    Dense(Tensor),
    /// Quantized `(out, in·k·k)` rows, dequantized for each call.
    Quantized(std::sync::Arc<candle_core::quantized::QTensor>),
}

/// A 2-D convolution with square kernel, stride and padding.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: ConvWeight,
    bias: Option<Tensor>,
    /// The bias as f32 values for the CPU kernel, which adds it in the same pass.
    cpu_bias: Option<Vec<f32>>,
    /// `(out, in, k, k)`.
    shape: (usize, usize, usize, usize),
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Loads `weight` `(out, in, k, k)` and `bias` `(out)` under `vb`.
    ///
    /// # Errors
    /// A missing tensor or one of the wrong shape.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: Weights,
    ) -> Result<Self> {
        let shape = (out_channels, in_channels, kernel, kernel);
        let weight = match vb.matrix(shape, "weight")? {
            StoredWeight::Dense(w) => ConvWeight::Dense(w),
            StoredWeight::Quantized(q) => ConvWeight::Quantized(std::sync::Arc::new(q)),
        };
        let bias = Some(vb.get(out_channels, "bias")?);
        let cpu_bias = cpu_values(&bias)?;
        Ok(Self { weight, bias, cpu_bias, shape, stride, padding })
    }

    /// Bytes the layer holds (kernel as stored, and bias).
    pub fn weight_bytes(&self) -> u64 {
        let w = match &self.weight {
            ConvWeight::Dense(w) => dense_bytes(w),
            ConvWeight::Quantized(q) => q.storage_size_in_bytes() as u64,
        };
        w + self.bias.as_ref().map_or(0, dense_bytes)
    }
}

impl Conv2d {
    /// The convolution with `padding` zeros around the input in place of the layer's own.
    fn run(&self, x: &Tensor, padding: usize) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            // the CPU kernel, with the kernel widened to f32 for this call when stored narrower
            let weight = match &self.weight {
                ConvWeight::Dense(w) => Stored::Dense(w),
                ConvWeight::Quantized(q) => Stored::Blocks(q),
            };
            let op = Conv2dOp {
                weight,
                shape: self.shape,
                stride: self.stride,
                padding,
                bias: self.cpu_bias.as_deref(),
            };
            return x.contiguous()?.apply_op1_no_bwd(&op);
        }
        let w = match &self.weight {
            ConvWeight::Dense(w) => as_dtype(w, x.dtype())?,
            // the dense kernel lives for this call only
            ConvWeight::Quantized(q) => q.dequantize(x.device())?.reshape(self.shape)?.to_dtype(x.dtype())?,
        };
        let y = x.conv2d(&w, padding, self.stride, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&as_dtype(b, y.dtype())?.reshape((1, self.shape.0, 1, 1))?),
            None => Ok(y),
        }
    }

    /// The convolution without padding: what the padded one gives on an input that already
    /// carries its border (the next tiles' pixels, or zeros at the image's edge), shrinking each
    /// side by [`Self::halo`].
    ///
    /// # Errors
    /// An input smaller than the kernel; tensor errors.
    pub fn forward_unpadded(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, 0)
    }

    /// The border each side of an output pixel reads beyond it (the padding), when the layer is
    /// a stride-1 convolution whose padding keeps the size (kernel `2·halo + 1`); `None` otherwise.
    pub fn halo(&self) -> Option<usize> {
        (self.stride == 1 && self.shape.2 == 2 * self.padding + 1).then_some(self.padding)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, self.padding)
    }
}

/// GEGLU over the last dimension: its first half times the exact GELU of its second half. One
/// fused pass on the CPU in f32 ([`super::cpu::elementwise::Geglu`]).
///
/// # Errors
/// An odd last dimension; tensor errors.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    if h.device().is_cpu() && h.dtype() == DType::F32 {
        return h.contiguous()?.apply_op1_no_bwd(&super::cpu::elementwise::Geglu);
    }
    let half = h.dim(candle_core::D::Minus1)? / 2;
    h.narrow(candle_core::D::Minus1, 0, half)? * h.narrow(candle_core::D::Minus1, half, half)?.gelu_erf()?
}

/// An activation function as configs name it (`hidden_act`, `act_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · σ(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// The exact, erf-based GELU (PyTorch's default `gelu`).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// `x · σ(x)`.
    Silu,
}

impl Activation {
    /// Parses a config's activation name.
    ///
    /// # Errors
    /// An activation this engine does not implement, named in the message.
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_tanh" => Ok(Activation::GeluTanh),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(format!("activation '{other}' is not supported (expected quick_gelu, gelu or silu)")),
        }
    }
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Silu => x.silu(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    /// The 2-D-reshaped linear equals an explicit per-row product with bias, on a 3-D input.
    #[test]
    fn linear_matches_reference() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 5, &dev).unwrap();
        let ts = HashMap::from([("l.weight".to_string(), w.clone()), ("l.bias".to_string(), b.clone())]);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let lin = Linear::new(3, 5, true, Weights::new(vb).pp("l")).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 4, 3), &dev).unwrap();
        let y = lin.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 4, 5]);
        let r = x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let d = (y - r).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
        assert_eq!(lin.weight_bytes(), 20 * 4);
    }

    /// A quantized linear equals the dense one on random weights within a per-type bound on the
    /// relative error of the output (‖y_q − y‖ / ‖y‖), and holds the block bytes it should.
    #[test]
    fn quantized_linear_within_bounds() {
        use crate::knobs::Precision;
        let dev = Device::Cpu;
        let (inp, out) = (512, 64);
        let w = Tensor::randn(0f32, 0.05, (out, inp), &dev).unwrap();
        let ts = HashMap::from([("l.weight".to_string(), w.clone())]);
        let x = Tensor::randn(0f32, 1., (3, 7, inp), &dev).unwrap();
        let dense = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        // measured (unseeded weights): q8_0 0.8 %, q6k 2.0 %, q5k 3.8 %, q4k 7.4 %, q4_0 9.0 %;
        // the bounds leave about 1.5× room
        for (p, bound) in [
            (Precision::Q8_0, 0.012),
            (Precision::Q6K, 0.03),
            (Precision::Q5K, 0.06),
            (Precision::Q4K, 0.11),
            (Precision::Q4_0, 0.135),
        ] {
            let vb = Weights::with_precision(VarBuilder::from_tensors(ts.clone(), DType::F32, &dev), p);
            let lin = Linear::new(inp, out, false, vb.pp("l")).unwrap();
            assert!(lin.is_quantized(), "{p}");
            let y = lin.forward(&x).unwrap();
            let rel = norm(&(&y - &dense).unwrap()) / norm(&dense);
            println!("{p}: relative error {rel:.4}");
            assert!(rel < bound, "{p}: {rel} ≥ {bound}");
            let (n, b) = p.block();
            assert_eq!(lin.weight_bytes(), (out * inp) as u64 / n * b);
            assert_eq!(vb.ledger().bytes, lin.weight_bytes());
        }
    }

    /// A quantized convolution (dequantized at use) matches the dense one; rows that are not whole
    /// blocks fall back to f16 and still compute in f32.
    #[test]
    fn quantized_conv_and_fallback() {
        use crate::knobs::Precision;
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (16, 32, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.05, 16, &dev).unwrap();
        let ts = HashMap::from([("c.weight".to_string(), w.clone()), ("c.bias".to_string(), b.clone())]);
        let x = Tensor::randn(0f32, 1., (1, 32, 8, 8), &dev).unwrap();
        let dense = x.conv2d(&w, 1, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, 16, 1, 1)).unwrap()).unwrap();
        let vb = Weights::with_precision(VarBuilder::from_tensors(ts, DType::F32, &dev), Precision::Q8_0);
        let conv = Conv2d::new(32, 16, 3, 1, 1, vb.pp("c")).unwrap();
        // relative L2 error: q8_0's rounding gives about 0.005 here; the largest single error over
        // the 1024 outputs of unseeded weights sat near 0.02 and made a max-error bound flaky
        let l2 = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let rel = l2(&(conv.forward(&x).unwrap() - &dense).unwrap()) / l2(&dense);
        println!("q8_0 conv: relative error {rel:.4}");
        assert!(rel < 0.02, "{rel}");
        assert_eq!(conv.weight_bytes(), 16 * 288 / 32 * 34 + 16 * 4);
        // 36-element rows: f16 kept dense
        let w = Tensor::randn(0f32, 0.05, (8, 4, 3, 3), &dev).unwrap();
        let ts = HashMap::from([("c.weight".to_string(), w), ("c.bias".to_string(), Tensor::zeros(8, DType::F32, &dev).unwrap())]);
        let vb = Weights::with_precision(VarBuilder::from_tensors(ts, DType::F32, &dev), Precision::Q4K);
        let conv = Conv2d::new(4, 8, 3, 1, 1, vb.pp("c")).unwrap();
        assert_eq!(conv.weight_bytes(), 8 * 36 * 2 + 8 * 4);
        let y = conv.forward(&Tensor::ones((1, 4, 5, 5), DType::F32, &dev).unwrap()).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(vb.ledger().summary(), "f16 on 1 tensors, f32 on 1");
    }

    /// quick_gelu and exact gelu give their textbook values at x = 1.
    #[test]
    fn activations_at_one() {
        let x = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let q = Activation::QuickGelu.forward(&x).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((q - 1.0 / (1.0 + (-1.702f32).exp())).abs() < 1e-6);
        let g = Activation::Gelu.forward(&x).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((g - 0.841_344_7).abs() < 1e-5, "{g}");
        assert!(Activation::from_name("relu6").is_err());
    }
}
