//! How a family holds a component's weights under the knobs, one rule for every family: where it
//! lives (its placement, or the run's device), what it is stored as and computed in (its
//! precision resolved for that device), what the run's notes say about it, and its resident
//! bytes per device.

use candle_core::{DType, Device};

use crate::formats::human_bytes;
use crate::knobs::{Knobs, Precision};
use crate::nn::Ledger;

/// How one component is held: its device, the type its weights are stored as when that differs
/// from the compute dtype (`F32` means "as computed"), the compute dtype, and the notes.
pub(crate) struct Holding {
    pub device: Device,
    pub storage: Precision,
    pub dtype: DType,
    pub notes: Vec<String>,
}

/// How component `c` is held under `knobs` on a run whose device is `run_device`: a `placeable`
/// component placed off the GPU lives on the CPU, any other on the run's one device (two
/// handles to one GPU would count as two devices). Quantized types, and f16/bf16 on the CPU,
/// are stored narrow and computed in f32 (the notes say so); f16/bf16 on a GPU compute in
/// their own dtype.
pub(crate) fn holding(c: &str, knobs: &Knobs, run_device: &Device, placeable: bool) -> Holding {
    let device = if placeable && !knobs.offload.placement.get(c).resolve(knobs.device).is_gpu() {
        Device::Cpu
    } else {
        run_device.clone()
    };
    let mut notes = Vec::new();
    let p = knobs.precision.get(c).resolve(knobs.device);
    let mut storage = if p.is_quantized() { p } else { Precision::F32 };
    if p.is_quantized() && device.is_cpu() {
        notes.push(format!(
            "{c}: {p} weights are stored {p} and expanded to f32 one layer at a time to multiply in f32 \
             (the faster kernel on this CPU)"
        ));
    }
    let dtype = match p {
        Precision::F16 | Precision::Bf16 if device.is_cpu() => {
            notes.push(format!(
                "{c}: {p} is stored in {p} and computed in f32 on the CPU, where the f32 kernels are the fast ones"
            ));
            storage = p;
            DType::F32
        }
        Precision::F16 => DType::F16,
        Precision::Bf16 => DType::BF16,
        _ => DType::F32,
    };
    Holding { device, storage, dtype, notes }
}

/// What a component's load ledger says for the notes: weights that hold NaN or infinities, and
/// for a quantized precision the types per tensor and the bytes resident.
pub(crate) fn ledger_notes(c: &str, storage: Precision, ledger: &Ledger) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(first) = ledger.non_finite.first() {
        notes.push(format!(
            "{c}: {} weight tensor(s) hold NaN or infinite values (first: {first}); outputs will likely be broken (black, silent or noise)",
            ledger.non_finite.len()
        ));
    }
    if storage.is_quantized() {
        notes.push(format!("{c}: precision {storage}: {}; {} resident", ledger.summary(), human_bytes(ledger.bytes)));
    }
    notes
}

/// A device as telemetry and the planner name it (`cpu`, `cuda:0`, `metal`).
pub(crate) fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { .. } => "metal".into(),
    }
}

/// Bytes summed per device name, in the order devices first appear (what
/// [`super::Family::weight_bytes`] returns).
pub(crate) fn per_device<'a>(held: impl IntoIterator<Item = (&'a Device, u64)>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for (device, bytes) in held {
        let name = device_name(device);
        match out.iter_mut().find(|(d, _)| *d == name) {
            Some((_, b)) => *b += bytes,
            None => out.push((name, bytes)),
        }
    }
    out
}
