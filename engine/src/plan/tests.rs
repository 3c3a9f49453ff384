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
        let mut k = Knobs::default();
        k.precision = crate::knobs::PrecisionKnobs::all(p);
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
    let mut k = Knobs::default();
    k.device = DeviceKind::Cuda(0);
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
        let mut k = Knobs::default();
        k.precision = crate::knobs::PrecisionKnobs::all(Precision::F32);
        k.precision.set(Component::Unet, unet);
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
