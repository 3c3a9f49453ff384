//! What a Stable Diffusion model is loaded from: a diffusers folder (configs and weights per
//! component) or a single-file LDM checkpoint (configs inferred, the standard CLIP vocabulary
//! from `assets/clip`). Both give the pipeline the same things: a tokenizer, a config and a
//! memory-mapped weight builder per component, and the scheduler config. An SDXL folder also has
//! a second tokenizer and text encoder ([`Checkpoint::text_2`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::clip::ClipConfig;
use super::folder::{read_config, read_json, var_builder};
use super::ldm_keys::TextTower;
use super::schedulers::SchedulerConfig;
use super::single_file::SingleFile;
use super::tokenizer::ClipTokenizer;
use super::unet::UnetConfig;
use super::vae::VaeConfig;
use crate::error::{Error, Result};
use crate::knobs::Component;

/// SDXL's second text encoder as a folder holds it.
pub struct TextEncoder2 {
    /// `tokenizer_2/`.
    pub tokenizer: ClipTokenizer,
    /// `text_encoder_2/config.json`, checked.
    pub config: ClipConfig,
    /// `text_encoder_2/`, what errors about it name.
    pub dir: PathBuf,
    /// `model_index.json`'s `force_zeros_for_empty_prompt` (true when absent, as diffusers):
    /// an empty negative prompt is then all zeros, embeddings and pooled.
    pub force_zeros: bool,
}

impl TextEncoder2 {
    /// A memory-mapped weight builder for the encoder in `dtype` on `device`.
    ///
    /// # Errors
    /// A missing or unreadable weight file.
    pub fn weights(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        Ok(var_builder(&self.dir, dtype, device)?.0)
    }
}

/// A model's source of configs and weights.
pub enum Checkpoint {
    /// A diffusers folder (`model_index.json`).
    Folder(PathBuf),
    /// A single `.safetensors` / `.ckpt` file in the original LDM layout.
    Single(Box<SingleFile>),
}

impl Checkpoint {
    /// Opens a diffusers folder or a single-file checkpoint.
    ///
    /// # Errors
    /// A folder without `model_index.json`, or a file that is not an SD 1.x/2.x LDM checkpoint.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            if !path.join("model_index.json").is_file() {
                return Err(Error::file(path, "not a diffusers folder (no model_index.json)"));
            }
            Ok(Checkpoint::Folder(path.to_path_buf()))
        } else {
            Ok(Checkpoint::Single(Box::new(SingleFile::open(path)?)))
        }
    }

    /// What was assumed while opening (single files: configs inferred without a `.yaml`).
    pub fn notes(&self) -> Vec<String> {
        match self {
            Checkpoint::Folder(_) => Vec::new(),
            Checkpoint::Single(s) => s.layout.notes.clone(),
        }
    }

    /// The path errors about `component` should name.
    pub fn label(&self, component: Component) -> PathBuf {
        match self {
            Checkpoint::Folder(p) => p.join(match component {
                Component::Text => "text_encoder",
                Component::Unet => "unet",
                Component::Vae => "vae",
            }),
            Checkpoint::Single(_) => self.path(),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            Checkpoint::Folder(p) => p.clone(),
            Checkpoint::Single(s) => s.path().to_path_buf(),
        }
    }

    /// The prompt tokenizer: the folder's, or the standard CLIP vocabulary shipped in
    /// `assets/clip` (padded with `!` for SD 2.x's OpenCLIP tower, as its tokenizer does).
    ///
    /// # Errors
    /// A missing or malformed vocabulary.
    pub fn tokenizer(&self) -> Result<ClipTokenizer> {
        match self {
            Checkpoint::Folder(p) => ClipTokenizer::from_dir(&p.join("tokenizer")),
            Checkpoint::Single(s) => {
                let dir = crate::paths::clip_vocabulary_dir()?;
                let mut t = ClipTokenizer::from_dir(&dir)?;
                if s.layout.tower == TextTower::OpenClip {
                    t.set_pad_token("!").map_err(|e| Error::file(&dir, e))?;
                }
                Ok(t)
            }
        }
    }

    /// The text encoder's config.
    ///
    /// # Errors
    /// A missing or malformed `config.json`, or values the model cannot be built from (see the
    /// config's `validate`), naming the file and the field.
    pub fn text_config(&self) -> Result<ClipConfig> {
        match self {
            Checkpoint::Folder(p) => {
                let cfg: ClipConfig = read_config(&p.join("text_encoder"))?;
                cfg.validate().map_err(|m| Error::file(p.join("text_encoder").join("config.json"), m))?;
                Ok(cfg)
            }
            Checkpoint::Single(s) => {
                let cfg = s.layout.text.clone();
                cfg.validate().map_err(|m| Error::file(s.path(), format!("text config: {m}")))?;
                Ok(cfg)
            }
        }
    }

    /// The denoiser's config.
    ///
    /// # Errors
    /// A missing or malformed `config.json`, or values the model cannot be built from (see the
    /// config's `validate`), naming the file and the field.
    pub fn unet_config(&self) -> Result<UnetConfig> {
        match self {
            Checkpoint::Folder(p) => {
                let cfg: UnetConfig = read_config(&p.join("unet"))?;
                cfg.validate().map_err(|m| Error::file(p.join("unet").join("config.json"), m))?;
                Ok(cfg)
            }
            Checkpoint::Single(s) => {
                let cfg = s.layout.unet.clone();
                cfg.validate().map_err(|m| Error::file(s.path(), format!("unet config: {m}")))?;
                Ok(cfg)
            }
        }
    }

    /// The autoencoder's config.
    ///
    /// # Errors
    /// A missing or malformed `config.json`, or values the model cannot be built from (see the
    /// config's `validate`), naming the file and the field.
    pub fn vae_config(&self) -> Result<VaeConfig> {
        match self {
            Checkpoint::Folder(p) => {
                let cfg: VaeConfig = read_config(&p.join("vae"))?;
                cfg.validate().map_err(|m| Error::file(p.join("vae").join("config.json"), m))?;
                Ok(cfg)
            }
            Checkpoint::Single(s) => {
                let cfg = s.layout.vae.clone();
                cfg.validate().map_err(|m| Error::file(s.path(), format!("vae config: {m}")))?;
                Ok(cfg)
            }
        }
    }

    /// SDXL's second text encoder: present when `model_index.json` names `text_encoder_2` (a
    /// single file never has one here). Its folder (with `config.json` and weights) and
    /// `tokenizer_2/` must then exist.
    ///
    /// # Errors
    /// An unreadable `model_index.json`; `text_encoder_2/` or `tokenizer_2/` named but missing,
    /// as one line naming the folder and what is missing.
    pub fn text_2(&self) -> Result<Option<TextEncoder2>> {
        let Checkpoint::Folder(p) = self else { return Ok(None) };
        let index_path = p.join("model_index.json");
        let index: serde_json::Value = read_json(&index_path)?;
        let named = |key: &str| index.get(key).and_then(|v| v.as_array()).is_some_and(|a| a.iter().any(|x| !x.is_null()));
        if !named("text_encoder_2") {
            return Ok(None);
        }
        let dir = p.join("text_encoder_2");
        if !dir.join("config.json").is_file() {
            return Err(Error::file(
                &dir,
                "missing: model_index.json names text_encoder_2 (SDXL's second text encoder, a folder with config.json and model.safetensors)",
            ));
        }
        let tokenizer_dir = p.join("tokenizer_2");
        if !tokenizer_dir.is_dir() {
            return Err(Error::file(
                &tokenizer_dir,
                "missing: model_index.json names text_encoder_2, whose tokenizer is tokenizer_2 (vocab.json and merges.txt, or tokenizer.json)",
            ));
        }
        let config: ClipConfig = read_config(&dir)?;
        config.validate().map_err(|m| Error::file(dir.join("config.json"), m))?;
        // diffusers' SDXL pipelines default to true when the key is absent
        let force_zeros =
            index.get("force_zeros_for_empty_prompt").and_then(serde_json::Value::as_bool).unwrap_or(true);
        Ok(Some(TextEncoder2 { tokenizer: ClipTokenizer::from_dir(&tokenizer_dir)?, config, dir, force_zeros }))
    }

    /// The scheduler config, checked.
    ///
    /// # Errors
    /// A missing or malformed `scheduler_config.json`, or values no sampler can use.
    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        let (config, file) = match self {
            Checkpoint::Folder(p) => {
                let f = p.join("scheduler").join("scheduler_config.json");
                (read_json(&f)?, f)
            }
            Checkpoint::Single(s) => (s.layout.scheduler.clone(), self.path()),
        };
        let c: &SchedulerConfig = &config;
        c.prediction().map_err(|e| Error::file(&file, e))?;
        c.alphas_cumprod().map_err(|e| Error::file(&file, e))?;
        Ok(config)
    }

    /// A memory-mapped weight builder for `component` in `dtype` on `device`, and its number of
    /// weight elements.
    ///
    /// # Errors
    /// A missing or unreadable weight file.
    pub fn weights(&self, component: Component, dtype: DType, device: &Device) -> Result<(VarBuilder<'static>, u64)> {
        match self {
            Checkpoint::Folder(_) => var_builder(&self.label(component), dtype, device),
            Checkpoint::Single(s) => Ok(s.weights(component, dtype, device)),
        }
    }
}
