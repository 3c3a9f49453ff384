//! Latent diffusion: Stable Diffusion 1.x and 2.x. One file per module: [`tokenizer`] (CLIP BPE),
//! [`clip`] (text encoder), [`blocks`] and [`unet`] (denoiser), [`vae`] and [`vae_tiling`] (autoencoder),
//! [`schedulers`] (DDIM, Euler, Euler ancestral, DPM++ 2M), [`preview`] (latents → RGB) and
//! [`pipeline`] (prompt → image, the [`crate::families::Family`] implementation), [`spectrogram`]
//! (images ↔ audio for mel-spectrogram models such as Riffusion), with [`folder`] reading a
//! diffusers folder's configs and weights.

pub mod blocks;
pub mod clip;
pub mod folder;
pub mod pipeline;
pub mod preview;
pub mod schedulers;
pub mod spectrogram;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vae_tiling;

#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod pipeline_tests;

pub use pipeline::{LatentDiffusion, load};
