//! Prompt → music for MusicGen: tokenize (the folder's `tokenizer.json`), encode with T5 and
//! project to the decoder's width, generate `seconds × frame_rate` columns of codes through the
//! delay pattern with classifier-free guidance (transformers' unconditional branch: the text
//! states zeroed), undo the pattern, decode with EnCodec. The [`Family`] the worker drives; each
//! component (`text`, `lm`, `codec`) is read on its own, so `retune` reads again only those whose
//! knobs changed.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};

use super::config::{Config, GenerationConfig, generation_config};
use super::decoder::{Decoder, DelayPattern};
use super::encodec::Codec;
use super::sampling::Sampling;
use super::t5::T5Encoder;
use crate::cancel::CancelCheck;
use crate::error::{Error, Result};
use crate::families::latent_diffusion::folder::{build, var_builder, weight_file};
use crate::families::latent_diffusion::pipeline::candle_device;
use crate::families::holding::{Holding, holding, ledger_notes, per_device};
use crate::families::{ComponentSpec, Family, Retuned, RunObserver};
use crate::knobs::Knobs;
use crate::media::Audio;
use crate::nn::Weights;
use crate::nn::layers::Linear;
use crate::request::Request;
use crate::rng::TorchCpuRng;
use crate::worker::protocol::{Artifact, Preview, Stage};

/// The text encoder and the projection of its states to the decoder's width (when they differ).
struct Text {
    encoder: T5Encoder,
    proj: Option<Linear>,
}

/// How one component is held: where, in which compute dtype, its resident bytes, and what its
/// load had to say (repeated in every run's notes).
#[derive(Clone, Debug)]
struct Held {
    device: Device,
    dtype: DType,
    bytes: u64,
    notes: Vec<String>,
}

impl Default for Held {
    fn default() -> Self {
        Held { device: Device::Cpu, dtype: DType::F32, bytes: 0, notes: Vec::new() }
    }
}

/// A loaded MusicGen model.
pub struct MusicGen {
    path: PathBuf,
    pub config: Config,
    generation: GenerationConfig,
    tokenizer: tokenizers::Tokenizer,
    /// The components; `None` only while one is read again.
    text: Option<Text>,
    lm: Option<Decoder>,
    codec: Option<Codec>,
    /// The run's device (the LM's).
    device: Device,
    /// Text, LM, codec.
    held: [Held; 3],
}

/// Loads a MusicGen folder (`config.json` with `model_type = "musicgen"`, `model.safetensors`,
/// `tokenizer.json`) with the knobs this family honours: device, precision per component
/// (`text`, `lm`, `codec`; quantized types store linear weights quantized and compute in f32 — the
/// codec's convolutions stay dense), placement of `text` and `codec`, `attention_slice`.
///
/// # Errors
/// A missing or malformed file, a config the code cannot run (one line naming the file and the
/// field), [`Error::Cancelled`] once `cancel` says so.
pub fn load(path: &Path, knobs: &Knobs, cancel: &CancelCheck) -> Result<MusicGen> {
    cancel.stop()?;
    let config = Config::read(path)?;
    let generation = generation_config(path)?;
    let tok_path = path.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(Error::file(&tok_path, "missing: MusicGen needs its T5 tokenizer as tokenizer.json"));
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| Error::file(&tok_path, format!("not a tokenizer: {}", e.to_string().lines().next().unwrap_or(""))))?;
    let device = candle_device(knobs.device)?;
    let knobs = &knobs.for_family(&super::COMPONENTS, &path.display().to_string())?;
    let mut model = MusicGen {
        path: path.to_path_buf(),
        config,
        generation,
        tokenizer,
        text: None,
        lm: None,
        codec: None,
        device,
        held: Default::default(),
    };
    for c in &super::COMPONENTS {
        model.read_component(c.name, knobs, cancel)?;
    }
    model.set_slicing(knobs);
    Ok(model)
}

impl MusicGen {
    /// Reads component `c` as `knobs` say, freeing the one held before first.
    fn read_component(&mut self, c: &str, knobs: &Knobs, cancel: &CancelCheck) -> Result<()> {
        cancel.stop()?;
        let i = match c {
            "text" => 0,
            "lm" => 1,
            "codec" => 2,
            _ => return Err(Error::invalid(format!("{}: this model has no component '{c}'", self.path.display()))),
        };
        match i {
            0 => self.text = None,
            1 => self.lm = None,
            _ => self.codec = None,
        }
        self.held[i] = Held::default();
        let placeable = super::COMPONENTS.iter().any(|s| s.name == c && s.placeable);
        let Holding { device, storage, dtype, mut notes } = holding(c, knobs, &self.device, placeable);
        let p = knobs.precision.get(c).resolve(knobs.device);
        if c == "codec" && p.is_quantized() {
            notes.push(format!("codec: {p} applies to linear layers; EnCodec's convolutions, LSTM and codebooks stay f32"));
        }
        let (vb, _) = var_builder(&self.path, dtype, &device)?;
        let w = Weights::stored_as(vb, storage);
        let w = w.with_cancel(cancel.clone());
        let file = weight_file(&self.path)?;
        let cancelled = |e: Error| if cancel.is_cancelled() { Error::Cancelled } else { e };
        match i {
            0 => {
                let (t, d) = (&self.config.text_encoder, &self.config.decoder);
                let encoder = build(&file, || T5Encoder::new(t, w.pp("text_encoder"))).map_err(cancelled)?;
                // transformers projects the text states when the widths differ
                let proj = if t.d_model != d.hidden_size || w.contains_tensor("enc_to_dec_proj.weight") {
                    Some(build(&file, || Linear::new(t.d_model, d.hidden_size, true, w.pp("enc_to_dec_proj"))).map_err(cancelled)?)
                } else {
                    None
                };
                self.text = Some(Text { encoder, proj });
            }
            1 => {
                let cfg = &self.config.decoder;
                self.lm = Some(build(&file, || Decoder::new(cfg, w.pp("decoder"))).map_err(cancelled)?);
            }
            _ => {
                let cfg = &self.config.audio_encoder;
                self.codec = Some(build(&file, || Codec::new(cfg, w.pp("audio_encoder"))).map_err(cancelled)?);
            }
        }
        let ledger = w.ledger();
        notes.extend(ledger_notes(c, storage, &ledger));
        self.held[i] = Held { device, dtype, bytes: ledger.bytes, notes };
        Ok(())
    }

    fn set_slicing(&mut self, knobs: &Knobs) {
        if let Some(lm) = self.lm.as_mut() {
            lm.attention_slice = knobs.slicing.attention_slice as usize;
        }
    }

    fn text(&self) -> &Text {
        self.text.as_ref().expect("the text encoder is loaded (a failed reload drops the model)")
    }

    /// The LM (decoder with its heads).
    pub fn lm(&self) -> &Decoder {
        self.lm.as_ref().expect("the LM is loaded (a failed reload drops the model)")
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        self.codec.as_ref().expect("the codec is loaded (a failed reload drops the model)")
    }

    /// Every note of the load.
    pub fn load_notes(&self) -> Vec<String> {
        self.held.iter().flat_map(|h| h.notes.iter().cloned()).collect()
    }

    /// Resident weight bytes of `text`, `lm`, `codec`.
    pub fn component_weight_bytes(&self) -> [u64; 3] {
        [self.held[0].bytes, self.held[1].bytes, self.held[2].bytes]
    }

    /// The prompt's token ids as the tokenizer gives them (with `</s>`).
    ///
    /// # Errors
    /// The tokenizer fails.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::file(self.path.join("tokenizer.json"), format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The T5 encoder's last hidden state `(1, L, d_model)` in f32 for `ids`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn encode_ids(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self.text().encoder.forward(ids)?.to_dtype(DType::F32)?)
    }

    /// The text states the decoder attends to, `(1, L, hidden)` on the LM's device in its dtype:
    /// encoded, projected (`enc_to_dec_proj`) when the widths differ.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn conditioning(&self, prompt: &str) -> Result<Tensor> {
        let ids = self.tokenize(prompt)?;
        let text = self.text();
        let mut h = text.encoder.forward(&ids)?;
        if let Some(p) = &text.proj {
            h = p.forward(&h)?;
        }
        Ok(h.to_device(&self.device)?.to_dtype(self.held[1].dtype)?)
    }

    /// The sampling a request asks for: its own fields, else the model's generation config
    /// (greedy unless it says `do_sample`).
    pub fn sampling(&self, request: &Request) -> Sampling {
        let g = &self.generation;
        let base = if g.do_sample {
            Sampling { temperature: g.temperature, top_k: g.top_k, top_p: g.top_p }
        } else {
            Sampling::GREEDY
        };
        let any = request.temperature.is_some() || request.top_k.is_some() || request.top_p.is_some();
        let base = if any && !g.do_sample { Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 } } else { base };
        Sampling {
            temperature: request.temperature.unwrap_or(base.temperature),
            top_k: request.top_k.map_or(base.top_k, |k| k as usize),
            top_p: request.top_p.unwrap_or(base.top_p),
        }
    }

    /// New tokens for `seconds` (`seconds × frame_rate`, rounded), or when unset transformers'
    /// `max_length − 1` from the generation config, capped to the decoder's positions.
    ///
    /// # Errors
    /// A length beyond the decoder's positions (the maximum named), or too short for one frame.
    pub fn new_tokens(&self, seconds: Option<f32>, observer: &mut dyn RunObserver) -> Result<usize> {
        let rate = self.config.audio_encoder.frame_rate();
        let positions = self.config.decoder.max_position_embeddings;
        let k = self.config.decoder.num_codebooks;
        let most = positions - 1;
        let most_secs = most as f64 / rate as f64;
        let file = self.path.join("config.json");
        let n = match seconds {
            Some(s) => {
                let n = (s as f64 * rate as f64).round() as usize;
                if n > most {
                    return Err(Error::file(
                        &file,
                        format!(
                            "seconds = {s}: at most {most_secs:.2} s for this model ({most} tokens: decoder.max_position_embeddings = {positions} at {rate} frames a second)"
                        ),
                    ));
                }
                n
            }
            None => {
                let n = self.generation.max_length.saturating_sub(1);
                if n > most {
                    observer.note(format!(
                        "seconds: unset; the generation config's max_length {} is past the decoder's {positions} positions, so {most_secs:.2} s",
                        self.generation.max_length
                    ));
                    most
                } else {
                    n
                }
            }
        };
        if n < k {
            return Err(Error::invalid(format!(
                "seconds = {}: {n} tokens make no audio; at least {k} (the codebooks' delay) are needed, {:.2} s",
                seconds.unwrap_or(0.0),
                k as f64 / rate as f64
            )));
        }
        Ok(n)
    }

    /// Generates `new_tokens` columns for `batch` copies of the prompt's states `cond` `(1, L, d)`,
    /// guided by `guidance` when above 1, sampling with `sampling` from a generator seeded with
    /// `seed`; returns per batch item the codes `(codebooks, frames)` with the delay pattern undone.
    ///
    /// # Errors
    /// Tensor errors; [`Error::Cancelled`] when `observer` asks between columns.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_codes(
        &self,
        cond: &Tensor,
        batch: usize,
        guidance: f32,
        new_tokens: usize,
        sampling: Sampling,
        seed: u64,
        observer: &mut dyn RunObserver,
    ) -> Result<Vec<Vec<Vec<u32>>>> {
        let lm = self.lm();
        let k = lm.cfg.num_codebooks;
        let vocab = lm.cfg.vocab_size;
        let pad = lm.cfg.pad_token_id;
        let guided = guidance > 1.0;
        let cond = cond.repeat((batch, 1, 1))?;
        let states = if guided { Tensor::cat(&[&cond, &cond.zeros_like()?], 0)? } else { cond };
        let rows = states.dim(0)?;
        let mut cache = lm.cache(&states)?;
        let pattern = DelayPattern { codebooks: k, length: new_tokens + 1 };
        let mut rng = TorchCpuRng::new(seed);
        // columns[b][t][k]; column 0 is the start (pad) token
        let mut columns: Vec<Vec<Vec<u32>>> = vec![vec![vec![pad; k]]; batch];
        for t in 1..=new_tokens {
            if observer.cancelled() {
                return Err(Error::Cancelled);
            }
            let last: Vec<u32> = (0..rows).flat_map(|r| columns[r % batch][t - 1].clone()).collect();
            let input = Tensor::from_vec(last, (rows, k, 1), &self.device)?;
            let logits = lm.forward(&input, &mut cache)?.squeeze(2)?; // (rows, K, vocab)
            let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            for (b, cols) in columns.iter_mut().enumerate() {
                let mut next = Vec::with_capacity(k);
                for q in 0..k {
                    let at = |r: usize| &logits[(r * k + q) * vocab..(r * k + q + 1) * vocab];
                    let row: Vec<f32> = if guided {
                        at(b).iter().zip(at(b + batch)).map(|(c, u)| u + (c - u) * guidance).collect()
                    } else {
                        at(b).to_vec()
                    };
                    let token = sampling.pick(&row, &mut rng) as u32;
                    next.push(if pattern.is_pad(q, t) { pad } else { token });
                }
                cols.push(next);
            }
            observer.progress(t as u32, new_tokens as u32);
        }
        Ok(columns.iter().map(|c| pattern.undo(c)).collect())
    }

    /// EnCodec's decode of `codes` `(codebooks, frames)` to mono samples at the codec's rate.
    ///
    /// # Errors
    /// Codes outside the codebooks, tensor errors, [`Error::Cancelled`].
    pub fn decode_codes(&self, codes: &[Vec<u32>], observer: &dyn RunObserver) -> Result<Vec<f32>> {
        let hit = std::cell::Cell::new(false);
        let out = self.codec().decode(codes, &mut || {
            if observer.cancelled() {
                hit.set(true);
                candle_core::bail!("cancelled");
            }
            Ok(())
        });
        match out {
            Err(_) if hit.get() => Err(Error::Cancelled),
            r => Ok(r?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
        }
    }
}

/// Min/max pairs over `n` equal slices of a clip (the waveform preview).
fn envelope(samples: &[f32], n: usize) -> Vec<(f32, f32)> {
    let per = samples.len().div_ceil(n.max(1)).max(1);
    samples.chunks(per).map(|c| c.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)))).collect()
}

impl Family for MusicGen {
    fn name(&self) -> &str {
        "musicgen"
    }

    fn components(&self) -> Vec<ComponentSpec> {
        super::COMPONENTS.to_vec()
    }

    fn fields(&self) -> Vec<crate::families::FieldSpec> {
        super::FIELDS.to_vec()
    }

    fn weight_bytes(&self) -> Vec<(String, u64)> {
        per_device(self.held.iter().map(|h| (&h.device, h.bytes)))
    }

    fn retune(&mut self, loaded_with: &Knobs, knobs: &Knobs, cancel: &CancelCheck) -> Result<Retuned> {
        let knobs = &knobs.for_family(&super::COMPONENTS, &self.path.display().to_string())?;
        let Some(changed) = loaded_with.components_to_reread(knobs, &super::COMPONENTS) else {
            return Ok(Retuned::No);
        };
        for c in &changed {
            self.read_component(c, knobs, cancel)?;
        }
        self.set_slicing(knobs);
        Ok(Retuned::Read(changed.iter().map(|c| c.to_string()).collect()))
    }

    fn generate(&mut self, request: &Request, observer: &mut dyn RunObserver) -> Result<Vec<Artifact>> {
        request.validate()?;
        for n in self.load_notes() {
            observer.note(n);
        }
        if !request.negative.is_empty() {
            observer.note("negative prompt: MusicGen's guidance uses an empty (zeroed) condition; the negative prompt is not used".into());
        }
        let new_tokens = self.new_tokens(request.seconds, observer)?;
        let sampling = self.sampling(request);
        observer.stage(Stage::Text)?;
        let cond = self.conditioning(&request.prompt)?;
        if observer.cancelled() {
            return Err(Error::Cancelled);
        }
        observer.stage(Stage::Denoise)?;
        let batch = request.batch as usize;
        let codes = self.generate_codes(&cond, batch, request.guidance, new_tokens, sampling, request.seed, observer)?;
        observer.stage(Stage::Decode)?;
        let rate = self.config.audio_encoder.sampling_rate;
        let mut out = Vec::with_capacity(batch);
        for (i, c) in codes.iter().enumerate() {
            let samples = self.decode_codes(c, &*observer)?;
            observer.preview(Preview::Waveform(envelope(&samples, 512)));
            observer.progress(i as u32 + 1, batch as u32);
            out.push(Artifact::Audio(Audio { sample_rate: rate, samples }));
        }
        Ok(out)
    }
}
