//! `offload.mode = stream` on the CPU: the UNet's non-resident blocks stay in the memory-mapped
//! weight file and are built on the heap only while they run, so the peak heap falls by about
//! the streamed blocks' bytes less the largest one — counted by the counting allocator, compared
//! with the planner's prediction, with the output unchanged bit for bit.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use headroom_engine::families::latent_diffusion::offload::{BlockPlacement, SlotKind};
use headroom_engine::families::latent_diffusion::unet::{Unet, UnetConfig};
use headroom_engine::knobs::OffloadMode;
use headroom_engine::nn::Weights;
use headroom_engine::plan::{Budgets, ModelShape, predict};
use headroom_engine::telemetry::{self, CountingAlloc};
use headroom_engine::{Knobs, Request};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

const MIB: f64 = (1u64 << 20) as f64;

/// A UNet of about 10M parameters (40 MB at f32) whose weights dwarf its activations at an 8×8
/// latent.
fn config() -> UnetConfig {
    serde_json::from_value(serde_json::json!({
        "block_out_channels": [64, 128, 256],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 64,
        "sample_size": 8
    }))
    .unwrap()
}

/// Writes random weights for `cfg` to `path` as safetensors.
fn write_random_weights(cfg: &UnetConfig, path: &Path) {
    let vm = VarMap::new();
    Unet::new(cfg, Weights::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))).unwrap();
    for var in vm.data().lock().unwrap().values() {
        let t = (Tensor::randn(0f32, 1.0, var.shape(), &Device::Cpu).unwrap() * 0.05).unwrap();
        var.set(&t).unwrap();
    }
    vm.save(path).unwrap();
}

fn mapped(path: &Path) -> Weights<'static> {
    // SAFETY: the test's own temporary file, not modified while mapped.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.unwrap();
    Weights::new(VarBuilder::from_backend(Box::new(st), DType::F32, Device::Cpu))
}

/// Loads the UNet placed as `p`, runs one forward; returns the output and the heap peak above
/// the starting point, from load to the end of the forward.
fn peak_of(cfg: &UnetConfig, path: &Path, p: &BlockPlacement, x: &Tensor, ctx: &Tensor) -> (Vec<u32>, u64, Vec<SlotKind>) {
    let base = telemetry::heap_current().unwrap();
    telemetry::reset_heap_peak();
    let unet = Unet::with_offload(cfg, mapped(path), p).unwrap();
    let out = unet.forward(x, 321.0, ctx).unwrap();
    let peak = telemetry::heap_peak().unwrap() - base;
    let bits = out.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect();
    (bits, peak, unet.slots().into_iter().map(|s| s.1).collect())
}

#[test]
fn cpu_stream_lowers_peak_heap() {
    let dir = std::env::temp_dir().join(format!("headroom-offload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let cfg = config();
    write_random_weights(&cfg, &path);

    // bytes per block, grouped as the planner groups them
    let insp = headroom_engine::formats::inspect(&path).unwrap();
    let shape = ModelShape::from_inspection(&insp);
    let blocks: Vec<(String, u64)> =
        shape.unet_blocks.iter().map(|(l, t)| (l.clone(), t.iter().map(|w| w.0.shape.iter().product::<u64>() * 4).sum())).collect();
    let total: u64 = blocks.iter().map(|b| b.1).sum();
    let largest = blocks.iter().map(|b| b.1).max().unwrap();
    assert_eq!(blocks.len(), 7, "{blocks:?}");

    let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (2, 7, 64), &Device::Cpu).unwrap();
    let (want, resident_peak, kinds) = peak_of(&cfg, &path, &BlockPlacement::resident(), &x, &ctx);
    assert!(kinds.iter().all(|k| *k == SlotKind::Resident));
    let stream = BlockPlacement { resident: 0, mode: OffloadMode::Stream, cpu_dtype: DType::F32 };
    let (got, stream_peak, kinds) = peak_of(&cfg, &path, &stream, &x, &ctx);
    assert!(kinds.iter().all(|k| *k == SlotKind::Streamed));
    assert!(got == want, "streamed output differs from resident");

    // what the planner predicts for the same two settings on the CPU
    let mut knobs = Knobs::default();
    let unet_bytes = |k: &Knobs| -> u64 {
        let d = predict(&shape, k, &Request::default(), &Budgets::default());
        d[0].components.iter().filter(|(n, _)| n.starts_with("unet")).map(|(_, v)| v).sum()
    };
    let planned_all = unet_bytes(&knobs);
    knobs.set("offload.gpu_blocks", "0").unwrap();
    knobs.set("offload.mode", "stream").unwrap();
    let planned_stream = unet_bytes(&knobs);

    let saved = resident_peak as i64 - stream_peak as i64;
    let expected = (total - largest) as i64;
    println!(
        "unet weights {:.2} MiB in {} blocks (largest {:.2} MiB); peak heap resident {:.2} MiB, \
         stream {:.2} MiB, saved {:.2} MiB; planner: {:.2} → {:.2} MiB (saves {:.2} MiB)",
        total as f64 / MIB,
        blocks.len(),
        largest as f64 / MIB,
        resident_peak as f64 / MIB,
        stream_peak as f64 / MIB,
        saved as f64 / MIB,
        planned_all as f64 / MIB,
        planned_stream as f64 / MIB,
        (planned_all - planned_stream) as f64 / MIB,
    );
    assert_eq!((planned_all - planned_stream) as i64, expected, "planner and blocks disagree");
    assert!(saved * 10 >= expected * 9, "saved {saved} bytes, expected about {expected}");
    assert!(saved * 10 <= expected * 11, "saved {saved} bytes, expected about {expected}");
    std::fs::remove_dir_all(&dir).ok();
}
