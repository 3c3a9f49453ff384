//! Prompt → image for Stable Diffusion 1.x/2.x and XL: tokenize, encode, denoise with
//! classifier-free guidance (batch `[uncond, cond]`), decode, and the [`Family`] the worker
//! drives. SDXL encodes with both text encoders (their penultimate hidden states concatenated,
//! the second's pooled projection) and passes the pooled embedding and the size/crop ids to the
//! UNet as diffusers' `StableDiffusionXLPipeline` does.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::checkpoint::{Checkpoint, Companions, TextEncoder2};
use super::clip::ClipTextModel;
use super::folder::build;
use super::noise::{BatchNoise, NoiseFactory, default_noise};
use super::offload::{BlockPlacement, SlotKind};
use super::preview::latents_to_rgb;
use super::schedulers::{Sampler, SchedulerConfig};
use super::spectrogram::SpectrogramParams;
use super::tokenizer::ClipTokenizer;
use super::unet::{AddedCond, Unet};
use super::vae::AutoencoderKl;
use crate::cancel::CancelCheck;
use crate::error::{Error, Result};
use crate::families::holding::{Holding, device_name, holding, ledger_notes, per_device};
use crate::families::{Family, Retuned, RunObserver};
use crate::knobs::{Component, DeviceKind, Knobs, OffloadMode, Precision};
use crate::media::Image;
use crate::nn::Weights;
use crate::request::Request;
use crate::worker::protocol::{Artifact, Preview, Stage};

/// A loaded Stable Diffusion 1.x/2.x or XL model.
pub struct LatentDiffusion {
    /// Where it was loaded from (a component is read again from here when its knobs change).
    path: PathBuf,
    /// A denoiser-only file's companions (empty for a whole model).
    companions: Companions,
    tokenizer: ClipTokenizer,
    /// SDXL's second tokenizer and encoder config, and whether an empty negative prompt is
    /// zeros; `None` for SD 1.x/2.x.
    xl: Option<TextEncoder2>,
    /// The components; `None` only while one is being read again ([`Family::retune`]), so its
    /// old weights are freed before the new ones are read.
    text: Option<ClipTextModel>,
    /// SDXL's second text encoder (with projection), the component `text_2`.
    text_2: Option<ClipTextModel>,
    unet: Option<Unet>,
    vae: Option<AutoencoderKl>,
    scheduler: SchedulerConfig,
    /// The run's device (the UNet's and the latents'; a component may be placed on the CPU).
    device: Device,
    /// How each component is held: text encoder, UNet, VAE, and SDXL's second text encoder.
    held: [Held; 4],
    /// What the checkpoint itself had to say (key mapping, inferred configs).
    source_notes: Vec<String>,
    noise: NoiseFactory,
    /// Layers to skip at the end of the text encoder (diffusers' `clip_skip`); 0 by default.
    pub clip_skip: usize,
    /// Set when the model's images are mel spectrograms (its `model.toml` says `output =
    /// "mel-spectrogram"`): each image is then turned into audio.
    pub spectrogram: Option<SpectrogramParams>,
}

/// How one component is held: where, in which compute dtype, its resident bytes, and what its
/// load had to say (repeated in every run's notes).
#[derive(Clone, Debug)]
struct Held {
    device: Device,
    dtype: DType,
    /// Resident bytes on `device` as the loader counted them.
    bytes: u64,
    /// Bytes held on the CPU for a GPU component (the UNet's split blocks).
    cpu_bytes: u64,
    notes: Vec<String>,
}

impl Default for Held {
    fn default() -> Self {
        Held { device: Device::Cpu, dtype: DType::F32, bytes: 0, cpu_bytes: 0, notes: Vec::new() }
    }
}

/// The candle device for a device knob.
///
/// # Errors
/// A GPU that is absent or whose back end was not compiled in.
pub fn candle_device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda(n) => Device::new_cuda(n as usize).map_err(|e| {
            Error::invalid(format!("device cuda:{n} is not available: {}", e.to_string().lines().next().unwrap_or("")))
        }),
        DeviceKind::Metal => Device::new_metal(0).map_err(|e| {
            Error::invalid(format!("device metal is not available: {}", e.to_string().lines().next().unwrap_or("")))
        }),
    }
}

/// Loads a Stable Diffusion 1.x/2.x model — a diffusers folder (`model_index.json`, `tokenizer/`,
/// `text_encoder/`, `unet/`, `vae/`, `scheduler/`) or a single-file LDM checkpoint — with the knobs
/// that this family honours: device, precision per component (f32/f16/bf16; quantized types store
/// each weight matrix as [`crate::knobs::Precision::for_tensor`] says and compute in f32, the counts
/// going to the run's notes), offload (text encoder and VAE placement, the UNet's `gpu_blocks`
/// split or streamed), `attention_slice` and `vae_tile`.
///
/// # Errors
/// A missing or malformed file or component, named; an unavailable device.
pub fn load(path: &Path, knobs: &Knobs) -> Result<LatentDiffusion> {
    load_checked(path, knobs, &CancelCheck::never())
}

/// [`load`], asking `cancel` before each component and each tensor is read.
///
/// # Errors
/// As [`load`]; [`Error::Cancelled`] once `cancel` says so.
pub fn load_checked(path: &Path, knobs: &Knobs, cancel: &CancelCheck) -> Result<LatentDiffusion> {
    load_with_companions(path, &Companions::default(), knobs, cancel)
}

/// [`load_checked`] of a denoiser-only file (stable-diffusion.cpp's or ComfyUI-GGUF's UNet
/// GGUF) whose text encoder, VAE, tokenizer and scheduler come from `companions`
/// ([`Checkpoint::open_with`]); with none it is [`load_checked`].
///
/// # Errors
/// As [`load_checked`]; companions that do not fit the model, named.
pub fn load_with_companions(path: &Path, companions: &Companions, knobs: &Knobs, cancel: &CancelCheck) -> Result<LatentDiffusion> {
    cancel.stop()?;
    let device = candle_device(knobs.device)?;
    let source = Checkpoint::open_with(path, companions)?;
    let tokenizer = source.tokenizer()?;
    let xl = source.text_2()?;
    check_xl(&source, xl.as_ref())?;
    let knobs = &knobs.for_family(components(xl.is_some()), &path.display().to_string())?;
    let mut model = LatentDiffusion {
        path: path.to_path_buf(),
        companions: companions.clone(),
        tokenizer,
        xl,
        text: None,
        text_2: None,
        unet: None,
        vae: None,
        scheduler: SchedulerConfig::default(),
        device,
        held: Default::default(),
        source_notes: source.notes(),
        noise: default_noise(),
        clip_skip: 0,
        spectrogram: None,
    };
    for c in components(model.xl.is_some()) {
        model.read_component(&source, c.name, knobs, cancel)?;
    }
    model.set_slicing(knobs);
    model.spectrogram = SpectrogramParams::from_manifest(path)?;
    model.scheduler = source.scheduler_config()?;
    Ok(model)
}

/// Refuses a UNet and text encoders that do not fit together, naming the file: SDXL's
/// `text_time` UNet without a second text encoder (or the reverse), a pooled width or a context
/// width that is not what the encoders give.
///
/// # Errors
/// The first mismatch, as one line naming the file.
fn check_xl(source: &Checkpoint, xl: Option<&TextEncoder2>) -> Result<()> {
    let unet = source.unet_config()?;
    let unet_file = source.label(Component::Unet);
    let unet_file = if unet_file.is_dir() { unet_file.join("config.json") } else { unet_file };
    let Some(xl) = xl else {
        if unet.is_text_time() {
            return Err(Error::file(
                source.label(Component::Text).with_file_name("text_encoder_2"),
                "missing: the UNet takes SDXL's conditioning (addition_embed_type = text_time), which needs a second text encoder, text_encoder_2",
            ));
        }
        return Ok(());
    };
    if !unet.is_text_time() {
        return Err(Error::file(
            &unet_file,
            "the folder has a second text encoder (text_encoder_2) but the UNet does not take SDXL's conditioning (addition_embed_type = text_time)",
        ));
    }
    let text = source.text_config()?;
    let width = text.hidden_size + xl.config.hidden_size;
    if unet.cross_attention_dim != width {
        return Err(Error::file(
            &unet_file,
            format!(
                "cross_attention_dim = {} but the two text encoders give {} + {} = {width}",
                unet.cross_attention_dim, text.hidden_size, xl.config.hidden_size
            ),
        ));
    }
    if unet.pooled_width() != Some(xl.config.projection_dim) {
        return Err(Error::file(
            &unet_file,
            format!(
                "projection_class_embeddings_input_dim = {:?} does not take text_encoder_2's pooled {} plus 6 × addition_time_embed_dim = {:?}",
                unet.projection_class_embeddings_input_dim, xl.config.projection_dim, unet.addition_time_embed_dim
            ),
        ));
    }
    Ok(())
}

impl LatentDiffusion {
    /// Reads component `c` (by its knob name, [`components`]) from `source` as `knobs` say (its
    /// precision and placement), freeing the one held before first; records how it is held.
    fn read_component(&mut self, source: &Checkpoint, c: &str, knobs: &Knobs, cancel: &CancelCheck) -> Result<()> {
        cancel.stop()?;
        let i = match c {
            "text" => 0,
            "unet" => 1,
            "vae" => 2,
            "text_2" if self.xl.is_some() => 3,
            _ => return Err(Error::invalid(format!("{}: this model has no component '{c}'", self.path.display()))),
        };
        match i {
            0 => self.text = None,
            1 => self.unet = None,
            2 => self.vae = None,
            _ => self.text_2 = None,
        }
        self.held[i] = Held::default();
        let placeable = components(self.xl.is_some()).iter().any(|s| s.name == c && s.placeable);
        let Holding { device, storage, mut dtype, mut notes } = holding(c, knobs, &self.device, placeable);
        // a GGUF under precision auto: every tensor as the file stores it
        let part: Option<Component> = if c == "text_2" { None } else { c.parse().ok() };
        let stored = match part {
            Some(part) => source.stored_source(part, knobs.precision.get(c)),
            None => source.stored_source_text_2(knobs.precision.get(c)),
        };
        let weights = |vb| {
            let w = match &stored {
                Some(src) => Weights::as_stored(vb, src.clone()),
                None => Weights::stored_as(vb, storage),
            };
            w.with_cancel(cancel.clone())
        };
        let slice = knobs.slicing.attention_slice as usize;
        let (ledger, cpu_bytes) = match i {
            0 => {
                let c = Component::Text;
                let cfg = source.text_config()?;
                let (vb, _) = source.weights(c, dtype, &device)?;
                let w = weights(vb);
                let mut text = build_checked(cancel, &source.label(c), || ClipTextModel::new(&cfg, w.clone()))?;
                text.attention_slice = slice;
                self.text = Some(text);
                (w.ledger(), 0)
            }
            3 => {
                let xl = self.xl.as_ref().expect("text_2 is only read for SDXL");
                let w = weights(source.text_2_weights(dtype, &device)?);
                let mut text_2 = build_checked(cancel, &xl.dir, || ClipTextModel::with_projection(&xl.config, w.clone()))?;
                text_2.attention_slice = slice;
                self.text_2 = Some(text_2);
                (w.ledger(), 0)
            }
            1 => {
                let c = Component::Unet;
                let label = source.label(c);
                let cfg = source.unet_config()?;
                let (vb, _) = source.weights(c, dtype, &device)?;
                let split_on_cpu = device.is_cpu() && knobs.offload.mode == OffloadMode::Split;
                let placement = BlockPlacement {
                    // split on a CPU run would compute on the CPU what already lives there: all resident
                    resident: knobs.offload.gpu_blocks.filter(|_| !split_on_cpu).map_or(usize::MAX, |n| n as usize),
                    mode: knobs.offload.mode,
                    // the CPU has no bf16 matmul: split blocks of a bf16 UNet are held and run in f32
                    cpu_dtype: if dtype == DType::BF16 { DType::F32 } else { dtype },
                };
                let w = weights(vb);
                let unet = build_checked(cancel, &label, || Unet::with_offload(&cfg, w.clone(), &placement))?;
                if let Some(note) = offload_note(knobs, &device, &unet.slots()) {
                    notes.push(note);
                }
                // the ledger counted what stays on the UNet's device; split blocks count their own
                let split = unet.split_bytes();
                self.unet = Some(unet);
                (w.ledger(), split)
            }
            _ => {
                let c = Component::Vae;
                let label = source.label(c);
                let cfg = source.vae_config()?;
                // as diffusers: an autoencoder marked `force_upcast` (SD 1.x/2.x's overflows in
                // f16) decodes in f32 unless the user asked for f16 by name
                if cfg.force_upcast && dtype == DType::F16 && knobs.precision.get("vae") == Precision::Auto {
                    notes.push("vae: the config asks for f32 (force_upcast); precision auto gives f32 here".into());
                    dtype = DType::F32;
                }
                let (vb, _) = source.weights(c, dtype, &device)?;
                let w = weights(vb);
                self.vae = Some(build_checked(cancel, &label, || AutoencoderKl::new(&cfg, w.clone()))?);
                (w.ledger(), 0)
            }
        };
        notes.extend(ledger_notes(c, storage, &ledger));
        if let Some(part) = part {
            notes.extend(source.stored_notes(part, knobs.precision.get(c), &ledger, device.is_cpu()));
        }
        self.held[i] = Held { device, dtype, bytes: ledger.bytes, cpu_bytes, notes };
        Ok(())
    }

    /// Applies the slicing knobs, which change how the next run computes and no weight.
    fn set_slicing(&mut self, knobs: &Knobs) {
        let slice = knobs.slicing.attention_slice as usize;
        for t in [self.text.as_mut(), self.text_2.as_mut()].into_iter().flatten() {
            t.attention_slice = slice;
        }
        if let Some(u) = self.unet.as_mut() {
            u.attention_slice = slice;
        }
        if let Some(v) = self.vae.as_mut() {
            v.attention_slice = slice;
            v.tile = knobs.slicing.vae_tile as usize;
        }
    }

    fn text(&self) -> &ClipTextModel {
        self.text.as_ref().expect("the text encoder is loaded (a failed reload drops the model)")
    }

    fn unet(&self) -> &Unet {
        self.unet.as_ref().expect("the UNet is loaded (a failed reload drops the model)")
    }

    fn vae(&self) -> &AutoencoderKl {
        self.vae.as_ref().expect("the VAE is loaded (a failed reload drops the model)")
    }

    /// Every note of the load: the checkpoint's, then each component's.
    fn all_load_notes(&self) -> Vec<String> {
        self.source_notes.iter().chain(self.held.iter().flat_map(|h| &h.notes)).cloned().collect()
    }
}

/// The components a model of this family has, in the order they are read: SD 1.x/2.x's three,
/// or SDXL's four.
fn components(xl: bool) -> &'static [crate::families::ComponentSpec] {
    if xl { &super::COMPONENTS_XL } else { &super::COMPONENTS }
}

/// What the run notes say about the UNet's blocks: how many are held where, and when a setting
/// changes nothing on this device.
fn offload_note(knobs: &Knobs, device: &Device, slots: &[(String, SlotKind)]) -> Option<String> {
    let n = knobs.offload.gpu_blocks? as usize;
    let count = |k: SlotKind| slots.iter().filter(|s| s.1 == k).count();
    let (resident, split, streamed) = (count(SlotKind::Resident), count(SlotKind::Split), count(SlotKind::Streamed));
    let dev = device_name(device);
    let mut note = format!("unet offload: {resident} of {} blocks resident on {dev}", slots.len());
    if split > 0 {
        note.push_str(&format!(", {split} split (held and computed on the cpu)"));
    }
    if streamed > 0 {
        note.push_str(&format!(", {streamed} streamed from the weight file at each use"));
    }
    if device.is_cpu() && knobs.offload.mode == OffloadMode::Split && n < slots.len() {
        note.push_str("; mode split on a cpu run keeps every block in RAM (the same as resident): use mode=stream to save memory");
    }
    Some(note)
}
impl LatentDiffusion {
    /// Replaces the noise source (tests feed diffusers' exact noise; the engine's torch-compatible
    /// generator plugs in here).
    pub fn set_noise(&mut self, noise: NoiseFactory) {
        self.noise = noise;
    }

    /// What loading had to say (precision fallbacks, offload, broken weights), repeated in every
    /// run's notes.
    pub fn load_notes(&self) -> Vec<String> {
        self.all_load_notes()
    }

    /// The UNet's offloadable blocks in execution order and how each is held.
    pub fn unet_slots(&self) -> Vec<(String, super::offload::SlotKind)> {
        self.unet().slots()
    }

    /// Resident weight bytes per component (text encoders, UNet, VAE) as the loaders counted them.
    pub fn component_weight_bytes(&self) -> [u64; 3] {
        let h = &self.held;
        [h[0].bytes + h[3].bytes, h[1].bytes, h[2].bytes]
    }

    /// The scheduler config read from the folder.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// Encodes a prompt to `(1, 77, D)` embeddings (in the text encoder's dtype); the string is
    /// set when the prompt was cut.
    ///
    /// # Errors
    /// Tokenizer or tensor errors.
    pub fn encode_prompt(&self, text: &str) -> Result<(Tensor, Option<String>)> {
        let tokens = self.tokenizer.encode(text)?;
        let n = tokens.ids.len();
        let ids = Tensor::from_vec(tokens.ids, (1, n), &self.held[0].device)?;
        Ok((self.text().forward(&ids, self.clip_skip)?, tokens.warning))
    }

    /// SDXL: encodes a prompt with both encoders to `(1, 77, D₁ + D₂)` embeddings (each
    /// encoder's penultimate hidden state, concatenated) and the second encoder's pooled
    /// projection `(1, P)`; the string is set when the prompt was cut.
    ///
    /// # Errors
    /// Not an SDXL model; tokenizer or tensor errors.
    pub fn encode_prompt_xl(&self, text: &str) -> Result<(Tensor, Tensor, Option<String>)> {
        let (Some(xl), Some(text_2)) = (&self.xl, &self.text_2) else {
            return Err(Error::invalid("this model has one text encoder (not SDXL)"));
        };
        let tokens = self.tokenizer.encode(text)?;
        let tokens_2 = xl.tokenizer.encode(text)?;
        let ids = Tensor::from_vec(tokens.ids.clone(), (1, tokens.ids.len()), &self.held[0].device)?;
        let ids_2 = Tensor::from_vec(tokens_2.ids.clone(), (1, tokens_2.ids.len()), &self.held[3].device)?;
        let (h1, _) = self.text().forward_xl(&ids, self.clip_skip)?;
        let (h2, pooled) = text_2.forward_xl(&ids_2, self.clip_skip)?;
        let pooled = pooled.ok_or_else(|| Error::invalid("text_encoder_2 has no projection"))?;
        // each encoder computes where it is placed and in its own dtype; they meet in the first's
        let emb = Tensor::cat(&[&h1, &h2.to_device(h1.device())?.to_dtype(h1.dtype())?], 2)?;
        Ok((emb, pooled, tokens.warning.or(tokens_2.warning)))
    }

    /// The text conditioning of a run: the context `(n, 77, D)` for the UNet (`[uncond…,
    /// cond…]` when guided) and, for SDXL, the pooled embeddings `(n, P)` in the same order.
    /// SDXL with an empty negative prompt and `force_zeros_for_empty_prompt` gives zeros for
    /// the unconditional half, as diffusers does when no negative prompt is passed.
    pub(crate) fn conditioning(&self, request: &Request, observer: &mut dyn RunObserver) -> Result<(Tensor, Option<Tensor>)> {
        let batch = request.batch as usize;
        let guided = request.guidance > 1.0;
        let encode = |text: &str| -> Result<(Tensor, Option<Tensor>, Option<String>)> {
            if self.xl.is_some() {
                let (e, p, w) = self.encode_prompt_xl(text)?;
                Ok((e, Some(p), w))
            } else {
                let (e, w) = self.encode_prompt(text)?;
                Ok((e, None, w))
            }
        };
        let (cond, pooled, warning) = encode(&request.prompt)?;
        if let Some(w) = warning {
            observer.note(format!("prompt: {w}"));
        }
        // asked between the two prompts' encodings and after them
        if observer.cancelled() {
            return Err(Error::Cancelled);
        }
        if !guided {
            return Ok((cond.repeat((batch, 1, 1))?, pooled.map(|p| p.repeat((batch, 1))).transpose()?));
        }
        let zeros = self.xl.as_ref().is_some_and(|xl| xl.force_zeros) && request.negative.is_empty();
        let (uncond, uncond_pooled) = if zeros {
            (cond.zeros_like()?, pooled.as_ref().map(Tensor::zeros_like).transpose()?)
        } else {
            let (u, p, warning) = encode(&request.negative)?;
            if let Some(w) = warning {
                observer.note(format!("negative prompt: {w}"));
            }
            (u, p)
        };
        let context = Tensor::cat(&[uncond.repeat((batch, 1, 1))?, cond.repeat((batch, 1, 1))?], 0)?;
        let pooled = match (uncond_pooled, pooled) {
            (Some(u), Some(c)) => Some(Tensor::cat(&[u.repeat((batch, 1))?, c.repeat((batch, 1))?], 0)?),
            _ => None,
        };
        Ok((context, pooled))
    }

    /// The next `(batch, c, h, w)` noise tensor on the UNet's device.
    fn noise_tensor(&self, noise: &mut BatchNoise, shape: (usize, usize, usize)) -> Result<Tensor> {
        let (c, h, w) = shape;
        Ok(Tensor::from_vec(noise.next(c * h * w), (noise.batch(), c, h, w), &self.device)?)
    }

    /// Runs `request` and returns the images as floats `(B, H, W, 3)` in [0, 1] (diffusers'
    /// `output_type="np"`).
    ///
    /// # Errors
    /// Invalid requests, tensor errors, [`Error::Cancelled`] when the observer asks between steps.
    pub fn run(&mut self, request: &Request, observer: &mut dyn RunObserver) -> Result<Tensor> {
        request.validate()?;
        let f = self.vae().config.scale_factor() as u32;
        for (name, v) in [("width", request.width), ("height", request.height)] {
            if v % f != 0 {
                return Err(Error::invalid(format!("{name} = {v}: this model needs a multiple of {f}")));
            }
        }
        for n in self.all_load_notes() {
            observer.note(n);
        }
        let batch = request.batch as usize;
        let guided = request.guidance > 1.0;

        observer.stage(Stage::Text)?;
        let (context, pooled) = self.conditioning(request, observer)?;
        // latents and sampler arithmetic stay f32 (as diffusers upcasts in its schedulers); each
        // component computes in its own dtype
        let unet_dtype = self.held[1].dtype;
        let context = context.to_device(&self.device)?.to_dtype(unet_dtype)?;
        // SDXL's size/crop ids: original size, crop top-left (0, 0), target size, each (h, w)
        let added = match pooled {
            Some(p) => {
                let n = p.dim(0)?;
                let (h, w) = (request.height as f32, request.width as f32);
                let ids = [h, w, 0.0, 0.0, h, w].repeat(n);
                let time_ids = Tensor::from_vec(ids, (n, 6), &self.device)?.to_dtype(unet_dtype)?;
                Some((p.to_device(&self.device)?.to_dtype(unet_dtype)?, time_ids))
            }
            None => None,
        };
        if observer.cancelled() {
            return Err(Error::Cancelled);
        }

        observer.stage(Stage::Denoise)?;
        let steps = request.steps as usize;
        let mut sampler =
            Sampler::new(request.scheduler, &self.scheduler, steps, request.karras).map_err(Error::invalid)?;
        for n in std::mem::take(&mut sampler.notes) {
            observer.note(n);
        }
        let shape = (self.unet().config.in_channels, (request.height / f) as usize, (request.width / f) as usize);
        let mut noise = BatchNoise::new(&self.noise, request.seed, batch, request.noise);
        let mut latents = (self.noise_tensor(&mut noise, shape)? * sampler.init_noise_sigma())?;
        let timesteps = sampler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            if observer.cancelled() {
                return Err(Error::Cancelled);
            }
            let x = sampler.scale_model_input(&latents, i)?;
            let x = if guided { Tensor::cat(&[&x, &x], 0)? } else { x };
            // asked before each resnet, so a cancel ends a long CPU step within one of them
            let x = x.to_dtype(self.held[1].dtype)?;
            let added = added.as_ref().map(|(text_embeds, time_ids)| AddedCond { text_embeds, time_ids });
            let out = checked(&*observer, |check| self.unet().forward_added(&x, t, &context, added.as_ref(), check))?
                .to_dtype(DType::F32)?;
            let out = if guided {
                let u = out.narrow(0, 0, batch)?;
                let c = out.narrow(0, batch, batch)?;
                (&u + ((c - &u)? * request.guidance as f64)?)?
            } else {
                out
            };
            let step_noise = if sampler.needs_noise() { Some(self.noise_tensor(&mut noise, shape)?) } else { None };
            latents = sampler.step(&out, i, &latents, step_noise.as_ref())?;
            observer.progress(i as u32 + 1, steps as u32);
            observer.preview(Preview::Image(latents_to_rgb(&latents)?));
        }
        if observer.cancelled() {
            return Err(Error::Cancelled);
        }

        observer.stage(Stage::Decode)?;
        let mut images = Vec::with_capacity(batch);
        for b in 0..batch {
            let z = latents.narrow(0, b, 1)?.to_device(&self.held[2].device)?.to_dtype(self.held[2].dtype)?;
            // checked before each up block (tiled: each of its layers), so a cancel ends the
            // decode within one of them
            let img = checked(&*observer, |check| self.vae().decode_scaled_checked(&z, &mut || check()))?;
            let img = img.to_dtype(DType::F32)?;
            images.push(((img / 2.0)? + 0.5)?.clamp(0f32, 1f32)?);
            observer.progress(b as u32 + 1, batch as u32);
        }
        Ok(Tensor::cat(&images, 0)?.permute((0, 2, 3, 1))?.to_dtype(DType::F32)?)
    }
}

/// [`build`]: a component's constructor, whose error is [`Error::Cancelled`] when `cancel` says so
/// (the weights stop at the next tensor once cancelled).
///
/// # Errors
/// As [`build`], or [`Error::Cancelled`].
fn build_checked<T>(cancel: &CancelCheck, label: &Path, f: impl FnOnce() -> candle_core::Result<T>) -> Result<T> {
    build(label, f).map_err(|e| if cancel.is_cancelled() { Error::Cancelled } else { e })
}

/// Runs `f` with a check that fails once `observer` is cancelled; that failure comes back as
/// [`Error::Cancelled`], any other as itself.
///
/// # Errors
/// [`Error::Cancelled`], or `f`'s error.
fn checked<T>(
    observer: &dyn RunObserver,
    f: impl FnOnce(&dyn Fn() -> candle_core::Result<()>) -> candle_core::Result<T>,
) -> Result<T> {
    let hit = std::cell::Cell::new(false);
    let out = f(&|| {
        if observer.cancelled() {
            hit.set(true);
            candle_core::bail!("cancelled");
        }
        Ok(())
    });
    match out {
        Err(_) if hit.get() => Err(Error::Cancelled),
        r => Ok(r?),
    }
}

/// Float images `(B, H, W, 3)` in [0, 1] → 8-bit images, rounding as diffusers' `numpy_to_pil`.
///
/// # Errors
/// Tensor errors.
pub fn to_images(x: &Tensor) -> Result<Vec<Image>> {
    let (b, h, w, _) = x.dims4()?;
    let bytes = (x * 255.0)?.round()?.clamp(0f32, 255f32)?;
    (0..b)
        .map(|i| {
            let rgb = bytes.get(i)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|v| v as u8).collect();
            Ok(Image { width: w as u32, height: h as u32, rgb })
        })
        .collect()
}

/// The image request for an audio run: `n_mels` rows and as many frames as `seconds` asks (the
/// model's native length when it is not set), a whole number of autoencoder cells; the request's
/// own width and height are not used (a note says so when they differ).
fn audio_request(p: &SpectrogramParams, request: &Request, cell: usize, observer: &mut dyn RunObserver) -> Result<Request> {
    let mut r = request.clone();
    let frames = match request.seconds {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err(Error::invalid(format!("seconds = {s}: the length must be a positive number")));
        }
        Some(s) => {
            let most = crate::request::MAX_SIDE as usize / cell * cell;
            let most_secs = (most * p.hop) as f64 / p.sample_rate.max(1) as f64;
            match p.frames_for_secs(s, cell) {
                Some(f) if f <= most => f,
                _ => {
                    return Err(Error::invalid(format!(
                        "seconds = {s}: at most {most_secs:.2} s for this model ({most} spectrogram frames in one run)"
                    )));
                }
            }
        }
        None => p.frames,
    };
    r.width = frames as u32;
    r.height = p.n_mels as u32;
    if !p.n_mels.is_multiple_of(cell) {
        return Err(Error::invalid(format!("model.toml: n_mels = {} is not a multiple of the autoencoder's {cell}", p.n_mels)));
    }
    let made = (frames * p.hop) as f32 / p.sample_rate as f32;
    if let Some(s) = request.seconds.filter(|s| (s - made).abs() > 0.0005) {
        observer.note(format!("seconds = {s}: made {made:.3} s ({frames} frames, a multiple of {cell})"));
    }
    if (request.width, request.height) != (r.width, r.height) {
        observer.note(format!(
            "audio model: spectrogram {}×{} from seconds; the requested size {}×{} is not used",
            r.width, r.height, request.width, request.height
        ));
    }
    Ok(r)
}

/// Min/max pairs over `n` equal slices of a clip (the waveform preview).
fn envelope(samples: &[f32], n: usize) -> Vec<(f32, f32)> {
    let per = samples.len().div_ceil(n.max(1)).max(1);
    samples
        .chunks(per)
        .map(|c| c.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s))))
        .collect()
}

impl Family for LatentDiffusion {
    fn name(&self) -> &str {
        "latent-diffusion"
    }

    fn fields(&self) -> Vec<crate::families::FieldSpec> {
        if self.spectrogram.is_some() { super::AUDIO_FIELDS.to_vec() } else { super::IMAGE_FIELDS.to_vec() }
    }

    fn components(&self) -> Vec<crate::families::ComponentSpec> {
        components(self.xl.is_some()).to_vec()
    }

    fn weight_bytes(&self) -> Vec<(String, u64)> {
        // split blocks count on the CPU, after the device that holds the rest of their component
        let cpu = Device::Cpu;
        let split = |h: &Held| (h.cpu_bytes > 0).then_some((&cpu, h.cpu_bytes));
        per_device(self.held.iter().flat_map(|h| std::iter::once((&h.device, h.bytes)).chain(split(h))))
    }

    fn retune(&mut self, loaded_with: &Knobs, knobs: &Knobs, cancel: &CancelCheck) -> Result<Retuned> {
        let components = components(self.xl.is_some());
        let knobs = &knobs.for_family(components, &self.path.display().to_string())?;
        let Some(mut changed) = loaded_with.components_to_reread(knobs, components) else {
            return Ok(Retuned::No);
        };
        // a GGUF under auto holds its tensors as stored, which no explicit precision does
        changed.extend(super::checkpoint::as_stored_changes(&self.path, components, loaded_with, knobs, &changed));
        if !changed.is_empty() {
            let source = Checkpoint::open_with(&self.path, &self.companions)?;
            for c in &changed {
                self.read_component(&source, c, knobs, cancel)?;
            }
        }
        self.set_slicing(knobs);
        Ok(Retuned::Read(changed.iter().map(|c| c.to_string()).collect()))
    }

    fn generate(&mut self, request: &Request, observer: &mut dyn RunObserver) -> Result<Vec<Artifact>> {
        let Some(params) = self.spectrogram.clone() else {
            if request.seconds.is_some() {
                observer.note("seconds: this model makes images; the length is ignored".into());
            }
            let floats = self.run(request, observer)?;
            return Ok(to_images(&floats)?.into_iter().map(Artifact::Image).collect());
        };
        let request = audio_request(&params, request, self.vae().config.scale_factor(), observer)?;
        let images = to_images(&self.run(&request, observer)?)?;
        // still the decode stage: spectrogram images to sound
        let mut out = Vec::with_capacity(images.len());
        for (i, img) in images.iter().enumerate() {
            if observer.cancelled() {
                return Err(Error::Cancelled);
            }
            let audio = params.audio_from_image_checked(img, &|| observer.cancelled())?;
            observer.preview(Preview::Waveform(envelope(&audio.samples, 512)));
            observer.progress(i as u32 + 1, images.len() as u32);
            out.push(Artifact::Audio(audio));
        }
        Ok(out)
    }
}
