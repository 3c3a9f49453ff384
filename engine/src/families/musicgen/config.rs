//! MusicGen's `config.json` as transformers writes it (`model_type = "musicgen"`, with
//! `text_encoder`, `decoder` and `audio_encoder` sub-configs), transformers' defaults for absent
//! fields, `generation_config.json`, and [`Config::check`]: what the model code cannot run,
//! refused in one line naming the file and the field.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole model's config.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub model_type: String,
    pub text_encoder: T5Config,
    pub decoder: DecoderConfig,
    pub audio_encoder: CodecConfig,
}

/// The T5 text encoder (`T5EncoderModel`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// `relu` (T5), `gated-gelu` (T5 v1.1, Flan-T5).
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            model_type: "t5".into(),
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

/// The MusicGen decoder (`MusicgenDecoderConfig`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub num_attention_heads: usize,
    pub hidden_size: usize,
    pub activation_function: String,
    pub scale_embedding: bool,
    pub num_codebooks: usize,
    pub audio_channels: usize,
    pub pad_token_id: u32,
    pub cross_attention_hidden_size: Option<usize>,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            vocab_size: 2048,
            max_position_embeddings: 2048,
            num_hidden_layers: 24,
            ffn_dim: 4096,
            num_attention_heads: 16,
            hidden_size: 1024,
            activation_function: "gelu".into(),
            scale_embedding: false,
            num_codebooks: 4,
            audio_channels: 1,
            pad_token_id: 2048,
            cross_attention_hidden_size: None,
        }
    }
}

/// The EnCodec audio codec (`EncodecConfig`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct CodecConfig {
    pub model_type: String,
    pub sampling_rate: u32,
    pub audio_channels: usize,
    pub hidden_size: usize,
    pub num_filters: usize,
    pub num_residual_layers: usize,
    pub upsampling_ratios: Vec<usize>,
    pub norm_type: String,
    pub kernel_size: usize,
    pub last_kernel_size: usize,
    pub residual_kernel_size: usize,
    pub dilation_growth_rate: usize,
    pub use_causal_conv: bool,
    pub pad_mode: String,
    pub compress: usize,
    pub num_lstm_layers: usize,
    pub trim_right_ratio: f64,
    pub codebook_size: usize,
    pub codebook_dim: Option<usize>,
    pub use_conv_shortcut: bool,
    pub target_bandwidths: Vec<f64>,
    pub chunk_length_s: Option<f64>,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            model_type: "encodec".into(),
            sampling_rate: 24000,
            audio_channels: 1,
            hidden_size: 128,
            num_filters: 32,
            num_residual_layers: 1,
            upsampling_ratios: vec![8, 5, 4, 2],
            norm_type: "weight_norm".into(),
            kernel_size: 7,
            last_kernel_size: 7,
            residual_kernel_size: 3,
            dilation_growth_rate: 2,
            use_causal_conv: true,
            pad_mode: "reflect".into(),
            compress: 2,
            num_lstm_layers: 2,
            trim_right_ratio: 1.0,
            codebook_size: 1024,
            codebook_dim: None,
            use_conv_shortcut: true,
            target_bandwidths: vec![1.5, 3.0, 6.0, 12.0, 24.0],
            chunk_length_s: None,
        }
    }
}

impl CodecConfig {
    /// Samples per code frame: the product of the upsampling ratios.
    pub fn hop_length(&self) -> usize {
        self.upsampling_ratios.iter().product()
    }

    /// Code frames per second, `ceil(sampling_rate / hop_length)` as transformers computes it.
    pub fn frame_rate(&self) -> usize {
        (self.sampling_rate as usize).div_ceil(self.hop_length().max(1))
    }

    /// The codebook width (`codebook_dim`, else `hidden_size`).
    pub fn codebook_dim(&self) -> usize {
        self.codebook_dim.unwrap_or(self.hidden_size)
    }

    /// Quantizers at the largest target bandwidth, as transformers computes them.
    pub fn num_quantizers(&self) -> usize {
        let bits = (self.codebook_size.max(2) as f64).log2().ceil();
        let top = self.target_bandwidths.last().copied().unwrap_or(0.0);
        (1000.0 * top / (self.frame_rate() as f64 * bits)).floor() as usize
    }
}

/// What `generation_config.json` says about sampling (transformers' defaults when absent).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    pub do_sample: bool,
    pub top_k: usize,
    pub top_p: f32,
    pub temperature: f32,
    pub guidance_scale: Option<f32>,
    pub max_length: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self { do_sample: false, top_k: 50, top_p: 1.0, temperature: 1.0, guidance_scale: None, max_length: 20 }
    }
}

impl Config {
    /// Reads `dir/config.json` and checks it ([`Config::check`]).
    ///
    /// # Errors
    /// A missing or malformed file, or a config the model code cannot run, naming the file.
    pub fn read(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let cfg: Config =
            serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not a MusicGen config: {e}")))?;
        cfg.check().map_err(|p| Error::file(&path, p))?;
        Ok(cfg)
    }

    /// The first thing the model code cannot run, for people, naming the field.
    ///
    /// # Errors
    /// One line: an unknown text encoder or codec, codebook counts or sizes that disagree
    /// between decoder and codec, zero or indivisible sizes, a stereo model.
    pub fn check(&self) -> std::result::Result<(), String> {
        let (t, d, c) = (&self.text_encoder, &self.decoder, &self.audio_encoder);
        if self.model_type != "musicgen" {
            return Err(format!("model_type = '{}': expected 'musicgen'", self.model_type));
        }
        if t.model_type != "t5" {
            return Err(format!("text_encoder.model_type = '{}': this build runs a T5 text encoder only", t.model_type));
        }
        if c.model_type != "encodec" {
            return Err(format!("audio_encoder.model_type = '{}': this build decodes audio with EnCodec only", c.model_type));
        }
        if !matches!(t.feed_forward_proj.as_str(), "relu" | "gated-gelu") {
            return Err(format!("text_encoder.feed_forward_proj = '{}': expected relu or gated-gelu", t.feed_forward_proj));
        }
        crate::nn::layers::Activation::from_name(&d.activation_function).map_err(|e| format!("decoder.activation_function: {e}"))?;
        for (name, v) in [
            ("text_encoder.d_model", t.d_model),
            ("text_encoder.num_heads", t.num_heads),
            ("text_encoder.d_kv", t.d_kv),
            ("text_encoder.relative_attention_num_buckets", t.relative_attention_num_buckets),
            ("decoder.hidden_size", d.hidden_size),
            ("decoder.num_attention_heads", d.num_attention_heads),
            ("decoder.num_codebooks", d.num_codebooks),
            ("decoder.max_position_embeddings", d.max_position_embeddings),
            ("audio_encoder.hidden_size", c.hidden_size),
            ("audio_encoder.num_filters", c.num_filters),
            ("audio_encoder.compress", c.compress),
            ("audio_encoder.sampling_rate", c.sampling_rate as usize),
        ] {
            if v == 0 {
                return Err(format!("{name} = 0"));
            }
        }
        if t.relative_attention_num_buckets < 4 || t.relative_attention_max_distance <= t.relative_attention_num_buckets / 4 {
            return Err(format!(
                "text_encoder.relative_attention_num_buckets = {}, relative_attention_max_distance = {}: too few buckets for T5's scheme",
                t.relative_attention_num_buckets, t.relative_attention_max_distance
            ));
        }
        if d.hidden_size % d.num_attention_heads != 0 {
            return Err(format!(
                "decoder.hidden_size = {} is not a multiple of decoder.num_attention_heads = {}",
                d.hidden_size, d.num_attention_heads
            ));
        }
        if d.audio_channels != 1 {
            return Err(format!("decoder.audio_channels = {}: this build runs mono MusicGen only", d.audio_channels));
        }
        if c.upsampling_ratios.is_empty() || c.upsampling_ratios.contains(&0) {
            return Err(format!("audio_encoder.upsampling_ratios = {:?}: expected positive ratios", c.upsampling_ratios));
        }
        if c.norm_type != "weight_norm" {
            return Err(format!("audio_encoder.norm_type = '{}': this build runs weight_norm EnCodec only", c.norm_type));
        }
        if !matches!(c.pad_mode.as_str(), "reflect" | "constant") {
            return Err(format!("audio_encoder.pad_mode = '{}': expected reflect or constant", c.pad_mode));
        }
        if c.chunk_length_s.is_some() {
            return Err("audio_encoder.chunk_length_s is set: chunked EnCodec (the 48 kHz codec) is not run by this build".into());
        }
        if c.audio_channels != 1 {
            return Err(format!("audio_encoder.audio_channels = {}: this build decodes mono audio only", c.audio_channels));
        }
        if c.num_quantizers() != d.num_codebooks {
            return Err(format!(
                "decoder.num_codebooks = {} but the codec (audio_encoder) has {} quantizers at its top bandwidth {:?} kbps",
                d.num_codebooks,
                c.num_quantizers(),
                c.target_bandwidths.last()
            ));
        }
        if c.codebook_size != d.vocab_size {
            return Err(format!(
                "decoder.vocab_size = {} but audio_encoder.codebook_size = {}: the codes must be the codec's",
                d.vocab_size, c.codebook_size
            ));
        }
        if d.pad_token_id as usize != d.vocab_size {
            return Err(format!(
                "decoder.pad_token_id = {}: expected {} (one past the codebook, as MusicGen's delay pattern needs)",
                d.pad_token_id, d.vocab_size
            ));
        }
        if let Some(x) = d.cross_attention_hidden_size
            && x != t.d_model
        {
            return Err(format!("decoder.cross_attention_hidden_size = {x} but text_encoder.d_model = {}", t.d_model));
        }
        Ok(())
    }
}

/// Reads `dir/generation_config.json`, or transformers' defaults when there is none.
///
/// # Errors
/// A malformed file, named.
pub fn generation_config(dir: &Path) -> Result<GenerationConfig> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(GenerationConfig::default());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not a generation config: {e}")))
}
