//! The T5 text encoder (`T5EncoderModel`) as transformers computes it: RMS layer norms without
//! mean or bias, unscaled attention with a learned relative position bias (bidirectional
//! buckets, owned by the first block and shared by all), a ReLU or gated-GELU feed-forward, a
//! final norm. Tensor names are the checkpoint's under `text_encoder.`.

use candle_core::{DType, Device, Module, Result, Tensor};

use super::config::T5Config;
use crate::nn::Weights;
use crate::nn::layers::Linear;

/// T5's layer norm: `x / sqrt(mean(x²) + eps) · weight`, computed in f32.
#[derive(Clone, Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: Weights) -> Result<Self> {
        Ok(Self { weight: vb.get_compute(size, "weight")?, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = x32.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}

/// The feed-forward of one block.
#[derive(Clone, Debug)]
enum FeedForward {
    /// `wo(relu(wi(x)))`.
    Relu { wi: Linear, wo: Linear },
    /// `wo(gelu_tanh(wi_0(x)) · wi_1(x))`.
    GatedGelu { wi_0: Linear, wi_1: Linear, wo: Linear },
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Relu { wi, wo } => wo.forward(&wi.forward(x)?.relu()?),
            FeedForward::GatedGelu { wi_0, wi_1, wo } => wo.forward(&(wi_0.forward(x)?.gelu()? * wi_1.forward(x)?)?),
        }
    }
}

#[derive(Clone, Debug)]
struct Block {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// The encoder: token ids → last hidden state `(1, L, d_model)`.
#[derive(Clone, Debug)]
pub struct T5Encoder {
    embed: Tensor,
    /// `(buckets, heads)`, from the first block.
    relative_bias: Tensor,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    cfg: T5Config,
}

impl T5Encoder {
    /// Builds the encoder from `vb` at `text_encoder.`'s level (`shared`, `encoder.block.N`).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(cfg: &T5Config, vb: Weights) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        let embed = if vb.contains_tensor("shared.weight") {
            vb.get_compute((cfg.vocab_size, d), "shared.weight")?
        } else {
            vb.get_compute((cfg.vocab_size, d), "encoder.embed_tokens.weight")?
        };
        let enc = vb.pp("encoder");
        let relative_bias = enc
            .pp("block.0.layer.0.SelfAttention.relative_attention_bias")
            .get_compute((cfg.relative_attention_num_buckets, cfg.num_heads), "weight")?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let b = enc.pp(format!("block.{i}"));
            let a = b.pp("layer.0.SelfAttention");
            let f = b.pp("layer.1.DenseReluDense");
            let ff = if cfg.feed_forward_proj == "gated-gelu" {
                FeedForward::GatedGelu {
                    wi_0: Linear::new(d, cfg.d_ff, false, f.pp("wi_0"))?,
                    wi_1: Linear::new(d, cfg.d_ff, false, f.pp("wi_1"))?,
                    wo: Linear::new(cfg.d_ff, d, false, f.pp("wo"))?,
                }
            } else {
                FeedForward::Relu { wi: Linear::new(d, cfg.d_ff, false, f.pp("wi"))?, wo: Linear::new(cfg.d_ff, d, false, f.pp("wo"))? }
            };
            blocks.push(Block {
                attn_norm: RmsNorm::new(d, cfg.layer_norm_epsilon, b.pp("layer.0.layer_norm"))?,
                q: Linear::new(d, inner, false, a.pp("q"))?,
                k: Linear::new(d, inner, false, a.pp("k"))?,
                v: Linear::new(d, inner, false, a.pp("v"))?,
                o: Linear::new(inner, d, false, a.pp("o"))?,
                ff_norm: RmsNorm::new(d, cfg.layer_norm_epsilon, b.pp("layer.1.layer_norm"))?,
                ff,
            });
        }
        let final_norm = RmsNorm::new(d, cfg.layer_norm_epsilon, enc.pp("final_layer_norm"))?;
        Ok(Self { embed, relative_bias, blocks, final_norm, cfg: cfg.clone() })
    }

    /// The last hidden state `(1, L, d_model)` for `ids`, in the weights' dtype.
    ///
    /// # Errors
    /// An id outside the vocabulary, tensor errors.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let device = self.embed.device();
        let len = ids.len();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            candle_core::bail!("token id {bad} is outside the text encoder's vocabulary of {}", self.cfg.vocab_size);
        }
        let idx = Tensor::from_vec(ids.to_vec(), len, device)?;
        let mut x = self.embed.index_select(&idx, 0)?.unsqueeze(0)?;
        let bias = self.position_bias(len, device)?.to_dtype(x.dtype())?;
        let (h, dk) = (self.cfg.num_heads, self.cfg.d_kv);
        for b in &self.blocks {
            let n = b.attn_norm.forward(&x)?;
            let split = |t: Tensor| t.reshape((1, len, h, dk))?.transpose(1, 2)?.contiguous();
            let q = split(b.q.forward(&n)?)?;
            let k = split(b.k.forward(&n)?)?;
            let v = split(b.v.forward(&n)?)?;
            // T5 does not scale its scores
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?;
            let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((1, len, h * dk))?;
            x = clamp_f16((x + b.o.forward(&out)?)?)?;
            x = clamp_f16((&x + b.ff.forward(&b.ff_norm.forward(&x)?)?)?)?;
        }
        self.final_norm.forward(&x)
    }

    /// The relative position bias `(1, heads, L, L)`.
    fn position_bias(&self, len: usize, device: &Device) -> Result<Tensor> {
        let (nb, md) = (self.cfg.relative_attention_num_buckets, self.cfg.relative_attention_max_distance);
        let buckets: Vec<u32> = (0..len)
            .flat_map(|q| (0..len).map(move |k| relative_bucket(k as i64 - q as i64, nb, md) as u32))
            .collect();
        let idx = Tensor::from_vec(buckets, len * len, device)?;
        let h = self.cfg.num_heads;
        self.relative_bias.index_select(&idx, 0)?.reshape((len, len, h))?.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()
    }
}

/// In f16, T5's hidden states are kept 1000 below the largest finite value, as transformers
/// clamps them (T5's feed-forward outputs overflow f16 otherwise); other dtypes pass unchanged.
fn clamp_f16(x: Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F16 {
        return Ok(x);
    }
    let m = f64::from(half::f16::MAX) - 1000.0;
    x.clamp(-m, m)
}

/// T5's bidirectional bucket of `relative = key − query`: half the buckets for each sign, exact
/// below `buckets/4`, logarithmic up to `max_distance` (computed in f32 as transformers does).
pub fn relative_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let mut bucket = if relative > 0 { half } else { 0 };
    let rel = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if rel < max_exact {
        bucket += rel;
    } else {
        let ratio = ((rel as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()) * (half - max_exact) as f32;
        bucket += (max_exact + ratio as usize).min(half - 1);
    }
    bucket
}

#[cfg(test)]
mod tests {
    use super::{clamp_f16, relative_bucket};
    use candle_core::{DType, Device, Tensor};

    /// f16 states are clamped as transformers clamps them (an overflow to ∞ comes back finite);
    /// f32 states are left alone.
    #[test]
    fn f16_states_clamped() {
        let x = Tensor::new(&[f32::INFINITY, -7e4, 1.5], &Device::Cpu).unwrap();
        let c = clamp_f16(x.to_dtype(DType::F16).unwrap()).unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        // 65504 − 1000 rounds to 64512 in f16, as in torch
        assert_eq!(c, vec![64512.0, -64512.0, 1.5]);
        let f = clamp_f16(x.clone()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(f[0], f32::INFINITY);
    }

    /// Buckets match transformers' `_relative_position_bucket` (bidirectional, 32 buckets, 128)
    /// at values printed by transformers 5.24: exact near zero, logarithmic further, capped.
    #[test]
    fn buckets_as_transformers() {
        for (rel, want) in [(0, 0), (1, 17), (-1, 1), (7, 23), (-7, 7), (8, 24), (-8, 8), (12, 25), (20, 26), (-40, 12), (127, 31), (500, 31), (-500, 15)] {
            assert_eq!(relative_bucket(rel, 32, 128), want, "relative {rel}");
        }
    }
}
