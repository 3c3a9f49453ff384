//! The MusicGen decoder (`MusicgenForCausalLM`) as transformers computes it: the sum of one
//! embedding per codebook, sinusoidal positions (cos half then sin half), pre-norm layers of
//! causal self-attention, cross-attention to the text states and a GELU feed-forward (no biases),
//! a final layer norm and one LM head per codebook; a KV cache per layer so each generated
//! column costs one position. [`DelayPattern`] is transformers' `build_delay_pattern_mask` and
//! its undoing. Tensor names are the checkpoint's under `decoder.`.

use candle_core::{DType, Device, Module, Result, Tensor};

use super::config::DecoderConfig;
use crate::nn::Weights;
use crate::nn::attention::{attention, merge_heads, split_heads};
use crate::nn::layers::{Activation, Linear};
use crate::nn::norm::layer_norm;

/// Query, key, value and output projections of one attention (no biases).
#[derive(Clone, Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(d: usize, heads: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            q: Linear::new(d, d, false, vb.pp("q_proj"))?,
            k: Linear::new(d, d, false, vb.pp("k_proj"))?,
            v: Linear::new(d, d, false, vb.pp("v_proj"))?,
            out: Linear::new(d, d, false, vb.pp("out_proj"))?,
            heads,
            scale: ((d / heads) as f64).powf(-0.5),
        })
    }

    /// Keys and values of `x` as `(B·H, L, Dh)` heads.
    fn kv(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((split_heads(&self.k.forward(x)?, self.heads)?, split_heads(&self.v.forward(x)?, self.heads)?))
    }

    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, slice: usize) -> Result<Tensor> {
        let q = split_heads(&self.q.forward(x)?, self.heads)?;
        let o = attention(&q, k, v, self.scale, mask, slice)?;
        self.out.forward(&merge_heads(&o, self.heads)?)
    }
}

#[derive(Clone, Debug)]
struct Layer {
    self_norm: candle_nn::LayerNorm,
    self_attn: Attention,
    cross_norm: candle_nn::LayerNorm,
    cross_attn: Attention,
    final_norm: candle_nn::LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// What a generation keeps between steps: each layer's self-attention keys and values so far,
/// and its cross-attention keys and values of the text states.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions already in the cache.
    pub len: usize,
}

#[derive(Debug)]
struct LayerCache {
    self_kv: Option<(Tensor, Tensor)>,
    cross_kv: (Tensor, Tensor),
}

/// The decoder with its LM heads.
#[derive(Clone, Debug)]
pub struct Decoder {
    embeds: Vec<Tensor>,
    layers: Vec<Layer>,
    norm: candle_nn::LayerNorm,
    heads: Vec<Linear>,
    act: Activation,
    pub cfg: DecoderConfig,
    /// `attention_slice`: query rows per attention block (0: the engine's choice).
    pub attention_slice: usize,
}

impl Decoder {
    /// Builds the decoder from `vb` at `decoder.`'s level (`model.decoder.…`, `lm_heads.N`).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors, an unknown activation.
    pub fn new(cfg: &DecoderConfig, vb: Weights) -> Result<Self> {
        let d = cfg.hidden_size;
        let m = vb.pp("model.decoder");
        let embeds = (0..cfg.num_codebooks)
            .map(|k| m.pp(format!("embed_tokens.{k}")).get_compute((cfg.vocab_size + 1, d), "weight"))
            .collect::<Result<Vec<_>>>()?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp(format!("layers.{i}"));
            layers.push(Layer {
                self_norm: layer_norm(d, 1e-5, l.pp("self_attn_layer_norm"))?,
                self_attn: Attention::new(d, cfg.num_attention_heads, l.pp("self_attn"))?,
                cross_norm: layer_norm(d, 1e-5, l.pp("encoder_attn_layer_norm"))?,
                cross_attn: Attention::new(d, cfg.num_attention_heads, l.pp("encoder_attn"))?,
                final_norm: layer_norm(d, 1e-5, l.pp("final_layer_norm"))?,
                fc1: Linear::new(d, cfg.ffn_dim, false, l.pp("fc1"))?,
                fc2: Linear::new(cfg.ffn_dim, d, false, l.pp("fc2"))?,
            });
        }
        let norm = layer_norm(d, 1e-5, m.pp("layer_norm"))?;
        let heads = (0..cfg.num_codebooks)
            .map(|k| Linear::new(d, cfg.vocab_size, false, vb.pp(format!("lm_heads.{k}"))))
            .collect::<Result<Vec<_>>>()?;
        let act = Activation::from_name(&cfg.activation_function).map_err(candle_core::Error::msg)?;
        Ok(Self { embeds, layers, norm, heads, act, cfg: cfg.clone(), attention_slice: 0 })
    }

    /// A cache holding the cross-attention keys and values of `encoder` `(B, S, d)`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn cache(&self, encoder: &Tensor) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| Ok(LayerCache { self_kv: None, cross_kv: l.cross_attn.kv(encoder)? }))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers, len: 0 })
    }

    /// Logits `(B, K, T, vocab)` in f32 for codes `(B, K, T)` (u32) following the `cache.len`
    /// positions already in `cache`, which takes the new ones.
    ///
    /// # Errors
    /// More positions than `max_position_embeddings`, tensor errors.
    pub fn forward(&self, codes: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, k, t) = codes.dims3()?;
        let start = cache.len;
        if start + t > self.cfg.max_position_embeddings {
            candle_core::bail!("{} positions asked of a decoder with max_position_embeddings = {}", start + t, self.cfg.max_position_embeddings);
        }
        let device = self.embeds[0].device();
        let mut x: Option<Tensor> = None;
        for (i, e) in self.embeds.iter().enumerate().take(k) {
            let idx = codes.narrow(1, i, 1)?.flatten_all()?;
            let emb = e.index_select(&idx, 0)?.reshape((b, t, self.cfg.hidden_size))?;
            x = Some(match x {
                Some(acc) => (acc + emb)?,
                None => emb,
            });
        }
        let x = x.ok_or_else(|| candle_core::Error::msg("no codebooks"))?;
        let pos = sinusoids(start, t, self.cfg.hidden_size, device)?.to_dtype(x.dtype())?;
        let mut x = x.broadcast_add(&pos)?;
        // causal over the new positions, each seeing every cached one
        let mask = if t > 1 {
            let m: Vec<f32> = (0..t)
                .flat_map(|i| (0..start + t).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (t, start + t), device)?.to_dtype(x.dtype())?)
        } else {
            None
        };
        for (l, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let n = l.self_norm.forward(&x)?;
            let (k_new, v_new) = l.self_attn.kv(&n)?;
            let (kk, vv) = match c.self_kv.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k_new], 1)?, Tensor::cat(&[&pv, &v_new], 1)?),
                None => (k_new, v_new),
            };
            x = (x + l.self_attn.attend(&n, &kk, &vv, mask.as_ref(), self.attention_slice)?)?;
            c.self_kv = Some((kk, vv));
            let n = l.cross_norm.forward(&x)?;
            x = (&x + l.cross_attn.attend(&n, &c.cross_kv.0, &c.cross_kv.1, None, self.attention_slice)?)?;
            let n = l.final_norm.forward(&x)?;
            x = (&x + l.fc2.forward(&self.act.forward(&l.fc1.forward(&n)?)?)?)?;
        }
        cache.len = start + t;
        let x = self.norm.forward(&x)?;
        let logits = self.heads.iter().map(|h| h.forward(&x)).collect::<Result<Vec<_>>>()?;
        Tensor::stack(&logits, 1)?.to_dtype(DType::F32)
    }
}

/// Sinusoidal position embeddings for positions `start..start + len`, `(len, dim)`: the cosines of
/// half the frequencies then their sines, in f32 as transformers builds them (zero-padded for an
/// odd width).
///
/// # Errors
/// Tensor errors.
pub fn sinusoids(start: usize, len: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let step = (10000f64).ln() / (half.max(2) - 1) as f64;
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -(step as f32)).exp()).collect();
    let mut out = Vec::with_capacity(len * dim);
    for p in start..start + len {
        let angles: Vec<f32> = freqs.iter().map(|f| p as f32 * f).collect();
        out.extend(angles.iter().map(|a| a.cos()));
        out.extend(angles.iter().map(|a| a.sin()));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (len, dim), device)
}

/// MusicGen's delay pattern for `codebooks` codebooks over `length` columns (the start column and
/// the generated ones): codebook `k` is delayed by `k` columns, so column `t` of codebook `k` is
/// the pad token for `t ≤ k` and for `t ≥ length − codebooks + 1 + k`, free otherwise.
#[derive(Clone, Copy, Debug)]
pub struct DelayPattern {
    pub codebooks: usize,
    pub length: usize,
}

impl DelayPattern {
    /// Whether column `t` of codebook `k` is forced to the pad token.
    pub fn is_pad(&self, k: usize, t: usize) -> bool {
        t <= k || t + self.codebooks > self.length + k
    }

    /// Frames left once the pattern is undone: `length − codebooks`.
    pub fn frames(&self) -> usize {
        self.length.saturating_sub(self.codebooks)
    }

    /// The codes `(codebooks, frames)` from the generated columns `columns[t][k]` (row-major
    /// per column), the pattern undone: codebook `k` keeps columns `k + 1 ..= length − codebooks + k`.
    pub fn undo(&self, columns: &[Vec<u32>]) -> Vec<Vec<u32>> {
        (0..self.codebooks).map(|k| (k + 1..k + 1 + self.frames()).map(|t| columns[t][k]).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern of transformers' docstring (4 codebooks, 8 columns): pads where it shows P.
    #[test]
    fn delay_pattern_as_documented() {
        let p = DelayPattern { codebooks: 4, length: 8 };
        let want = ["P....PPP", "PP....PP", "PPP....P", "PPPP...."];
        for (k, row) in want.iter().enumerate() {
            let got: String = (0..8).map(|t| if p.is_pad(k, t) { 'P' } else { '.' }).collect();
            assert_eq!(&got, row, "codebook {k}");
        }
        let cols: Vec<Vec<u32>> = (0..8).map(|t| (0..4).map(|k| (10 * t + k) as u32).collect()).collect();
        assert_eq!(p.undo(&cols), vec![vec![10, 20, 30, 40], vec![21, 31, 41, 51], vec![32, 42, 52, 62], vec![43, 53, 63, 73]]);
    }
}
