//! Latent diffusion: Stable Diffusion 1.x, 2.x and XL (SDXL base from diffusers folders and
//! single files: two text encoders, the UNet's `text_time` conditioning). One file per module: [`tokenizer`] (CLIP BPE),
//! [`clip`] (text encoders), [`blocks`] and [`unet`] (denoiser, its blocks placed by [`offload`]), [`vae`] and [`vae_tiling`] (autoencoder),
//! [`schedulers`] (DDIM, Euler, Euler ancestral, DPM++ 2M), [`noise`] (a batch's noise, drawn for
//! the whole batch or per image), [`preview`] (latents → RGB) and
//! [`pipeline`] (prompt → image, the [`crate::families::Family`] implementation), [`spectrogram`]
//! (images ↔ audio for mel-spectrogram models such as Riffusion). [`checkpoint`] opens what a
//! model is loaded from: a diffusers folder ([`folder`]) or a single-file LDM checkpoint
//! ([`single_file`], with the key map and inferred configs in [`ldm_keys`], SDXL's among them); [`config_check`]
//! refuses configs the model code cannot be built from, naming the field.

pub mod blocks;
pub mod checkpoint;
pub mod clip;
pub mod config_check;
pub mod folder;
pub mod ldm_keys;
pub mod noise;
pub mod offload;
pub mod pipeline;
pub mod preview;
pub mod schedulers;
pub mod single_file;
pub mod spectrogram;
pub mod synthetic;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vae_tiling;

#[cfg(test)]
mod gguf_tests;
#[cfg(test)]
mod ldm_tests;
#[cfg(test)]
mod offload_tests;
#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod pipeline_tests;
#[cfg(test)]
mod quant_tests;
#[cfg(test)]
mod sdxl_single_tests;
#[cfg(test)]
mod sdxl_tests;

pub use checkpoint::Companions;
pub use pipeline::{LatentDiffusion, load, load_checked, load_with_companions};

use crate::families::{ComponentSpec, FamilyEntry, FieldKind, FieldSpec, Recognition};
use crate::formats::{Format, Inspection};

/// This family in the registry ([`crate::families::FAMILIES`]).
pub const ENTRY: FamilyEntry = FamilyEntry {
    name: "latent-diffusion",
    recognise,
    load: |path, knobs, cancel| Ok(Box::new(load_checked(path, knobs, cancel)?)),
};

/// The components of Stable Diffusion 1.x/2.x, in pipeline order: their names keep the meaning
/// knob keys (`precision.unet=q4k`) and profiles have always given them.
pub const COMPONENTS: [ComponentSpec; 3] = [
    ComponentSpec { name: "text", aliases: &["text_encoder", "clip"], label: "Text encoder", placeable: true, units: None },
    ComponentSpec { name: "unet", aliases: &["denoiser"], label: "UNet", placeable: false, units: Some("blocks") },
    ComponentSpec { name: "vae", aliases: &["autoencoder"], label: "VAE", placeable: true, units: None },
];

/// What an image model of this family takes besides the prompt, seed and batch.
pub const IMAGE_FIELDS: [FieldSpec; 7] = [
    FieldSpec { key: "negative", label: "Negative prompt", kind: FieldKind::Text { rows: 2 }, help: "what to avoid" },
    FieldSpec { key: "steps", label: "Steps", kind: FieldKind::Int { min: 1, max: 150, step: 1 }, help: "" },
    FieldSpec { key: "guidance", label: "Guidance", kind: FieldKind::Float { min: 0.0, max: 20.0, step: 0.5, unit: "" }, help: "classifier-free guidance; 1 or less turns it off" },
    FieldSpec { key: "scheduler", label: "Scheduler", kind: FieldKind::Choice(&["ddim", "euler", "euler_a", "dpmpp_2m"]), help: "" },
    FieldSpec { key: "karras", label: "Karras", kind: FieldKind::Flag, help: "the Karras sigma schedule (Euler, Euler a, DPM++ 2M)" },
    FieldSpec { key: "width", label: "Width", kind: FieldKind::Int { min: 8, max: 4096, step: 8 }, help: "a multiple of 8" },
    FieldSpec { key: "height", label: "Height", kind: FieldKind::Int { min: 8, max: 4096, step: 8 }, help: "a multiple of 8" },
];

/// What a spectrogram (audio) model of this family takes: the length instead of the size.
pub const AUDIO_FIELDS: [FieldSpec; 6] = [
    IMAGE_FIELDS[0],
    IMAGE_FIELDS[1],
    IMAGE_FIELDS[2],
    IMAGE_FIELDS[3],
    IMAGE_FIELDS[4],
    FieldSpec { key: "seconds", label: "Seconds", kind: FieldKind::Float { min: 0.0, max: 60.0, step: 0.1, unit: " s" }, help: "0 means the model's native length" },
];

/// SDXL's components: the two text encoders apart (`text` is CLIP ViT-L, `text_2` OpenCLIP
/// ViT-bigG with its projection), then the UNet and the VAE.
pub const COMPONENTS_XL: [ComponentSpec; 4] = [
    COMPONENTS[0],
    ComponentSpec { name: "text_2", aliases: &["text_encoder_2", "clip_g"], label: "Text encoder 2", placeable: true, units: None },
    COMPONENTS[1],
    COMPONENTS[2],
];

/// Stable Diffusion 1.x/2.x by the inspection's family guess: surely when the headers say so; a
/// diffusers folder or single checkpoint file whose family cannot be told is tried, less surely
/// (the load then names the keys or files it misses). SDXL base surely from a diffusers folder or
/// a single file in the original layout (`conditioner.embedders.*`) or stable-diffusion.cpp's GGUF of one.
/// Language models and other formats are not run by this family.
fn recognise(insp: &Inspection) -> Option<Recognition> {
    if insp.format == Format::Gguf {
        return recognise_gguf(insp);
    }
    let single = matches!(insp.format, Format::Safetensors | Format::Ckpt) && insp.path.is_file();
    let layout = match insp.format {
        Format::Diffusers => "a diffusers folder",
        _ if single => "a single-file checkpoint",
        _ => return None,
    };
    let (confidence, reason) = match insp.family.id.as_str() {
        "sd1" | "sd2" => (1.0, format!("{layout} of {}: {}", insp.family.label, insp.family.reason)),
        "sdxl" => {
            (1.0, format!("{layout} of {}: {}", insp.family.label, insp.family.reason))
        }
        "unknown" => (0.3, format!("{layout} whose family cannot be told ({}); tried as Stable Diffusion 1.x/2.x", insp.family.reason)),
        _ => return None,
    };
    let components = if insp.family.id == "sdxl" { COMPONENTS_XL.to_vec() } else { COMPONENTS.to_vec() };
    Some(Recognition { family: ENTRY.name, confidence, reason, components, fields: fields(insp) })
}

/// The request fields of the inspected model: a length for a spectrogram model (its manifest
/// says so), a size for an image model.
fn fields(insp: &Inspection) -> Vec<FieldSpec> {
    let audio = spectrogram::SpectrogramParams::from_manifest(&insp.path).ok().flatten().is_some();
    if audio { AUDIO_FIELDS.to_vec() } else { IMAGE_FIELDS.to_vec() }
}

/// A stable-diffusion.cpp GGUF: the original LDM names (denoiser, autoencoder and an SD 1.x/2.x
/// text tower, or SDXL's two) in tensors of types this build runs. Such files carry no metadata,
/// so the names are the evidence.
fn recognise_gguf(insp: &Inspection) -> Option<Recognition> {
    if !matches!(insp.family.id.as_str(), "sd1" | "sd2" | "sdxl") || gguf_problem(insp).is_some() || !insp.path.is_file() {
        return None;
    }
    Some(Recognition {
        family: ENTRY.name,
        confidence: 1.0,
        reason: format!("a stable-diffusion.cpp GGUF of {}: {}", insp.family.label, insp.family.reason),
        components: if insp.family.id == "sdxl" { COMPONENTS_XL.to_vec() } else { COMPONENTS.to_vec() },
        fields: fields(insp),
    })
}

/// Why this family cannot run a GGUF, as one line: names in no layout it knows (a few named), or
/// a tensor of a type it cannot run; `None` when it can.
pub fn gguf_problem(insp: &Inspection) -> Option<String> {
    let shapes: ldm_keys::Shapes = insp.tensors().map(|t| (t.name.clone(), t.shape.clone())).collect();
    if let Some(keys) = ldm_keys::denoiser_keys(&shapes) {
        return Some(single_file::denoiser_only_message(keys.len()));
    }
    if !ldm_keys::is_ldm(&shapes) || ldm_keys::text_tower(&shapes).is_none() {
        let some: Vec<&str> = shapes.keys().take(3).map(String::as_str).collect();
        return Some(format!(
            "its tensor names match no Stable Diffusion layout this build runs (stable-diffusion.cpp's \
             '{}*', '{}*', 'cond_stage_model.*' or SDXL's 'conditioner.embedders.*'); first keys: {}",
            ldm_keys::UNET_PREFIX,
            ldm_keys::VAE_PREFIX,
            if some.is_empty() { "none".to_string() } else { some.join(", ") }
        ));
    }
    let mut bad: Vec<_> = insp.tensors().filter(|t| !crate::nn::mapped_gguf::runnable_type_name(&t.dtype)).collect();
    bad.sort_by(|a, b| a.name.cmp(&b.name));
    let first = bad.first()?;
    let more = if bad.len() > 1 { format!(" ({} more tensors too)", bad.len() - 1) } else { String::new() };
    Some(format!(
        "tensor '{}' is stored as {}, a GGML type this build cannot run{more}; it runs {}",
        first.name,
        first.dtype,
        crate::nn::mapped_gguf::RUNNABLE_TYPES
    ))
}
