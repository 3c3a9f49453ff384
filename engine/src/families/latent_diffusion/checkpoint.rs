//! What a Stable Diffusion model is loaded from: a diffusers folder (configs and weights per
//! component) or a single-file LDM checkpoint (configs inferred, the standard CLIP vocabulary
//! from `assets/clip`). Both give the pipeline the same things: a tokenizer, a config and a
//! memory-mapped weight builder per component, and the scheduler config. An SDXL folder also has
//! a second tokenizer and text encoder ([`Checkpoint::text_2`]). A stable-diffusion.cpp GGUF is a
//! single file whose tensors precision `auto` keeps as stored ([`Checkpoint::stored_source`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
use crate::formats::human_bytes;
use crate::knobs::{Component, Precision};
use crate::nn::{Ledger, StoredSource};

/// SDXL's second text encoder as a folder holds it (or a single file: its config inferred, the
/// standard CLIP vocabulary padded with `!`).
pub struct TextEncoder2 {
    /// `tokenizer_2/`.
    pub tokenizer: ClipTokenizer,
    /// `text_encoder_2/config.json`, checked.
    pub config: ClipConfig,
    /// `text_encoder_2/` (a single file: the file), what errors about it name.
    pub dir: PathBuf,
    /// `model_index.json`'s `force_zeros_for_empty_prompt` (true when absent, as diffusers):
    /// an empty negative prompt is then all zeros, embeddings and pooled.
    pub force_zeros: bool,
}

/// A model's source of configs and weights.
pub enum Checkpoint {
    /// A diffusers folder (`model_index.json`).
    Folder(PathBuf),
    /// A single `.safetensors` / `.ckpt` / `.gguf` file in the original LDM layout.
    Single(Box<SingleFile>),
    /// A file that holds only the denoiser, and the model its other components come from.
    Denoiser { unet: Box<SingleFile>, base: Box<Checkpoint> },
    /// A diffusers `vae/` and `text_encoder/` folder given apart (a denoiser's companions).
    Parts { vae: PathBuf, text: PathBuf },
}

/// Where a denoiser-only model's other components (text encoder, VAE, tokenizer, scheduler)
/// come from; what the CLI's `--base`, `--vae` and `--text-encoder` name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Companions {
    /// A whole Stable Diffusion 1.x/2.x model (diffusers folder or single file).
    pub base: Option<PathBuf>,
    /// A diffusers `vae/` folder (`config.json` and weights).
    pub vae: Option<PathBuf>,
    /// A diffusers `text_encoder/` folder; the tokenizer is its sibling `tokenizer/` when there is
    /// one, else the standard CLIP vocabulary.
    pub text_encoder: Option<PathBuf>,
}

impl Companions {
    /// True when none is given.
    pub fn is_empty(&self) -> bool {
        self.base.is_none() && self.vae.is_none() && self.text_encoder.is_none()
    }
}

impl Checkpoint {
    /// Opens a diffusers folder or a single-file checkpoint.
    ///
    /// # Errors
    /// A folder without `model_index.json`, or a file that is not an SD 1.x/2.x or SDXL base LDM
    /// checkpoint.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &Companions::default())
    }

    /// Opens a model as [`Checkpoint::open`] does, or, with companions, a denoiser-only file
    /// (stable-diffusion.cpp's or ComfyUI-GGUF's) whose text encoder, VAE, tokenizer and scheduler
    /// come from them.
    ///
    /// # Errors
    /// As [`Checkpoint::open`]; companions for a whole model, a base that is itself only a
    /// denoiser, `--vae` without `--text-encoder` (or the other way), or a denoiser whose
    /// cross-attention width is not the companion text encoder's; each one line naming the file.
    pub fn open_with(path: &Path, companions: &Companions) -> Result<Self> {
        if companions.is_empty() {
            return Self::open_whole(path);
        }
        if path.is_dir() {
            return Err(Error::file(path, "a diffusers folder is a whole model: it takes no --base, --vae or --text-encoder"));
        }
        let unet = SingleFile::open_denoiser(path).map_err(|e| {
            if SingleFile::open(path).is_ok() {
                Error::file(path, "is a whole model: it takes no --base, --vae or --text-encoder")
            } else {
                e
            }
        })?;
        let base = match (&companions.base, &companions.vae, &companions.text_encoder) {
            (Some(b), None, None) => Self::open_whole(b)?,
            (None, Some(v), Some(t)) => Self::parts(v, t)?,
            (Some(_), _, _) => {
                return Err(Error::file(path, "give --base PATH, or --vae PATH with --text-encoder PATH, not both"));
            }
            _ => return Err(Error::file(path, "--vae PATH and --text-encoder PATH go together (or give --base PATH)")),
        };
        let context = unet.layout.unet.cross_attention_dim;
        let hidden = base.text_config()?.hidden_size;
        if context != hidden {
            return Err(Error::file(
                path,
                format!("the denoiser's cross-attention takes text {context} wide, but the companion text encoder gives {hidden}"),
            ));
        }
        Ok(Checkpoint::Denoiser { unet: Box::new(unet), base: Box::new(base) })
    }

    /// A `vae/` and a `text_encoder/` folder (each with its `config.json` and weights), checked.
    fn parts(vae: &Path, text: &Path) -> Result<Self> {
        for (dir, what) in [(vae, "--vae"), (text, "--text-encoder")] {
            if !dir.join("config.json").is_file() {
                return Err(Error::file(dir, format!("{what} needs a diffusers component folder (config.json and its weights)")));
            }
        }
        Ok(Checkpoint::Parts { vae: vae.to_path_buf(), text: text.to_path_buf() })
    }

    fn open_whole(path: &Path) -> Result<Self> {
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
            Checkpoint::Denoiser { unet, base } => {
                let mut notes = unet.layout.notes.clone();
                notes.push(format!(
                    "unet from {}; text encoder, VAE, tokenizer and scheduler from {}",
                    unet.path().display(),
                    base.path().display()
                ));
                notes.extend(base.notes());
                notes
            }
            Checkpoint::Parts { text, .. } => {
                let mut notes = Vec::new();
                if !text.with_file_name("tokenizer").is_dir() {
                    notes.push("tokenizer: none beside the text encoder; the standard CLIP vocabulary".into());
                }
                if !text.with_file_name("scheduler").join("scheduler_config.json").is_file() {
                    notes.push("scheduler: none beside the text encoder; Stable Diffusion's (epsilon prediction)".into());
                }
                notes
            }
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
            Checkpoint::Denoiser { unet, .. } if component == Component::Unet => unet.path().to_path_buf(),
            Checkpoint::Denoiser { base, .. } => base.label(component),
            Checkpoint::Parts { vae, .. } if component == Component::Vae => vae.clone(),
            Checkpoint::Parts { text, .. } => text.clone(),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            Checkpoint::Folder(p) => p.clone(),
            Checkpoint::Single(s) => s.path().to_path_buf(),
            Checkpoint::Denoiser { unet, .. } => unet.path().to_path_buf(),
            Checkpoint::Parts { text, .. } => text.clone(),
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
            Checkpoint::Denoiser { base, .. } => base.tokenizer(),
            Checkpoint::Parts { text, .. } => {
                let beside = text.with_file_name("tokenizer");
                if beside.is_dir() {
                    return ClipTokenizer::from_dir(&beside);
                }
                let dir = crate::paths::clip_vocabulary_dir()?;
                let mut t = ClipTokenizer::from_dir(&dir)?;
                // OpenCLIP (SD 2.x, gelu) pads with `!`, as its tokenizer does
                if self.text_config()?.hidden_act == "gelu" {
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
            Checkpoint::Denoiser { base, .. } => base.text_config(),
            Checkpoint::Parts { text, .. } => {
                let cfg: ClipConfig = read_config(text)?;
                cfg.validate().map_err(|m| Error::file(text.join("config.json"), m))?;
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
            Checkpoint::Single(s) | Checkpoint::Denoiser { unet: s, .. } => {
                let cfg = s.layout.unet.clone();
                cfg.validate().map_err(|m| Error::file(s.path(), format!("unet config: {m}")))?;
                Ok(cfg)
            }
            Checkpoint::Parts { .. } => Err(Error::file(self.path(), "companion folders hold no denoiser")),
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
            Checkpoint::Denoiser { base, .. } => base.vae_config(),
            Checkpoint::Parts { vae, .. } => {
                let cfg: VaeConfig = read_config(vae)?;
                cfg.validate().map_err(|m| Error::file(vae.join("config.json"), m))?;
                Ok(cfg)
            }
        }
    }

    /// SDXL's second text encoder: present when `model_index.json` names `text_encoder_2`, or a
    /// single file holds `conditioner.embedders.1.*`. Its folder (with `config.json` and weights) and
    /// `tokenizer_2/` must then exist.
    ///
    /// # Errors
    /// An unreadable `model_index.json`; `text_encoder_2/` or `tokenizer_2/` named but missing,
    /// as one line naming the folder and what is missing.
    pub fn text_2(&self) -> Result<Option<TextEncoder2>> {
        if let Checkpoint::Single(s) = self {
            let Some(config) = s.layout.text_2.clone() else { return Ok(None) };
            config.validate().map_err(|m| Error::file(s.path(), format!("text_2 config: {m}")))?;
            // SDXL's second tokenizer is the standard vocabulary padded with `!`
            let dir = crate::paths::clip_vocabulary_dir()?;
            let mut tokenizer = ClipTokenizer::from_dir(&dir)?;
            tokenizer.set_pad_token("!").map_err(|e| Error::file(&dir, e))?;
            // as SDXL base's model_index.json says
            return Ok(Some(TextEncoder2 { tokenizer, config, dir: s.path().to_path_buf(), force_zeros: true }));
        }
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

    /// A memory-mapped weight builder for SDXL's second text encoder in `dtype` on `device`.
    ///
    /// # Errors
    /// A model without one; a missing or unreadable weight file.
    pub fn text_2_weights(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        match self {
            Checkpoint::Folder(p) => Ok(var_builder(&p.join("text_encoder_2"), dtype, device)?.0),
            Checkpoint::Single(s) => s
                .weights_text_2(dtype, device)
                .map(|(vb, _)| vb)
                .ok_or_else(|| Error::file(s.path(), "has no second text encoder (SDXL's conditioner.embedders.1.*)")),
            _ => Err(Error::file(self.path(), "has no second text encoder (text_encoder_2)")),
        }
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
            Checkpoint::Denoiser { base, .. } => return base.scheduler_config(),
            Checkpoint::Parts { text, .. } => {
                let f = text.with_file_name("scheduler").join("scheduler_config.json");
                if f.is_file() { (read_json(&f)?, f) } else { (super::ldm_keys::sd_scheduler(false), text.clone()) }
            }
        };
        let c: &SchedulerConfig = &config;
        c.prediction().map_err(|e| Error::file(&file, e))?;
        c.alphas_cumprod().map_err(|e| Error::file(&file, e))?;
        Ok(config)
    }

    /// The single file `component` is read from, if it is one.
    fn single_for(&self, component: Component) -> Option<&SingleFile> {
        match self {
            Checkpoint::Folder(_) | Checkpoint::Parts { .. } => None,
            Checkpoint::Single(s) => Some(s),
            Checkpoint::Denoiser { unet, .. } if component == Component::Unet => Some(unet),
            Checkpoint::Denoiser { base, .. } => base.single_for(component),
        }
    }

    /// Whether `component` is read from a GGUF (whose types the file chose: precision `auto`
    /// keeps them).
    pub fn is_gguf(&self, component: Component) -> bool {
        self.single_for(component).is_some_and(SingleFile::is_gguf)
    }

    /// `component`'s tensors as its file stores them, when precision `knob` keeps them so: `auto`
    /// on a GGUF. `None` otherwise (the weights are converted to the knob's precision).
    pub fn stored_source(&self, component: Component, knob: Precision) -> Option<Arc<dyn StoredSource>> {
        self.single_for(component).filter(|_| knob == Precision::Auto).and_then(|s| s.stored_source(component))
    }

    /// SDXL's second text encoder's tensors as its GGUF stores them under precision `auto`, as
    /// [`Checkpoint::stored_source`].
    pub fn stored_source_text_2(&self, knob: Precision) -> Option<Arc<dyn StoredSource>> {
        match self {
            Checkpoint::Single(s) if knob == Precision::Auto => s.stored_source_text_2(),
            _ => None,
        }
    }

    /// What a GGUF's load of `component` at precision `knob` says in the run's notes: the types
    /// kept as stored and their resident bytes, what a layer had to widen, and how the CPU
    /// computes; or that an explicit precision converted the stored tensors. Nothing for other
    /// formats.
    pub fn stored_notes(&self, c: Component, knob: Precision, ledger: &Ledger, on_cpu: bool) -> Vec<String> {
        if !self.is_gguf(c) {
            return Vec::new();
        }
        if knob != Precision::Auto {
            return vec![format!(
                "{c}: precision {knob} set: the GGUF's tensors were dequantized once at load and stored again as {knob} \
                 (precision auto keeps them as the file stores them)"
            )];
        }
        let mut notes = vec![format!(
            "{c}: kept as the GGUF stores it (precision auto): {}; {} resident",
            ledger.summary(),
            human_bytes(ledger.bytes)
        )];
        if on_cpu && ledger.tensors.keys().any(|k| *k != "f32") {
            notes.push(format!(
                "{c}: quantized, f16 and bf16 weights stay so in memory and are expanded to f32 one layer at a time \
                 to multiply in f32 on the CPU"
            ));
        }
        if let Some(w) = ledger.widened_summary() {
            notes.push(format!("{c}: {w}"));
        }
        notes
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
            Checkpoint::Denoiser { unet, .. } if component == Component::Unet => Ok(unet.weights(component, dtype, device)),
            Checkpoint::Denoiser { base, .. } => base.weights(component, dtype, device),
            Checkpoint::Parts { .. } if component == Component::Unet => {
                Err(Error::file(self.path(), "companion folders hold no denoiser"))
            }
            Checkpoint::Parts { .. } => var_builder(&self.label(component), dtype, device),
        }
    }
}

/// The components of the model at `path` (of `components`) that a change from `was` to `now` must
/// read again beyond `already`: on a GGUF, those whose precision changed to or from `auto` (kept as stored),
/// which [`crate::knobs::Knobs::components_to_reread`] may take for the same precision (auto
/// is f32 on the CPU).
pub fn as_stored_changes(
    path: &Path,
    components: &[crate::families::ComponentSpec],
    was: &crate::knobs::Knobs,
    now: &crate::knobs::Knobs,
    already: &[&str],
) -> Vec<&'static str> {
    let gguf = path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| {
                let mut magic = [0u8; 4];
                std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic)
            })
            .is_ok_and(|m| &m == b"GGUF" || &m == b"FUGG");
    if !gguf {
        return Vec::new();
    }
    components
        .iter()
        .map(|c| c.name)
        .filter(|c| !already.contains(c))
        .filter(|&c| {
            let (a, b) = (was.precision.get(c), now.precision.get(c));
            a != b && (a == Precision::Auto || b == Precision::Auto)
        })
        .collect()
}
