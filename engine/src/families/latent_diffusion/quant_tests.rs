//! The precision knob's quantized types on the latent-diffusion family: resident bytes against
//! f16 on a UNet whose rows are whole k-quant blocks, the planner's prediction against what the
//! loaders counted, and end-to-end images close to f32.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::folder::var_builder;
use super::parity_tests::fixture;
use super::pipeline::{LatentDiffusion, load, to_images};
use super::unet::{Unet, UnetConfig};
use crate::compare::psnr_db;
use crate::knobs::{Component, Knobs, Precision, PrecisionKnobs};
use crate::nn::Weights;
use crate::request::Request;

use crate::families::testing::Notes;

/// The tiny fixture's UNet config widened to 256 channels, so every matrix but `conv_in` has rows
/// that are whole 256-element blocks.
fn wide_unet_config() -> UnetConfig {
    let text = std::fs::read_to_string(fixture("tiny-sd1").join("unet/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["block_out_channels"] = serde_json::json!([256, 256]);
    v["cross_attention_dim"] = serde_json::json!(256);
    v["attention_head_dim"] = serde_json::json!(8);
    serde_json::from_value(v).unwrap()
}

/// Loading a random-weight 256-channel UNet from a safetensors file holds, by the loaders'
/// count, at most 0.55× the f16 bytes at q8_0 and 0.30× at q4k (the targets).
#[test]
fn quantized_unet_bytes_against_f16() {
    let cfg = wide_unet_config();
    let dir = std::env::temp_dir().join(format!("headroom-quant-unet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    {
        let vm = VarMap::new();
        Unet::new(&cfg, Weights::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))).unwrap();
        for var in vm.data().lock().unwrap().values() {
            var.set(&Tensor::randn(0f32, 0.05, var.shape(), &Device::Cpu).unwrap()).unwrap();
        }
        vm.save(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    }
    let bytes_at = |p: Precision| {
        let dtype = if p == Precision::F16 { DType::F16 } else { DType::F32 };
        let (vb, _) = var_builder(&dir, dtype, &Device::Cpu).unwrap();
        let w = if p.is_quantized() { Weights::with_precision(vb, p) } else { Weights::new(vb) };
        Unet::new(&cfg, w.clone()).unwrap();
        let l = w.ledger();
        println!("unet {p}: {} bytes ({})", l.bytes, l.summary());
        l.bytes
    };
    let f16 = bytes_at(Precision::F16) as f64;
    let q8 = bytes_at(Precision::Q8_0) as f64 / f16;
    let q4k = bytes_at(Precision::Q4K) as f64 / f16;
    println!("resident vs f16: q8_0 {q8:.3}×, q4k {q4k:.3}×");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(q8 <= 0.55, "q8_0 {q8}");
    assert!(q4k <= 0.30, "q4k {q4k}");
}

fn knobs_at(p: Precision) -> Knobs {
    Knobs { precision: PrecisionKnobs::all(p), ..Knobs::default() }
}

fn run(model: &mut LatentDiffusion) -> (crate::media::Image, Vec<String>) {
    let req = Request {
        prompt: "a red circle".into(),
        seed: 7,
        steps: 4,
        guidance: 7.5,
        width: 32,
        height: 32,
        ..Request::default()
    };
    let mut notes = Notes::default();
    let img = model.run(&req, &mut notes).unwrap();
    (to_images(&img).unwrap().remove(0), notes.notes)
}

/// tiny-sd1 at q8_0 and q4k gives images close to f32 (PSNR bounds well under what was
/// measured), and the run's notes say how each component's tensors were stored.
#[test]
fn tiny_sd1_quantized_close_to_f32() {
    let (reference, _) = run(&mut load(&fixture("tiny-sd1"), &knobs_at(Precision::F32)).unwrap());
    for (p, min_db) in [(Precision::Q8_0, 30.0), (Precision::Q4K, 20.0)] {
        let (img, notes) = run(&mut load(&fixture("tiny-sd1"), &knobs_at(p)).unwrap());
        let db = psnr_db(&reference, &img).unwrap();
        println!("tiny-sd1 {p}: PSNR {db:.1} dB vs f32; notes {notes:?}");
        assert!(db >= min_db, "{p}: {db} dB");
        assert!(notes.iter().any(|n| n.starts_with("unet: ") && n.contains(" tensors")), "{notes:?}");
    }
}

/// The planner's bytes per component at q4k and q8_0 on tiny-sd1 equal what the loaders
/// counted, except the text encoder's integer `position_ids`, which the planner counts and the
/// loader never reads.
#[test]
fn planner_predicts_resident_bytes() {
    let path = fixture("tiny-sd1");
    let inspection = crate::formats::inspect(&path).unwrap();
    for p in [Precision::Q4K, Precision::Q8_0, Precision::F32] {
        let model = load(&path, &knobs_at(p)).unwrap();
        let counted = model.component_weight_bytes();
        for (i, c) in Component::ALL.into_iter().enumerate() {
            let planned = inspection.component_bytes(c, p);
            let ids: u64 = inspection
                .components
                .iter()
                .filter(|ci| ci.component == Some(c))
                .flat_map(|ci| ci.tensors.iter())
                .filter(|t| t.name.ends_with("position_ids"))
                .map(|t| t.bytes.unwrap_or(0))
                .sum();
            println!("{c} {p}: planned {planned}, counted {}", counted[i]);
            assert_eq!(planned - ids, counted[i], "{c} at {p}");
        }
    }
}

/// bf16 on the CPU keeps its weights in bf16 (half the f32 bytes, but for the f32 layer norms)
/// and widens them per layer at use: the image stays close to f32.
#[test]
fn tiny_sd1_bf16_storage_on_cpu() {
    let f32_model = load(&fixture("tiny-sd1"), &knobs_at(Precision::F32)).unwrap();
    let f32_bytes = f32_model.component_weight_bytes()[1];
    let (reference, _) = run(&mut { f32_model });
    let mut model = load(&fixture("tiny-sd1"), &knobs_at(Precision::Bf16)).unwrap();
    let ratio = model.component_weight_bytes()[1] as f64 / f32_bytes as f64;
    let (img, notes) = run(&mut model);
    let db = psnr_db(&reference, &img).unwrap();
    println!("tiny-sd1 bf16: unet {ratio:.3}× the f32 bytes, PSNR {db:.1} dB; notes {notes:?}");
    assert!(ratio < 0.52, "{ratio}");
    assert!(db >= 30.0, "{db} dB");
    assert!(notes.iter().any(|n| n.contains("stored in bf16")), "{notes:?}");
}
