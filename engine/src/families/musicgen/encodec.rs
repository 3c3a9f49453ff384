//! EnCodec's decoding half as transformers computes it: the residual vector quantizer's codebook
//! lookup (the sum over codebooks), then the SEANet decoder — a convolution, a residual LSTM,
//! per upsampling ratio an ELU, a transposed convolution and residual blocks, an ELU and a last
//! convolution — with EnCodec's own padding (asymmetric or causal, reflect or zero, the extra
//! right padding that makes strides fit) and weight-normalised convolutions (`g · v / ‖v‖`,
//! computed once at load). Tensor names are the checkpoint's under `audio_encoder.`.

use candle_core::{DType, Module, Result, Tensor};

use super::config::CodecConfig;
use crate::nn::Weights;

/// A weight-normalised convolution's weight: `original0` (g) and `original1` (v) of torch's
/// parametrization, or the older `weight_g`/`weight_v`, or a plain `weight`.
fn conv_weight(vb: &Weights, shape: (usize, usize, usize)) -> Result<Tensor> {
    let pairs = [("parametrizations.weight.original0", "parametrizations.weight.original1"), ("weight_g", "weight_v")];
    for (g, v) in pairs {
        if vb.contains_tensor(v) {
            let v = vb.get_compute(shape, v)?;
            let g = vb.get_compute((shape.0, 1, 1), g)?;
            let dtype = v.dtype();
            let v32 = v.to_dtype(DType::F32)?;
            let norm = v32.sqr()?.sum_keepdim(2)?.sum_keepdim(1)?.sqrt()?;
            return v32.broadcast_mul(&g.to_dtype(DType::F32)?.broadcast_div(&norm)?)?.to_dtype(dtype);
        }
    }
    vb.get_compute(shape, "weight")
}

/// Pads the last dimension of `x` by `(left, right)` with zeros or, as torch's `reflect`, with
/// mirrored samples (zeros added first when the input is too short to mirror, as EnCodec does).
fn pad1d(x: &Tensor, left: usize, right: usize, reflect: bool) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    if !reflect {
        return x.pad_with_zeros(2, left, right);
    }
    let len = x.dim(2)?;
    let max_pad = left.max(right);
    let (x, extra) = if len <= max_pad {
        let extra = max_pad - len + 1;
        (x.pad_with_zeros(2, 0, extra)?, extra)
    } else {
        (x.clone(), 0)
    };
    let n = x.dim(2)?;
    let mut idx: Vec<u32> = (1..=left).rev().map(|i| i as u32).collect();
    idx.extend(0..n as u32);
    idx.extend((0..right).map(|i| (n - 2 - i) as u32));
    let idx = Tensor::from_vec(idx, left + n + right, x.device())?;
    let padded = x.index_select(&idx, 2)?;
    let end = padded.dim(2)? - extra;
    padded.narrow(2, 0, end)
}

/// EnCodec's `Conv1d` with its padding.
#[derive(Clone, Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    dilation: usize,
    kernel: usize,
    causal: bool,
    reflect: bool,
}

impl Conv {
    fn new(cfg: &CodecConfig, cin: usize, cout: usize, kernel: usize, stride: usize, dilation: usize, vb: Weights) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Self {
            weight: conv_weight(&vb, (cout, cin, kernel))?,
            bias: vb.get_compute(cout, "bias")?,
            stride,
            dilation,
            kernel,
            causal: cfg.use_causal_conv,
            reflect: cfg.pad_mode == "reflect",
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let len = x.dim(2)?;
        let kernel = (self.kernel - 1) * self.dilation + 1;
        let padding_total = kernel - self.stride;
        let frames = ((len as f64 - kernel as f64 + padding_total as f64) / self.stride as f64 + 1.0).ceil() as i64 - 1;
        let ideal = frames * self.stride as i64 + kernel as i64 - padding_total as i64;
        let extra = (ideal - len as i64).max(0) as usize;
        let x = if self.causal {
            pad1d(x, padding_total, extra, self.reflect)?
        } else {
            let right = padding_total / 2;
            pad1d(x, padding_total - right, right + extra, self.reflect)?
        };
        let y = conv1d_chunked(&x, &self.weight, self.stride, self.dilation, CHUNK_VALUES)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1))?)
    }
}

/// Unfolded input values one convolution call may build (candle unfolds the input, `columns ×
/// in_channels × kernel` values): 2²² (16 MiB in f32). Longer outputs are computed in pieces, so
/// a 30 s decode at 32 kHz never holds its last layers' ~1.7 GB unfolding at once.
const CHUNK_VALUES: usize = 1 << 22;

/// `x.conv1d(w, 0, stride, dilation)` over an already padded `x`, in pieces of output columns so
/// that no piece unfolds more than `max_values` input values; the same columns either way.
fn conv1d_chunked(x: &Tensor, w: &Tensor, stride: usize, dilation: usize, max_values: usize) -> Result<Tensor> {
    let (_, cin, len) = x.dims3()?;
    let k = w.dim(2)?;
    let span = (k - 1) * dilation + 1;
    let out_len = if len >= span { (len - span) / stride + 1 } else { 0 };
    let per = (max_values / (cin * k).max(1)).max(1);
    if out_len <= per {
        return x.conv1d(w, 0, stride, dilation, 1);
    }
    let mut pieces = Vec::with_capacity(out_len.div_ceil(per));
    let mut start = 0;
    while start < out_len {
        let n = per.min(out_len - start);
        let input = x.narrow(2, start * stride, (n - 1) * stride + span)?;
        pieces.push(input.conv1d(w, 0, stride, dilation, 1)?);
        start += n;
    }
    Tensor::cat(&pieces, 2)
}

/// EnCodec's `ConvTranspose1d`, trimmed as it trims.
#[derive(Clone, Debug)]
struct ConvTranspose {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    kernel: usize,
    causal: bool,
    trim_right_ratio: f64,
}

impl Module for ConvTranspose {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv_transpose1d(&self.weight, 0, 0, self.stride, 1, 1)?;
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1))?)?;
        let padding_total = self.kernel - self.stride;
        let right = if self.causal { (padding_total as f64 * self.trim_right_ratio).ceil() as usize } else { padding_total / 2 };
        let left = padding_total - right;
        let len = y.dim(2)?;
        y.narrow(2, left, len - right - left)
    }
}

/// A multi-layer LSTM over `(B, C, T)` whose output is added to its input.
#[derive(Clone, Debug)]
struct Lstm {
    /// Per layer: `W_ih (4H, H)`, `W_hh (4H, H)`, `b_ih + b_hh (4H)`.
    layers: Vec<(Tensor, Tensor, Tensor)>,
    hidden: usize,
}

impl Lstm {
    fn new(dim: usize, layers: usize, vb: Weights) -> Result<Self> {
        let vb = vb.pp("lstm");
        let layers = (0..layers)
            .map(|l| {
                let b = (vb.get_compute(4 * dim, &format!("bias_ih_l{l}"))? + vb.get_compute(4 * dim, &format!("bias_hh_l{l}"))?)?;
                Ok((vb.get_compute((4 * dim, dim), &format!("weight_ih_l{l}"))?, vb.get_compute((4 * dim, dim), &format!("weight_hh_l{l}"))?, b))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, hidden: dim })
    }
}

impl Module for Lstm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, t) = x.dims3()?;
        let h_dim = self.hidden;
        // (B, C, T) → (T, B, C), as EnCodec permutes
        let input = x.permute((2, 0, 1))?.contiguous()?;
        let mut seq = input.clone();
        for (w_ih, w_hh, bias) in &self.layers {
            // the input side of every step at once
            let xs = seq.reshape((t * b, h_dim))?.matmul(&w_ih.t()?)?.broadcast_add(bias)?.reshape((t, b, 4 * h_dim))?;
            let w_hh_t = w_hh.t()?.contiguous()?;
            let mut h = Tensor::zeros((b, h_dim), x.dtype(), x.device())?;
            let mut c = h.clone();
            let mut outs = Vec::with_capacity(t);
            for s in 0..t {
                let gates = (xs.get(s)? + h.matmul(&w_hh_t)?)?;
                let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, h_dim)?)?;
                let f = candle_nn::ops::sigmoid(&gates.narrow(1, h_dim, h_dim)?)?;
                let g = gates.narrow(1, 2 * h_dim, h_dim)?.tanh()?;
                let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * h_dim, h_dim)?)?;
                c = ((f * &c)? + (i * g)?)?;
                h = (o * c.tanh()?)?;
                outs.push(h.clone());
            }
            seq = Tensor::stack(&outs, 0)?;
        }
        (seq + input)?.permute((1, 2, 0))?.contiguous()
    }
}

/// A SEANet residual block: ELU, convolution (dilated), ELU, 1-wide convolution, plus the input
/// (through a 1-wide convolution when the config says `use_conv_shortcut`).
#[derive(Clone, Debug)]
struct ResBlock {
    conv1: Conv,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv2.forward(&self.conv1.forward(&x.elu(1.0)?)?.elu(1.0)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        skip + h
    }
}

#[derive(Clone, Debug)]
enum Step {
    Conv(Conv),
    Lstm(Lstm),
    Elu,
    Up(ConvTranspose),
    Res(ResBlock),
}

/// The codec's decoder: codes → audio.
#[derive(Clone, Debug)]
pub struct Codec {
    /// Per quantizer, its codebook `(codebook_size, codebook_dim)`.
    codebooks: Vec<Tensor>,
    steps: Vec<Step>,
    pub cfg: CodecConfig,
}

impl Codec {
    /// Builds the quantizer's codebooks and the decoder from `vb` at `audio_encoder.`'s level.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(cfg: &CodecConfig, vb: Weights) -> Result<Self> {
        let codebooks = (0..cfg.num_quantizers())
            .map(|i| vb.pp(format!("quantizer.layers.{i}.codebook")).get_compute((cfg.codebook_size, cfg.codebook_dim()), "embed"))
            .collect::<Result<Vec<_>>>()?;
        let d = vb.pp("decoder.layers");
        let mut scale = 1usize << cfg.upsampling_ratios.len();
        let nf = cfg.num_filters;
        let mut steps = Vec::new();
        let at = |steps: &Vec<Step>| d.pp(steps.len());
        steps.push(Step::Conv(Conv::new(cfg, cfg.hidden_size, scale * nf, cfg.kernel_size, 1, 1, at(&steps))?));
        steps.push(Step::Lstm(Lstm::new(scale * nf, cfg.num_lstm_layers, at(&steps))?));
        for &ratio in &cfg.upsampling_ratios {
            let cur = scale * nf;
            steps.push(Step::Elu);
            let vbt = at(&steps).pp("conv");
            let (cin, cout, k) = (cur, cur / 2, ratio * 2);
            steps.push(Step::Up(ConvTranspose {
                weight: conv_weight(&vbt, (cin, cout, k))?,
                bias: vbt.get_compute(cout, "bias")?,
                stride: ratio,
                kernel: k,
                causal: cfg.use_causal_conv,
                trim_right_ratio: cfg.trim_right_ratio,
            }));
            for j in 0..cfg.num_residual_layers {
                let vbr = at(&steps);
                let dim = cur / 2;
                let hidden = dim / cfg.compress;
                let dilation = cfg.dilation_growth_rate.pow(j as u32);
                steps.push(Step::Res(ResBlock {
                    conv1: Conv::new(cfg, dim, hidden, cfg.residual_kernel_size, 1, dilation, vbr.pp("block.1"))?,
                    conv2: Conv::new(cfg, hidden, dim, 1, 1, 1, vbr.pp("block.3"))?,
                    shortcut: if cfg.use_conv_shortcut { Some(Conv::new(cfg, dim, dim, 1, 1, 1, vbr.pp("shortcut"))?) } else { None },
                }));
            }
            scale /= 2;
        }
        steps.push(Step::Elu);
        steps.push(Step::Conv(Conv::new(cfg, nf, cfg.audio_channels, cfg.last_kernel_size, 1, 1, at(&steps))?));
        Ok(Self { codebooks, steps, cfg: cfg.clone() })
    }

    /// The quantized embeddings `(1, codebook_dim, frames)` of `codes` (`codebooks` rows of
    /// `frames` codes): the sum of each codebook's vectors.
    ///
    /// # Errors
    /// A code outside a codebook, more rows than codebooks, tensor errors.
    pub fn embed(&self, codes: &[Vec<u32>]) -> Result<Tensor> {
        if codes.len() > self.codebooks.len() {
            candle_core::bail!("{} codebooks of codes for a codec with {}", codes.len(), self.codebooks.len());
        }
        let mut sum: Option<Tensor> = None;
        for (row, book) in codes.iter().zip(&self.codebooks) {
            if let Some(bad) = row.iter().find(|&&c| c as usize >= self.cfg.codebook_size) {
                candle_core::bail!("code {bad} is outside the codec's codebook of {}", self.cfg.codebook_size);
            }
            let idx = Tensor::from_vec(row.clone(), row.len(), book.device())?;
            let e = book.index_select(&idx, 0)?;
            sum = Some(match sum {
                Some(s) => (s + e)?,
                None => e,
            });
        }
        let sum = sum.ok_or_else(|| candle_core::Error::msg("no codes"))?;
        sum.t()?.unsqueeze(0)?.contiguous()
    }

    /// Audio `(1, channels, frames · hop)` for `codes`, calling `check` between decoder stages
    /// (a cancel ends the decode within one of them).
    ///
    /// # Errors
    /// As [`Codec::embed`]; `check`'s error; tensor errors.
    pub fn decode(&self, codes: &[Vec<u32>], check: &mut dyn FnMut() -> Result<()>) -> Result<Tensor> {
        let mut x = self.embed(codes)?;
        for s in &self.steps {
            check()?;
            x = match s {
                Step::Conv(c) => c.forward(&x)?,
                Step::Lstm(l) => l.forward(&x)?,
                Step::Elu => x.elu(1.0)?,
                Step::Up(u) => u.forward(&x)?,
                Step::Res(r) => r.forward(&x)?,
            };
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A convolution computed in pieces of output columns (strided, dilated, pieces that do not
    /// divide the length) equals the one-call convolution.
    #[test]
    fn chunked_conv_equals_whole() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 3, 101), &dev).unwrap();
        for (k, stride, dilation) in [(7, 1, 1), (3, 1, 2), (8, 4, 1), (1, 1, 1)] {
            let w = Tensor::randn(0f32, 1., (5, 3, k), &dev).unwrap();
            let whole = x.conv1d(&w, 0, stride, dilation, 1).unwrap();
            for max_values in [1, 3 * k * 7, 3 * k * 50] {
                let got = conv1d_chunked(&x, &w, stride, dilation, max_values).unwrap();
                assert_eq!(got.dims(), whole.dims());
                let d = (got - &whole).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(d <= 1e-5, "k {k} stride {stride} dilation {dilation} max {max_values}: {d}");
            }
        }
    }
}
