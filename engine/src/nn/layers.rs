//! Weight-holding layers that model code builds from: [`Linear`], [`Conv2d`], and the
//! activations the checkpoints name in their configs.
//!
//! Each layer keeps its weights behind an enum so that a precision knob can later swap in a
//! quantized form (a `QMatMul`, or a conv weight dequantized at use) without touching model code.

use candle_core::{Module, Result, Tensor};

use super::Weights;

/// How a linear layer stores its weight.
#[derive(Clone, Debug)]
enum LinearWeight {
    /// A dense `(out, in)` matrix in the compute dtype.
    Dense(Tensor),
}

/// `y = x Wᵀ + b` over the last dimension, for inputs of any rank ≥ 1.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    out_features: usize,
}

impl Linear {
    /// Loads `weight` `(out, in)` and, when `bias`, `bias` `(out)` under `vb`.
    ///
    /// # Errors
    /// A missing tensor or one of the wrong shape.
    pub fn new(in_features: usize, out_features: usize, bias: bool, vb: Weights) -> Result<Self> {
        let w = vb.get((out_features, in_features), "weight")?;
        let b = if bias { Some(vb.get(out_features, "bias")?) } else { None };
        Ok(Self { weight: LinearWeight::Dense(w), bias: b, out_features })
    }

    /// Number of weight elements held (weight and bias).
    pub fn weight_elements(&self) -> usize {
        let LinearWeight::Dense(w) = &self.weight;
        w.elem_count() + self.bias.as_ref().map_or(0, Tensor::elem_count)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_features = *dims.last().unwrap_or(&1);
        let rows = x.elem_count() / in_features.max(1);
        // one contiguous 2-D matmul instead of a broadcast batched one
        let x2 = x.reshape((rows, in_features))?;
        let LinearWeight::Dense(w) = &self.weight;
        let mut y = x2.matmul(&w.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features;
        }
        y.reshape(out_dims)
    }
}

/// A 2-D convolution with square kernel, stride and padding.
#[derive(Clone, Debug)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
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
        let cfg = candle_nn::Conv2dConfig { padding, stride, ..Default::default() };
        Ok(Self { inner: candle_nn::conv2d(in_channels, out_channels, kernel, cfg, vb.vb().clone())? })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
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
        assert_eq!(lin.weight_elements(), 20);
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
