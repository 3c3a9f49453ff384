//! Parity with diffusers/transformers on the tiny fixtures made by `tools/make_sd_fixtures.py`:
//! each component against the reference tensors saved beside it.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::clip::{ClipConfig, ClipTextModel};
use super::folder::{read_config, var_builder};
use super::unet::{Unet, UnetConfig};
use super::vae::{AutoencoderKl, VaeConfig};
use crate::nn::Weights;

/// The fixture folder `tests/fixtures/sd/<name>`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd").join(name)
}

/// The reference tensors of a fixture.
pub(crate) fn refs(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("refs.safetensors"), &Device::Cpu).unwrap()
}

/// Largest absolute difference between two tensors of the same shape.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn text_model(name: &str) -> ClipTextModel {
    let dir = fixture(name).join("text_encoder");
    let cfg: ClipConfig = read_config(&dir).unwrap();
    let (vb, _) = var_builder(&dir, DType::F32, &Device::Cpu).unwrap();
    ClipTextModel::new(&cfg, Weights::new(vb)).unwrap()
}

fn unet(name: &str) -> Unet {
    let dir = fixture(name).join("unet");
    let cfg: UnetConfig = read_config(&dir).unwrap();
    let (vb, _) = var_builder(&dir, DType::F32, &Device::Cpu).unwrap();
    Unet::new(&cfg, Weights::new(vb)).unwrap()
}

fn vae(name: &str) -> AutoencoderKl {
    let dir = fixture(name).join("vae");
    let cfg: VaeConfig = read_config(&dir).unwrap();
    let (vb, _) = var_builder(&dir, DType::F32, &Device::Cpu).unwrap();
    AutoencoderKl::new(&cfg, Weights::new(vb)).unwrap()
}

/// Text embeddings match transformers' CLIPTextModel within 1e-4 (quick_gelu SD1, gelu SD2), and
/// clip_skip 1 matches diffusers' penultimate-layer embeddings.
#[test]
fn text_encoder_matches_transformers() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let r = refs(name);
        let mut m = text_model(name);
        for (ids, emb) in [("ids_prompt", "emb_prompt"), ("ids_negative", "emb_negative")] {
            let out = m.forward(&r[ids], 0).unwrap();
            let d = max_diff(&out, &r[emb]);
            assert!(d <= 1e-4, "{name} {emb}: {d}");
        }
        let d = max_diff(&m.forward(&r["ids_prompt"], 1).unwrap(), &r["emb_prompt_skip1"]);
        assert!(d <= 1e-4, "{name} clip skip: {d}");
        m.attention_slice = 5;
        let d = max_diff(&m.forward(&r["ids_prompt"], 0).unwrap(), &r["emb_prompt"]);
        assert!(d <= 1e-4, "{name} sliced: {d}");
    }
}

/// One UNet forward (batch 2, t = 500) matches diffusers within 1e-3, and attention slicing
/// changes it by at most 1e-5.
#[test]
fn unet_matches_diffusers() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let r = refs(name);
        let mut u = unet(name);
        let ctx = Tensor::cat(&[&r["emb_negative"], &r["emb_prompt"]], 0).unwrap();
        let out = u.forward(&r["unet_in"], 500.0, &ctx).unwrap();
        let d = max_diff(&out, &r["unet_out"]);
        assert!(d <= 1e-3, "{name}: {d}");
        u.attention_slice = 7;
        let sliced = u.forward(&r["unet_in"], 500.0, &ctx).unwrap();
        let d = max_diff(&out, &sliced);
        assert!(d <= 1e-5, "{name} sliced vs full: {d}");
    }
}

/// VAE decode and encode (mean) match diffusers within 1e-3; slicing changes decode ≤ 1e-5.
#[test]
fn vae_matches_diffusers() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let r = refs(name);
        let mut v = vae(name);
        let out = v.decode_scaled(&r["vae_in"]).unwrap();
        let d = max_diff(&out, &r["vae_out"]);
        assert!(d <= 1e-3, "{name} decode: {d}");
        let d = max_diff(&v.encode_mean(&r["vae_enc_in"]).unwrap(), &r["vae_enc_mean"]);
        assert!(d <= 1e-3, "{name} encode: {d}");
        v.attention_slice = 10;
        let d = max_diff(&v.decode_scaled(&r["vae_in"]).unwrap(), &out);
        assert!(d <= 1e-5, "{name} sliced decode: {d}");
    }
}

/// Tiled decoding (8-latent-pixel tiles, so 3×3 tiles with blending) matches diffusers'
/// tiled_decode within 1e-3, and differs from the whole decode (the tiles really are used).
#[test]
fn vae_tiled_decode_matches_diffusers() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let r = refs(name);
        let mut v = vae(name);
        v.tile = 8;
        let out = v.decode_scaled(&r["vae_in"]).unwrap();
        let d = max_diff(&out, &r["vae_tiled_out"]);
        assert!(d <= 1e-3, "{name} tiled: {d}");
        assert!(max_diff(&out, &r["vae_out"]) > 1e-3);
        v.tile = 16; // one tile covers everything: the plain decode
        assert!(max_diff(&v.decode_scaled(&r["vae_in"]).unwrap(), &r["vae_out"]) <= 1e-3);
    }
}
