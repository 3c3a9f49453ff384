//! Latent diffusion: Stable Diffusion 1.x and 2.x. One file per module: [`tokenizer`] (CLIP BPE),
//! [`clip`] (text encoder), [`blocks`] and [`unet`] (denoiser, its blocks placed by [`offload`]), [`vae`] and [`vae_tiling`] (autoencoder),
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

pub use pipeline::{LatentDiffusion, load, load_checked};
