//! Latent diffusion: Stable Diffusion 1.x, 2.x and XL (SDXL base from diffusers folders: two text
//! encoders, the UNet's `text_time` conditioning). One file per module: [`tokenizer`] (CLIP BPE),
//! [`clip`] (text encoders), [`blocks`] and [`unet`] (denoiser, its blocks placed by [`offload`]), [`vae`] and [`vae_tiling`] (autoencoder),
//! [`schedulers`] (DDIM, Euler, Euler ancestral, DPM++ 2M), [`noise`] (a batch's noise, drawn for
//! the whole batch or per image), [`preview`] (latents → RGB) and
//! [`pipeline`] (prompt → image, the [`crate::families::Family`] implementation), [`spectrogram`]
//! (images ↔ audio for mel-spectrogram models such as Riffusion). [`checkpoint`] opens what a
//! model is loaded from: a diffusers folder ([`folder`]) or a single-file LDM checkpoint
//! ([`single_file`], with the key map and inferred configs in [`ldm_keys`]); [`config_check`]
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
mod sdxl_tests;

pub use pipeline::{LatentDiffusion, load, load_checked};

use crate::families::{ComponentSpec, FamilyEntry, Recognition};
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
/// (the load then names the keys or files it misses). SDXL surely from a diffusers folder (its
/// single files are not run yet). Language models and other formats are not run by this family.
fn recognise(insp: &Inspection) -> Option<Recognition> {
    let single = matches!(insp.format, Format::Safetensors | Format::Ckpt) && insp.path.is_file();
    let layout = match insp.format {
        Format::Diffusers => "a diffusers folder",
        _ if single => "a single-file checkpoint",
        _ => return None,
    };
    let (confidence, reason) = match insp.family.id.as_str() {
        "sd1" | "sd2" => (1.0, format!("{layout} of {}: {}", insp.family.label, insp.family.reason)),
        "sdxl" if insp.format == Format::Diffusers => {
            (1.0, format!("{layout} of {}: {}", insp.family.label, insp.family.reason))
        }
        "unknown" => (0.3, format!("{layout} whose family cannot be told ({}); tried as Stable Diffusion 1.x/2.x", insp.family.reason)),
        _ => return None,
    };
    let components = if insp.family.id == "sdxl" { COMPONENTS_XL.to_vec() } else { COMPONENTS.to_vec() };
    Some(Recognition { family: ENTRY.name, confidence, reason, components })
}
