//! Planner tests on a synthetic SD-1.5-sized model (shapes only, no weights).

use super::shape::{UnetShape, VaeShape, WeightTensor};
use super::*;

/// An SD-1.5-like model: 860M-parameter denoiser in 9 blocks, 123M text encoder, 84M VAE.
pub(crate) fn sd15() -> ModelShape {
    let w = |rows: u64, cols: u64| WeightTensor::from_shape(&[rows, cols]);
    let blocks: Vec<(String, Vec<WeightTensor>)> = (0..9)
        .map(|i| (format!("block{i}"), vec![w(95_000, 1024), WeightTensor::from_shape(&[1280])]))
        .collect();
    let mut components = BTreeMap::new();
    components.insert(Some(Component::Unet), blocks.iter().flat_map(|b| b.1.clone()).chain([w(1280, 1024)]).collect());
    components.insert(Some(Component::Text), vec![w(120_000, 1024)]);
    components.insert(Some(Component::Vae), vec![w(82_000, 1024)]);
    ModelShape {
        family: "sd1".into(),
        components,
        text_2: Vec::new(),
        unet_blocks: blocks,
        unet_stem: vec![w(1280, 1024)],
        unet: UnetShape {
            block_channels: vec![320, 640, 1280, 1280],
            attention_levels: vec![true, true, true, false],
            heads: vec![8; 4],
            layers_per_block: 2,
            in_channels: 4,
        },
        vae: VaeShape { block_channels: vec![128, 256, 512, 512], latent_channels: 4 },
        text_hidden: 768,
        auto_as_stored: false,
        assumptions: vec![],
    }
}

fn req512() -> Request {
    Request { width: 512, height: 512, ..Request::default() }
}

const GIB: u64 = 1 << 30;

/// Narrower precisions predict fewer weight bytes, in the order of their bits per weight.
#[test]
fn precision_orders_weight_bytes() {
    let shape = sd15();
    let mut last = u64::MAX;
    for p in [Precision::F32, Precision::F16, Precision::Q8_0, Precision::Q6K, Precision::Q5K, Precision::Q4K] {
        let k = Knobs { precision: crate::knobs::PrecisionKnobs::all(p), ..Knobs::default() };
        let plan = plan(&shape, &k, &req512(), &Budgets::default());
        assert!(plan.weights_bytes < last, "{p}: {} !< {last}", plan.weights_bytes);
        last = plan.weights_bytes;
    }
}

/// On a GPU, a budget between the sliced and unsliced peaks gives fits-with, and the suggestion
/// fits; on the CPU, where attention holds only its kernels' scratch, slicing is never offered.
#[test]
fn tight_budget_suggests_lossless_knobs_first() {
    let shape = sd15();
    // Decode in small tiles, so the denoiser's attention sets the peak.
    let mut k = Knobs { device: DeviceKind::Cuda(0), ..Knobs::default() };
    k.slicing.vae_tile = 16;
    let full = plan(&shape, &k, &req512(), &Budgets::default());
    let budget = full.total_bytes - full.activation_bytes / 2;
    let cpu = Knobs { device: DeviceKind::Cpu, ..k };
    let on_cpu = plan(&shape, &cpu, &req512(), &Budgets::single(DeviceKind::Cpu, 100 << 20));
    assert!(on_cpu.suggestions.iter().all(|s| s.changes.iter().all(|c| c.0 != "slicing.attention_slice")), "{on_cpu:#?}");
    let p = plan(&shape, &k, &req512(), &Budgets::single(DeviceKind::Cuda(0), budget));
    assert_eq!(p.verdict, Verdict::FitsWith, "{p:#?}");
    let first = &p.suggestions[0];
    assert_eq!(first.quality_loss, 0.0, "{first:?}");
    assert_eq!(first.changes[0].0, "slicing.attention_slice");
    let mut fixed = k;
    for (key, value) in &first.changes {
        fixed.set(key, value).unwrap();
    }
    let again = plan(&shape, &fixed, &req512(), &Budgets::single(DeviceKind::Cuda(0), budget));
    assert_eq!(again.verdict, Verdict::Fits);
    assert!(again.total_bytes <= budget);
}

/// A budget below the smallest possible footprint is does-not-fit with no suggestions.
#[test]
fn impossible_budget_does_not_fit() {
    let p = plan(&sd15(), &Knobs::default(), &req512(), &Budgets::single(DeviceKind::Cpu, 100 << 20));
    assert_eq!(p.verdict, Verdict::DoesNotFit);
    assert!(p.suggestions.is_empty());
}

/// Quantizing is suggested only once lossless knobs are not enough.
#[test]
fn weights_over_budget_need_quantization() {
    let shape = sd15();
    let mut k = Knobs::default();
    k.slicing.attention_slice = 64;
    k.slicing.vae_tile = 32;
    let f32_total = plan(&shape, &k, &req512(), &Budgets::default()).total_bytes;
    let budget = f32_total - GIB;
    let p = plan(&shape, &k, &req512(), &Budgets::single(DeviceKind::Cpu, budget));
    assert_eq!(p.verdict, Verdict::FitsWith);
    assert!(p.suggestions.iter().all(|s| s.quality_loss > 0.0 || s.changes[0].0 == "offload.mode"), "{:?}", p.suggestions);
}

/// On a GPU, gpu_blocks with stream keeps only the resident blocks plus one streamed block there.
#[test]
fn gpu_blocks_move_weights_to_ram() {
    let shape = sd15();
    let mut k = Knobs { device: DeviceKind::Cuda(0), ..Knobs::default() };
    let all_on_gpu = predict(&shape, &k, &req512(), &Budgets::default());
    k.set("offload.gpu_blocks", "3").unwrap();
    k.set("offload.mode", "stream").unwrap();
    let streamed = predict(&shape, &k, &req512(), &Budgets::default());
    let gpu = |d: &[DevicePlan]| {
        let dev = d.iter().find(|x| x.device == "cuda:0").unwrap();
        dev.components.iter().filter(|(k, _)| k.starts_with("unet")).map(|(_, v)| v).sum::<u64>()
    };
    assert!(gpu(&streamed) < gpu(&all_on_gpu) / 2);
    // f16 by default on a GPU: 9 blocks of 97.3M weights, 3 resident and one being copied in
    let block = 95_000 * 1024 * 2 + 1280 * 2;
    assert_eq!(gpu(&streamed), 1280 * 1024 * 2 + 4 * block);
    // the other 6 stay in the mapped file: not RAM the plan counts, but a note says so
    let cpu = streamed.iter().find(|x| x.device == "cpu");
    assert!(cpu.is_none_or(|c| !c.components.keys().any(|k| k.starts_with("unet"))), "{cpu:?}");
    let p = plan(&shape, &k, &req512(), &Budgets::default());
    assert!(p.notes.iter().any(|n| n.contains("6 blocks")), "{:?}", p.notes);
    // split holds those 6 in RAM instead
    k.set("offload.mode", "split").unwrap();
    let split = predict(&shape, &k, &req512(), &Budgets::default());
    assert_eq!(split.iter().find(|x| x.device == "cpu").unwrap().components["unet"], 6 * block);
}

/// On the CPU, stream with gpu_blocks = N holds the stem, N blocks and the largest other block;
/// split (or every block resident) holds them all.
#[test]
fn cpu_stream_holds_one_block() {
    let shape = sd15();
    let mut k = Knobs::default();
    let unet = |k: &Knobs| -> u64 {
        let d = predict(&shape, k, &req512(), &Budgets::default());
        d[0].components.iter().filter(|(n, _)| n.starts_with("unet")).map(|(_, v)| v).sum()
    };
    let all = unet(&k);
    let block = 95_000 * 1024 * 4 + 1280 * 4;
    k.set("offload.mode", "stream").unwrap();
    assert_eq!(unet(&k), all, "stream with every block resident streams nothing");
    k.set("offload.gpu_blocks", "2").unwrap();
    assert_eq!(unet(&k), 1280 * 1024 * 4 + 3 * block);
    k.set("offload.mode", "split").unwrap();
    assert_eq!(unet(&k), all);
}

/// On the CPU the buffer a quantized denoiser's layers widen into is released when its stage
/// ends: an f32 VAE's decode (the peak) holds the same with a q4k denoiser as with an f32 one,
/// and the denoise stage holds the denoiser's largest layer in f32 more.
#[test]
fn cpu_widening_buffer_ends_with_its_stage() {
    let shape = sd15();
    let plan_with = |unet: Precision| {
        let mut k = Knobs { precision: crate::knobs::PrecisionKnobs::all(Precision::F32), ..Knobs::default() };
        k.precision.set(Component::Unet, unet).unwrap();
        plan(&shape, &k, &req512(), &Budgets::default())
    };
    let (f32_plan, q4k_plan) = (plan_with(Precision::F32), plan_with(Precision::Q4K));
    let (a, b) = (&f32_plan.per_device[0], &q4k_plan.per_device[0]);
    assert_eq!((a.peak_stage.as_str(), b.peak_stage.as_str()), ("decode", "decode"));
    assert_eq!(b.activation_bytes, a.activation_bytes);
    assert_eq!(b.stage_bytes["denoise"] - a.stage_bytes["denoise"], 4 * 95_000 * 1024);
}

/// A plan that fits gives no refusal; one that does not names the short device, both sizes and
/// the first suggestion as a `key=value` list that `Knobs::apply_list` takes back, and applying
/// it makes the plan fit; with no way to fit, it says so.
#[test]
fn refusal_names_the_shortfall_and_the_fix() {
    let shape = sd15();
    let k = Knobs::default();
    let roomy = plan(&shape, &k, &req512(), &Budgets::single(DeviceKind::Cpu, 64 * GIB));
    assert_eq!(roomy.refusal(), None);
    let tight = plan(&shape, &k, &req512(), &Budgets::single(DeviceKind::Cpu, 3 * GIB));
    let line = tight.refusal().expect("a refusal");
    assert!(line.starts_with("it needs ") && line.contains(" on cpu and 3.00 GiB is free; it fits with "), "{line}");
    assert!(!line.contains('\n'));
    let fix = tight.suggestions[0].changes_text();
    assert!(line.contains(&fix), "{line}");
    let mut fixed = k;
    fixed.apply_list(None, &fix).unwrap();
    assert_eq!(plan(&shape, &fixed, &req512(), &Budgets::single(DeviceKind::Cpu, 3 * GIB)).verdict, Verdict::Fits);
    let hopeless = plan(&shape, &k, &req512(), &Budgets::single(DeviceKind::Cpu, 1 << 20));
    assert!(hopeless.refusal().unwrap().ends_with("; no knob setting makes it fit"), "{:?}", hopeless.refusal());
}

/// A GGUF v3 file with `general.architecture = arch` and tensors (name, GGML type id, dims
/// innermost first as GGUF stores them), their data zeros, each at a 32-byte aligned offset.
fn gguf_bytes(arch: &str, tensors: &[(&str, u32, &[u64])]) -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend(1u64.to_le_bytes());
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // a string value
    string(&mut b, arch);
    let mut offset = 0u64;
    for (name, type_id, ne) in tensors {
        string(&mut b, name);
        b.extend((ne.len() as u32).to_le_bytes());
        for d in *ne {
            b.extend(d.to_le_bytes());
        }
        b.extend(type_id.to_le_bytes());
        b.extend(offset.to_le_bytes());
        let t = crate::formats::GgmlType::from_id(*type_id).unwrap();
        offset += t.bytes_for(ne.iter().product(), ne[0]).unwrap().div_ceil(32) * 32;
    }
    b.resize(b.len().div_ceil(32) * 32 + offset as usize, 0);
    b
}

const F32: u32 = 0;
const F16: u32 = 1;
const Q8_0: u32 = 8;
const Q4_K: u32 = 12;

/// A stable-diffusion.cpp style GGUF of an SD 1.x model (LDM names, mixed types): under `auto`
/// every tensor counts as stored, on the CPU and on a GPU, not widened to f32 or f16; explicit
/// precisions keep their meaning. No family of this build loads it, so `runnable` refuses it.
#[test]
fn gguf_auto_counts_weights_as_stored() {
    let bytes = gguf_bytes(
        "sd1",
        &[
            ("model.diffusion_model.input_blocks.1.1.proj_in.weight", Q8_0, &[64, 8]),
            ("model.diffusion_model.time_embed.0.weight", F16, &[32, 16]),
            ("model.diffusion_model.out.2.bias", F32, &[4]),
            ("first_stage_model.decoder.conv_out.weight", F16, &[3, 3, 8, 3]),
            ("cond_stage_model.transformer.text_model.final_layer_norm.weight", F32, &[32]),
            ("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", Q4_K, &[256, 2]),
        ],
    );
    let insp = crate::formats::inspect_bytes(&bytes, std::path::Path::new("sd1.gguf")).unwrap();
    assert_eq!(insp.family.id, "sd1");
    let shape = ModelShape::from_inspection(&insp);
    // as stored: q8_0 is 34 bytes per 32 values, q4_k 144 per 256, f16 2 per value, f32 4
    let unet = 8 * 64 / 32 * 34 + 16 * 32 * 2 + 4 * 4;
    let vae = 3 * 8 * 3 * 3 * 2;
    let text = 32 * 4 + 2 * 256 / 256 * 144;
    for device in [DeviceKind::Cpu, DeviceKind::Cuda(0)] {
        let k = Knobs { device, ..Knobs::default() };
        let p = plan(&shape, &k, &req512(), &Budgets::default());
        let weights: BTreeMap<String, u64> = p.per_device.iter().flat_map(|d| d.components.clone()).collect();
        let want = BTreeMap::from([("text".to_string(), text), ("unet".to_string(), unet), ("vae".to_string(), vae)]);
        assert_eq!(weights, want, "{device}");
        assert_eq!(p.weights_bytes, unet + vae + text, "{device}");
    }
    // explicit precisions count every float tensor at that precision (1-D ones f32 when quantized)
    let mut k = Knobs { precision: crate::knobs::PrecisionKnobs::all(Precision::F32), ..Knobs::default() };
    let p = plan(&shape, &k, &req512(), &Budgets::default());
    assert_eq!(p.per_device[0].components["unet"], (8 * 64 + 16 * 32 + 4) * 4);
    k.set("precision.unet", "q8_0").unwrap();
    let p = plan(&shape, &k, &req512(), &Budgets::default());
    assert_eq!(p.per_device[0].components["unet"], 8 * 64 / 32 * 34 + 16 * 32 / 32 * 34 + 4 * 4);
    let e = ModelShape::runnable(&insp).unwrap_err().to_string();
    assert!(e.contains("sd1.gguf") && e.contains("Stable Diffusion 1.x (sd1) from gguf is not supported yet"), "{e}");
}

/// A GGUF language model is not planned: `plan_model` gives one line naming the file, saying no
/// family of this build runs it, what it is and its size as stored.
#[test]
fn a_model_no_family_runs_is_not_planned() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats/tiny.gguf");
    let model = ModelRef::parse(path.to_str().unwrap());
    let e = plan_model(&model, &Knobs::default(), &req512(), Some(8 * GIB)).unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert!(!e.contains('\n'), "{e}");
    for words in [
        "cannot be planned: no family of this build runs it",
        "running language models (llm:llama) is not supported yet",
        "2.96 KiB as stored", // 3032 bytes: see formats::tests::gguf_stored_bytes_per_type
        "1 tensor of an unknown type not counted",
    ] {
        assert!(e.contains(words), "{words:?} not in {e}");
    }
}
