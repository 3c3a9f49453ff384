//! SDXL base parity with diffusers' `StableDiffusionXLPipeline` on the tiny fixture made by
//! `tools/make_sdxl_fixtures.py`: both tokenizers (vocabulary files and `tokenizer.json`), both
//! text encoders and the pooled projection, the zeroed empty negative prompt, one UNet forward
//! with the `text_time` conditioning, and whole seeded runs (the engine's torch-compatible
//! noise); then the knobs (q8_0, offloaded blocks, slicing and tiling) against f32, and a folder
//! missing its second text encoder.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::folder::{read_config, var_builder};
use super::offload::{BlockPlacement, SlotKind};
use super::parity_tests::max_diff;
use super::pipeline::{LatentDiffusion, load, to_images};
use super::tokenizer::ClipTokenizer;
use super::unet::{AddedCond, Unet, UnetConfig};
use crate::compare::psnr_db;
use crate::families::Family;
use crate::knobs::{Component, Knobs, OffloadMode, Precision, PrecisionKnobs};
use crate::nn::Weights;
use crate::request::{Request, Scheduler};

/// `tests/fixtures/sdxl/tiny-sdxl`.
pub(crate) fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sdxl/tiny-sdxl")
}

fn refs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("refs.safetensors"), &Device::Cpu).unwrap()
}

fn prompts() -> serde_json::Value {
    super::folder::read_json(&fixture().join("refs.json")).unwrap()
}

use crate::families::testing::Notes;

/// The fixture's request: the prompt, no negative prompt, seed 42, 4 steps, guidance 5, 64×64.
fn request(scheduler: Scheduler) -> Request {
    let p = prompts();
    Request {
        prompt: p["prompt"].as_str().unwrap().into(),
        negative: String::new(),
        seed: 42,
        steps: 4,
        guidance: 5.0,
        width: 64,
        height: 64,
        scheduler,
        ..Request::default()
    }
}

fn ids(r: &HashMap<String, Tensor>, key: &str) -> Vec<u32> {
    r[key].flatten_all().unwrap().to_vec1::<i64>().unwrap().iter().map(|&x| x as u32).collect()
}

/// Both tokenizers give transformers' ids: `tokenizer/` from vocab.json + merges.txt padded with
/// the end token, `tokenizer_2/` from tokenizer.json alone padded with "!" (its
/// tokenizer_config.json's pad token).
#[test]
fn tokenizers_match_transformers() {
    let r = refs();
    let p = prompts();
    let one = ClipTokenizer::from_dir(&fixture().join("tokenizer")).unwrap();
    let two = ClipTokenizer::from_dir(&fixture().join("tokenizer_2")).unwrap();
    for (key, text) in [("prompt", p["prompt"].as_str().unwrap()), ("negative", p["negative"].as_str().unwrap()), ("empty", "")] {
        assert_eq!(one.encode(text).unwrap().ids, ids(&r, &format!("ids_{key}")), "tokenizer {key}");
        assert_eq!(two.encode(text).unwrap().ids, ids(&r, &format!("ids_2_{key}")), "tokenizer_2 {key}");
    }
    // the pads differ, so a swapped tokenizer cannot pass
    assert_ne!(ids(&r, "ids_empty"), ids(&r, "ids_2_empty"));
}

/// `encode_prompt` as diffusers: each encoder's penultimate hidden state (within 1e-4), their
/// concatenation and the second encoder's pooled projection for the prompt and a negative
/// prompt; with no negative prompt the unconditional half is zeros, as
/// `force_zeros_for_empty_prompt` asks.
#[test]
fn embeddings_match_diffusers() {
    let r = refs();
    let p = prompts();
    let model = load(&fixture(), &Knobs::default()).unwrap();
    let (emb, pooled, warning) = model.encode_prompt_xl(p["prompt"].as_str().unwrap()).unwrap();
    assert!(warning.is_none());
    for (got, key) in [
        (emb.narrow(2, 0, 32).unwrap(), "emb_prompt_1"),
        (emb.narrow(2, 32, 48).unwrap(), "emb_prompt_2"),
        (emb.clone(), "emb_prompt"),
        (pooled, "pooled_prompt"),
    ] {
        let d = max_diff(&got, &r[key]);
        println!("{key}: max diff {d:.2e}");
        assert!(d <= 1e-4, "{key}: {d}");
    }
    let (neg, neg_pooled, _) = model.encode_prompt_xl(p["negative"].as_str().unwrap()).unwrap();
    assert!(max_diff(&neg, &r["emb_negative"]) <= 1e-4);
    assert!(max_diff(&neg_pooled, &r["pooled_negative"]) <= 1e-4);

    let mut obs = Notes::default();
    let (ctx, pooled) = model.conditioning(&request(Scheduler::Euler), &mut obs).unwrap();
    let pooled = pooled.unwrap();
    assert_eq!(max_diff(&ctx.get(0).unwrap().unsqueeze(0).unwrap(), &r["emb_no_negative"]), 0.0);
    assert_eq!(max_diff(&pooled.get(0).unwrap().unsqueeze(0).unwrap(), &r["pooled_no_negative"]), 0.0);
    assert!(max_diff(&ctx.get(1).unwrap().unsqueeze(0).unwrap(), &r["emb_prompt"]) <= 1e-4);
    // the zeros are the empty prompt's, not an encoding of ""
    let (empty, _, _) = model.encode_prompt_xl("").unwrap();
    assert!(max_diff(&empty, &r["emb_no_negative"]) > 1e-2);
}

fn unet(placement: &BlockPlacement) -> Unet {
    let dir = fixture().join("unet");
    let cfg: UnetConfig = read_config(&dir).unwrap();
    let (vb, _) = var_builder(&dir, DType::F32, &Device::Cpu).unwrap();
    Unet::with_offload(&cfg, Weights::new(vb), placement).unwrap()
}

/// One UNet forward (batch 2, t = 500, the negative and prompt embeddings, pooled embeddings
/// and size ids) matches diffusers within 1e-3; attention slicing changes it by ≤ 1e-5; every
/// offloaded placement of its 7 blocks (the first without attention, the middle level two
/// transformer layers deep) gives the same output; without the pooled embeddings it refuses.
#[test]
fn unet_matches_diffusers() {
    let r = refs();
    let ctx = Tensor::cat(&[&r["emb_negative"], &r["emb_prompt"]], 0).unwrap();
    let added = AddedCond { text_embeds: &r["unet_text_embeds"], time_ids: &r["unet_time_ids"] };
    let mut u = unet(&BlockPlacement::resident());
    let out = u.forward_added(&r["unet_in"], 500.0, &ctx, Some(&added), &|| Ok(())).unwrap();
    let d = max_diff(&out, &r["unet_out"]);
    println!("unet: max diff {d:.2e}");
    assert!(d <= 1e-3, "{d}");
    u.attention_slice = 7;
    let sliced = u.forward_added(&r["unet_in"], 500.0, &ctx, Some(&added), &|| Ok(())).unwrap();
    assert!(max_diff(&out, &sliced) <= 1e-5);
    let e = u.forward(&r["unet_in"], 500.0, &ctx).unwrap_err().to_string();
    assert!(e.contains("text_time"), "{e}");

    assert_eq!(u.slots().len(), 7, "3 down, mid, 3 up");
    for (n, mode) in [(2, OffloadMode::Split), (0, OffloadMode::Stream), (3, OffloadMode::Stream)] {
        let off = unet(&BlockPlacement { resident: n, mode, cpu_dtype: DType::F32 });
        assert_eq!(off.slots().iter().filter(|s| s.1 == SlotKind::Resident).count(), n);
        let got = off.forward_added(&r["unet_in"], 500.0, &ctx, Some(&added), &|| Ok(())).unwrap();
        assert_eq!(max_diff(&got, &out), 0.0, "{mode} with {n} resident blocks");
    }
}

/// Whole runs with the engine's own seeded noise (torch's CPU generator) equal diffusers' images
/// drawn with `torch.Generator("cpu").manual_seed(42)`, within 2/255, for DDIM, Euler, Euler
/// ancestral and DPM++ 2M, and Euler with a negative prompt.
#[test]
fn seeded_images_match_diffusers() {
    let r = refs();
    let mut model = load(&fixture(), &Knobs::default()).unwrap();
    let negative = prompts()["negative"].as_str().unwrap().to_string();
    for (key, scheduler, neg) in [
        ("ddim", Scheduler::Ddim, ""),
        ("euler", Scheduler::Euler, ""),
        ("euler_a", Scheduler::EulerAncestral, ""),
        ("dpmpp_2m", Scheduler::DpmPp2M, ""),
        ("euler_negative", Scheduler::Euler, negative.as_str()),
    ] {
        let req = Request { negative: neg.into(), ..request(scheduler) };
        let img = model.run(&req, &mut Notes::default()).unwrap();
        let d = max_diff(&img, &r[&format!("image_{key}")]);
        println!("{key}: max diff {d:.2e}");
        assert!(d <= 2.0 / 255.0, "{key}: {d}");
    }
}

fn run(model: &mut LatentDiffusion) -> (crate::media::Image, Vec<String>) {
    let mut notes = Notes::default();
    let img = model.run(&request(Scheduler::Euler), &mut notes).unwrap();
    (to_images(&img).unwrap().remove(0), notes.notes)
}

/// The knobs on SDXL: q8_0 on every component, the UNet's blocks offloaded (2 resident, the rest
/// streamed), attention sliced with the VAE tiled all complete with images close to f32's
/// (bounds well under what was measured); the second text encoder takes the text precision
/// (its bytes are in the text component's count, and the q8_0 notes name its tensors).
#[test]
fn knobs_run_close_to_f32() {
    let mut f32_model = load(&fixture(), &Knobs::default()).unwrap();
    let f32_bytes = f32_model.component_weight_bytes();
    let (reference, _) = run(&mut f32_model);
    drop(f32_model);

    let q8 = Knobs { precision: PrecisionKnobs::all(Precision::Q8_0), ..Knobs::default() };
    let mut model = load(&fixture(), &q8).unwrap();
    let q8_bytes = model.component_weight_bytes();
    let (img, notes) = run(&mut model);
    let db = psnr_db(&reference, &img).unwrap();
    println!("q8_0: PSNR {db:.1} dB vs f32; bytes {q8_bytes:?} vs f32 {f32_bytes:?}");
    assert!(db >= 30.0, "q8_0: {db} dB");
    assert!(q8_bytes[1] < f32_bytes[1] && q8_bytes[0] < f32_bytes[0], "{q8_bytes:?} {f32_bytes:?}");
    assert!(notes.iter().any(|n| n.starts_with("text: precision q8_0")), "{notes:?}");

    let mut off = Knobs::default();
    off.offload.gpu_blocks = Some(2);
    off.offload.mode = OffloadMode::Stream;
    let mut model = load(&fixture(), &off).unwrap();
    let kinds: Vec<SlotKind> = model.unet_slots().into_iter().map(|s| s.1).collect();
    assert_eq!(kinds.iter().filter(|k| **k == SlotKind::Streamed).count(), 5, "{kinds:?}");
    let (img, _) = run(&mut model);
    let db = psnr_db(&reference, &img).unwrap();
    println!("gpu_blocks 2 + stream: PSNR {db:.1} dB vs f32");
    assert!(db >= 60.0, "offload: {db} dB");
    assert!(model.weight_bytes()[0].1 < f32_bytes.iter().sum::<u64>(), "streamed blocks are not resident");

    let mut sliced = Knobs::default();
    sliced.slicing.attention_slice = 16;
    sliced.slicing.vae_tile = 6;
    let (img, _) = run(&mut load(&fixture(), &sliced).unwrap());
    let db = psnr_db(&reference, &img).unwrap();
    println!("attention_slice 16 + vae_tile 6: PSNR {db:.1} dB vs f32");
    assert!(db >= 40.0, "sliced and tiled: {db} dB");
}

/// Resident bytes of each component at f32, f16, q8_0 and q4k as the loaders counted them, the
/// UNet's falling with the precision, and equal to the planner's count (the text component being
/// both encoders, less their unread `position_ids`; at f16 the CPU keeps the layer norms in f32,
/// under 1% of the bytes, which the planner counts at f16).
#[test]
fn resident_bytes_by_precision() {
    let inspection = crate::formats::inspect(&fixture()).unwrap();
    let mut unet = Vec::new();
    for p in [Precision::F32, Precision::F16, Precision::Q8_0, Precision::Q4K] {
        let model = load(&fixture(), &Knobs { precision: PrecisionKnobs::all(p), ..Knobs::default() }).unwrap();
        let counted = model.component_weight_bytes();
        println!("tiny-sdxl {p}: text {} (both encoders), unet {}, vae {}", counted[0], counted[1], counted[2]);
        for (i, c) in Component::ALL.into_iter().enumerate() {
            let ids: u64 = inspection
                .components
                .iter()
                .filter(|ci| ci.component == Some(c))
                .flat_map(|ci| ci.tensors.iter())
                .filter(|t| t.name.ends_with("position_ids"))
                .map(|t| t.bytes.unwrap_or(0))
                .sum();
            let planned = inspection.component_bytes(c, p) - ids;
            if p == Precision::F16 {
                // on the CPU the loader keeps layer norms in f32, which the planner counts at f16
                assert!(counted[i] >= planned && counted[i] - planned <= counted[i] / 100, "{c} at {p}: {planned} {}", counted[i]);
            } else {
                assert_eq!(planned, counted[i], "{c} at {p}");
            }
        }
        unet.push(counted[1]);
    }
    assert!(unet[1] < unet[0] && unet[2] < unet[0] && unet[3] <= unet[2], "{unet:?}");
}

/// `addition_embed_type` other than SDXL's `text_time` is still refused by name, and `text_time`
/// without its sizes too, naming the fields.
#[test]
fn other_addition_kinds_are_refused() {
    let cfg: UnetConfig = read_config(&fixture().join("unet")).unwrap();
    assert!(cfg.validate().is_ok());
    for kind in ["text_image", "image", "text"] {
        let bad = UnetConfig { addition_embed_type: Some(kind.into()), ..cfg.clone() };
        let e = bad.validate().unwrap_err();
        assert!(e.contains(&format!("addition_embed_type = {kind} is not supported")), "{e}");
    }
    let bad = UnetConfig { addition_time_embed_dim: None, ..cfg.clone() };
    assert!(bad.validate().unwrap_err().contains("addition_time_embed_dim"));
}

/// An SDXL folder without text_encoder_2/ is refused at load in one line naming that folder and
/// what is missing; so is one whose model_index.json no longer names it (the UNet still takes
/// SDXL's conditioning).
#[test]
fn missing_text_encoder_2_is_named() {
    let dir = tempfile::tempdir().unwrap();
    super::config_check::tests::copy_dir(&fixture(), dir.path());
    std::fs::remove_dir_all(dir.path().join("text_encoder_2")).unwrap();
    let e = load(dir.path(), &Knobs::default()).map(|_| ()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("text_encoder_2") && e.contains("missing") && !e.contains('\n'), "{e}");
    assert!(e.contains(&dir.path().display().to_string()), "{e}");

    let index_path = dir.path().join("model_index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index.as_object_mut().unwrap().remove("text_encoder_2");
    std::fs::write(&index_path, index.to_string()).unwrap();
    let e = load(dir.path(), &Knobs::default()).map(|_| ()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("text_encoder_2") && e.contains("text_time") && !e.contains('\n'), "{e}");
}

/// SDXL's two text encoders are two components with their own knobs (`text`, `text_2`): a
/// precision change on one reads only that one again on a loaded model, the bytes and the
/// image equal a fresh load's with the same knobs, and a profile naming `text_2` on an SD 1.x
/// model is refused by name.
#[test]
fn retune_reads_each_text_encoder_apart() {
    let mut model = load(&fixture(), &Knobs::default()).unwrap();
    let before = model.component_weight_bytes();
    let mut q8 = Knobs::default();
    q8.set("precision.text", "q8_0").unwrap();
    let read = model.retune(&Knobs::default(), &q8, &crate::CancelCheck::never()).unwrap();
    assert_eq!(read, crate::families::Retuned::Read(vec!["text".into()]));
    let mut both = q8;
    both.set("precision.text_encoder_2", "f16").unwrap();
    let read = model.retune(&q8, &both, &crate::CancelCheck::never()).unwrap();
    assert_eq!(read, crate::families::Retuned::Read(vec!["text_2".into()]));
    let mut fresh = load(&fixture(), &both).unwrap();
    let after = model.component_weight_bytes();
    assert_eq!(after, fresh.component_weight_bytes());
    assert!(after[0] < before[0] && after[1] == before[1], "{before:?} {after:?}");
    assert_eq!(run(&mut model).0, run(&mut fresh).0);
    let names: Vec<&str> = model.components().iter().map(|c| c.name).collect();
    assert_eq!(names, ["text", "text_2", "unet", "vae"]);

    let sd1 = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd/tiny-sd1");
    let mut xl_only = Knobs::default();
    xl_only.set("precision.text_2", "f16").unwrap();
    let e = crate::families::latent_diffusion::load(&sd1, &xl_only).map(|_| ()).unwrap_err().to_string();
    assert!(e.starts_with("precision.text_2: ") && e.ends_with("has no component 'text_2' (it has text, unet, vae)"), "{e}");
}
