//! The CLIP text encoder (transformers' `CLIPTextModel`): OpenAI CLIP for SD 1.x (`quick_gelu`) and
//! OpenCLIP ViT-H for SD 2.x (`gelu`), configured from the folder's `text_encoder/config.json`.
//!
//! diffusers' SD 2.x folders store the OpenCLIP encoder already cut to the penultimate layer, so
//! "all stored layers, then the final layer norm" is right for both; [`ClipTextModel::forward`]
//! also takes a `clip_skip` (diffusers' meaning) for checkpoints that are stored whole.
//!
//! SDXL reads both of its encoders at the penultimate layer without the final layer norm
//! ([`ClipTextModel::forward_xl`]), and its second encoder (`CLIPTextModelWithProjection`) also
//! gives the pooled embedding: the end token's final hidden state through `text_projection`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm};
use serde::Deserialize;

use crate::nn::attention::{attention, causal_mask, merge_heads, split_heads};
use crate::nn::{Activation, Linear, Weights, layer_norm};

/// `text_encoder/config.json`, the fields the encoder needs (transformers' `CLIPTextConfig`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (`CLIPTextModelWithProjection`).
    pub projection_dim: usize,
    /// The end token whose final state is pooled; 2 (configs written before transformers'
    /// PR #24773, SDXL's among them) means "the largest id", as transformers reads it.
    pub eos_token_id: u32,
}

impl Default for ClipConfig {
    /// OpenAI CLIP ViT-L/14's text tower, as SD 1.x uses it.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 768,
            eos_token_id: 2,
        }
    }
}

/// One pre-norm transformer layer: self-attention (causal) then MLP, each with a residual.
#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Activation,
}

impl EncoderLayer {
    fn new(cfg: &ClipConfig, act: Activation, vb: Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let a = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            q_proj: Linear::new(h, h, true, a.pp("q_proj"))?,
            k_proj: Linear::new(h, h, true, a.pp("k_proj"))?,
            v_proj: Linear::new(h, h, true, a.pp("v_proj"))?,
            out_proj: Linear::new(h, h, true, a.pp("out_proj"))?,
            layer_norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: Linear::new(h, cfg.intermediate_size, true, vb.pp("mlp").pp("fc1"))?,
            fc2: Linear::new(cfg.intermediate_size, h, true, vb.pp("mlp").pp("fc2"))?,
            heads: cfg.num_attention_heads,
            act,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, slice: usize) -> Result<Tensor> {
        let h = self.layer_norm1.forward(x)?;
        let q = split_heads(&self.q_proj.forward(&h)?, self.heads)?;
        let k = split_heads(&self.k_proj.forward(&h)?, self.heads)?;
        let v = split_heads(&self.v_proj.forward(&h)?, self.heads)?;
        let scale = 1.0 / ((q.dim(2)? as f64).sqrt());
        let o = merge_heads(&attention(&q, &k, &v, scale, Some(mask), slice)?, self.heads)?;
        let x = (x + self.out_proj.forward(&o)?)?;
        let h = self.layer_norm2.forward(&x)?;
        let h = self.fc2.forward(&self.act.forward(&self.fc1.forward(&h)?)?)?;
        x + h
    }
}

/// The text transformer: token + position embeddings, the layers, the final layer norm.
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    /// `text_projection` (no bias) of a `CLIPTextModelWithProjection`.
    text_projection: Option<Linear>,
    /// See [`ClipConfig::eos_token_id`].
    eos_token_id: u32,
    /// The compute dtype (embedding tables may be stored narrower and are widened at lookup).
    dtype: DType,
    /// Query rows per attention slice (0 = all at once).
    pub attention_slice: usize,
}

impl ClipTextModel {
    /// Builds the encoder from `cfg`, with tensors under `vb` named as transformers saves them,
    /// with or without the `text_model.` prefix (transformers 4 writes it, 5 does not).
    ///
    /// # Errors
    /// An unsupported activation, a missing tensor or one of the wrong shape.
    pub fn new(cfg: &ClipConfig, vb: Weights) -> Result<Self> {
        let vb =
            if vb.contains_tensor("text_model.embeddings.token_embedding.weight") { vb.pp("text_model") } else { vb };
        let act = Activation::from_name(&cfg.hidden_act).map_err(candle_core::Error::Msg)?;
        let e = vb.pp("embeddings");
        let table = e.pp("token_embedding").get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let token_embedding = Embedding::new(table, cfg.hidden_size);
        let position_embedding =
            e.pp("position_embedding").get((cfg.max_position_embeddings, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, act, vb.pp("encoder").pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection: None,
            eos_token_id: cfg.eos_token_id,
            dtype: vb.dtype(),
            attention_slice: 0,
        })
    }

    /// [`Self::new`] for a `CLIPTextModelWithProjection` (SDXL's second encoder): also reads
    /// `text_projection.weight` `(projection_dim, hidden_size)`.
    ///
    /// # Errors
    /// As [`Self::new`], or a missing or mis-shaped projection.
    pub fn with_projection(cfg: &ClipConfig, vb: Weights) -> Result<Self> {
        let mut m = Self::new(cfg, vb.clone())?;
        m.text_projection = Some(Linear::new(cfg.hidden_size, cfg.projection_dim, false, vb.pp("text_projection"))?);
        Ok(m)
    }

    /// The token embeddings plus positions, and the causal mask, for ids `(B, L)`.
    fn embed(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, len) = ids.dims2()?;
        if len > self.position_embedding.dim(0)? {
            candle_core::bail!("{len} tokens, but the text encoder has {} positions", self.position_embedding.dim(0)?);
        }
        let x = self.token_embedding.forward(ids)?.to_dtype(self.dtype)?;
        let x = x.broadcast_add(&self.position_embedding.narrow(0, 0, len)?.to_dtype(self.dtype)?)?;
        let mask = causal_mask(len, x.device())?.to_dtype(x.dtype())?;
        Ok((x, mask))
    }

    /// SDXL's reading of the encoder for ids `(B, L)`: the hidden state `clip_skip` layers
    /// before the penultimate one, without the final layer norm (diffusers'
    /// `hidden_states[-(clip_skip + 2)]`), and, for an encoder with a projection, the pooled
    /// embedding `(B, projection_dim)`: the final layer's normed state at the end token,
    /// projected.
    ///
    /// # Errors
    /// As [`Self::forward`]; `clip_skip` + 1 ≥ the layer count.
    pub fn forward_xl(&self, ids: &Tensor, clip_skip: usize) -> Result<(Tensor, Option<Tensor>)> {
        let n = self.layers.len();
        if clip_skip >= n {
            candle_core::bail!("clip_skip {clip_skip}: the text encoder has only {n} layers");
        }
        let (mut x, mask) = self.embed(ids)?;
        let keep = n - 1 - clip_skip;
        let mut hidden = None;
        // the pooled output needs every layer; the hidden state only the first `keep`
        let run = if self.text_projection.is_some() { n } else { keep };
        if keep == 0 {
            hidden = Some(x.clone());
        }
        for (i, layer) in self.layers[..run].iter().enumerate() {
            x = layer.forward(&x, &mask, self.attention_slice)?;
            if i + 1 == keep {
                hidden = Some(x.clone());
            }
        }
        let hidden = hidden.ok_or_else(|| candle_core::Error::Msg("text encoder: no hidden state".into()))?;
        let Some(proj) = &self.text_projection else {
            return Ok((hidden, None));
        };
        let last = self.final_layer_norm.forward(&x)?;
        let ids_v: Vec<Vec<i64>> = ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let rows = ids_v
            .iter()
            .enumerate()
            .map(|(b, row)| {
                let pos = if self.eos_token_id == 2 {
                    // the first largest id (torch's argmax): the end token in CLIP's vocabulary
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&t| t == max).unwrap_or(0)
                } else {
                    // the first end token (padding may be the end token too); 0 when absent, as torch's argmax
                    row.iter().position(|&t| t == i64::from(self.eos_token_id)).unwrap_or(0)
                };
                last.get(b)?.get(pos)?.unsqueeze(0)
            })
            .collect::<Result<Vec<_>>>()?;
        let pooled = proj.forward(&Tensor::cat(&rows, 0)?)?;
        Ok((hidden, Some(pooled)))
    }

    /// Encodes token ids `(B, L)` (u32 or i64) to hidden states `(B, L, hidden)`.
    ///
    /// `clip_skip` = 0 uses the last stored layer; `n` stops `n` layers earlier. The final layer
    /// norm is applied either way, as diffusers does.
    ///
    /// # Errors
    /// Sequences longer than the position table, `clip_skip` ≥ the layer count, tensor errors.
    pub fn forward(&self, ids: &Tensor, clip_skip: usize) -> Result<Tensor> {
        if clip_skip >= self.layers.len() {
            candle_core::bail!("clip_skip {clip_skip}: the text encoder has only {} layers", self.layers.len());
        }
        let (mut x, mask) = self.embed(ids)?;
        for layer in &self.layers[..self.layers.len() - clip_skip] {
            x = layer.forward(&x, &mask, self.attention_slice)?;
        }
        self.final_layer_norm.forward(&x)
    }

    /// Number of stored layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
