//! Offloaded UNet blocks compute exactly what resident ones do: split and stream against the
//! all-resident UNet on the tiny SD 1.x fixture.

use candle_core::{DType, Device, Tensor};

use super::folder::{read_config, var_builder};
use super::offload::{BlockPlacement, SlotKind};
use super::parity_tests::fixture;
use super::unet::{Unet, UnetConfig};
use crate::knobs::OffloadMode;
use crate::nn::Weights;

fn unet(placement: &BlockPlacement) -> Unet {
    let dir = fixture("tiny-sd1").join("unet");
    let cfg: UnetConfig = read_config(&dir).unwrap();
    let (vb, _) = var_builder(&dir, DType::F32, &Device::Cpu).unwrap();
    Unet::with_offload(&cfg, Weights::new(vb), placement).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Every block resident, split after one block, streamed after none or two: the same output, bit
/// for bit (on the CPU every variant runs the same kernels on the same values), and the slots
/// say how each block is held.
#[test]
fn offloaded_blocks_match_resident() {
    let x = Tensor::randn(0f32, 1.0, (2, 4, 16, 16), &Device::Cpu).unwrap();
    let context = Tensor::randn(0f32, 1.0, (2, 7, 32), &Device::Cpu).unwrap();
    let resident = unet(&BlockPlacement::resident());
    assert_eq!(resident.slots().len(), 5, "2 down, mid, 2 up");
    assert!(resident.slots().iter().all(|s| s.1 == SlotKind::Resident));
    let want = values(&resident.forward(&x, 500.0, &context).unwrap());
    for (n, mode, kind) in [
        (1, OffloadMode::Split, SlotKind::Split),
        (0, OffloadMode::Stream, SlotKind::Streamed),
        (2, OffloadMode::Stream, SlotKind::Streamed),
    ] {
        let u = unet(&BlockPlacement { resident: n, mode, cpu_dtype: DType::F32 });
        let slots = u.slots();
        assert_eq!(slots.iter().filter(|s| s.1 == SlotKind::Resident).count(), n, "{slots:?}");
        assert!(slots[n..].iter().all(|s| s.1 == kind), "{slots:?}");
        assert_eq!(slots[2].0, "mid_block");
        let got = values(&u.forward(&x, 500.0, &context).unwrap());
        assert!(got == want, "{mode} with {n} resident blocks differs from all resident");
    }
}

/// A streamed block whose tensors are missing fails at load, naming the tensor, not mid-run.
#[test]
fn streamed_block_is_checked_at_load() {
    let dir = fixture("tiny-sd1").join("unet");
    let mut cfg: UnetConfig = read_config(&dir).unwrap();
    cfg.layers_per_block = super::unet::PerBlock::One(2); // the file has one resnet per block
    let (vb, _) = var_builder(&dir, DType::F32, &Device::Cpu).unwrap();
    let p = BlockPlacement { resident: 0, mode: OffloadMode::Stream, cpu_dtype: DType::F32 };
    let err = Unet::with_offload(&cfg, Weights::new(vb), &p).err().expect("a missing resnet must fail").to_string();
    assert!(err.contains("resnets.1"), "{err}");
}
