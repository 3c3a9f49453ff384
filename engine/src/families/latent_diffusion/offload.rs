//! Where each of the UNet's blocks lives (`offload.gpu_blocks`, `offload.mode`): resident on the
//! UNet's device, resident on the CPU and computed there (`split`), or left in the memory-mapped
//! weight file and built on the UNet's device just before it runs, then dropped (`stream`).
//!
//! The blocks are the planner's ([`crate::plan::shape::ModelShape::unet_blocks`]): down blocks,
//! the mid block, up blocks, in execution order, so `gpu_blocks = N` means the same N blocks to
//! the plan and to the run. A streamed block is only a clone of the UNet's weight source; with
//! candle's memory-mapped safetensors backend, building a block copies its tensors out of the
//! mapped file onto the target device (a heap buffer on the CPU, a host-to-device copy on a
//! GPU), and dropping the block frees them.

use candle_core::{DType, Device, Result, Tensor};

use super::unet::{BlockId, Cond, UnetBlock, UnetConfig};
use crate::knobs::OffloadMode;
use crate::nn::Weights;

/// What a block's constructor reads its tensors from; a streamed block keeps one (a cheap clone
/// of the UNet's source) instead of its tensors.
pub type BlockWeights = Weights<'static>;

/// `w`'s tensor source re-targeted to the CPU in `dtype`, for split blocks.
/// The same weights (and precision rules) read onto the CPU in `dtype`, counted on their own.
fn on_cpu(w: &BlockWeights, dtype: DType) -> BlockWeights {
    w.detached(w.vb().clone().set_device(Device::Cpu).set_dtype(dtype))
}

/// How a UNet's blocks are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlacement {
    /// Blocks, in execution order, kept resident on the UNet's device (more than there are means
    /// all of them).
    pub resident: usize,
    /// What happens to the others.
    pub mode: OffloadMode,
    /// The dtype split blocks are stored and computed in on the CPU.
    pub cpu_dtype: DType,
}

impl BlockPlacement {
    /// Every block resident.
    pub fn resident() -> Self {
        Self { resident: usize::MAX, mode: OffloadMode::Split, cpu_dtype: DType::F32 }
    }
}

/// How one block is held, without its contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// On the UNet's device for the whole run.
    Resident,
    /// On the CPU for the whole run, computed there.
    Split,
    /// In the weight file; built on the UNet's device for each use.
    Streamed,
}

/// One block as it is held.
pub enum Slot {
    /// Built on the UNet's device.
    Resident(UnetBlock),
    /// Built on the CPU in the given dtype, holding the given bytes; activations travel to it
    /// and back.
    Split(UnetBlock, DType, u64),
    /// Not built: the weight source on the UNet's device (with its own ledger, so rebuilding it
    /// at each use never counts as resident), read at each use.
    Streamed(BlockWeights),
}

impl Slot {
    /// Places block `id`, the `index`-th in execution order. A streamed block is built once and
    /// dropped, so missing or mis-shaped tensors are reported at load, not mid-run.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(cfg: &UnetConfig, id: BlockId, index: usize, vb: &BlockWeights, p: &BlockPlacement) -> Result<Self> {
        if index < p.resident {
            return Ok(Slot::Resident(cfg.build_block(id, vb.clone())?));
        }
        match p.mode {
            OffloadMode::Split => {
                let w = on_cpu(vb, p.cpu_dtype);
                let block = cfg.build_block(id, w.clone())?;
                Ok(Slot::Split(block, p.cpu_dtype, w.ledger().bytes))
            }
            OffloadMode::Stream => {
                let w = vb.detached(vb.vb().clone());
                drop(cfg.build_block(id, w.clone())?);
                // read again at every run, which this load's cancel must not stop
                Ok(Slot::Streamed(w.without_cancel()))
            }
        }
    }

    /// Weight bytes held on the CPU for a split block (0 otherwise).
    pub fn split_bytes(&self) -> u64 {
        if let Slot::Split(_, _, b) = self { *b } else { 0 }
    }

    /// How the block is held.
    pub fn kind(&self) -> SlotKind {
        match self {
            Slot::Resident(_) => SlotKind::Resident,
            Slot::Split(..) => SlotKind::Split,
            Slot::Streamed(_) => SlotKind::Streamed,
        }
    }

    /// Runs the block ([`UnetBlock::forward`]) wherever it lives; inputs and outputs are on the
    /// UNet's device in its dtype.
    ///
    /// # Errors
    /// Tensor errors, or a streamed block whose tensors cannot be read.
    pub fn run(
        &self,
        cfg: &UnetConfig,
        id: BlockId,
        h: &Tensor,
        cond: &mut CondCache,
        skips: Vec<Tensor>,
        size: Option<(usize, usize)>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        match self {
            Slot::Resident(b) => b.forward(h, &cond.main(), skips, size),
            Slot::Streamed(vb) => {
                let block = cfg.build_block(id, vb.detached(vb.vb().clone()))?;
                block.forward(h, &cond.main(), skips, size)
                // `block` and its tensors are dropped here
            }
            Slot::Split(b, dtype, _) => {
                let (device, back) = (h.device().clone(), h.dtype());
                let to_cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(*dtype);
                let skips = skips.iter().map(to_cpu).collect::<Result<Vec<_>>>()?;
                let (out, made) = b.forward(&to_cpu(h)?, &cond.cpu(*dtype)?, skips, size)?;
                let to_dev = |t: &Tensor| t.to_dtype(back)?.to_device(&device);
                Ok((to_dev(&out)?, made.iter().map(to_dev).collect::<Result<Vec<_>>>()?))
            }
        }
    }
}

/// The conditioning of one UNet call, with its CPU copy made once, the first time a split block
/// needs it.
pub struct CondCache<'a> {
    emb: &'a Tensor,
    context: &'a Tensor,
    slice: usize,
    check: &'a dyn Fn() -> Result<()>,
    cpu: Option<(Tensor, Tensor)>,
}

impl<'a> CondCache<'a> {
    /// Wraps the conditioning on the UNet's device.
    pub fn new(cond: Cond<'a>) -> Self {
        Self { emb: cond.emb, context: cond.context, slice: cond.slice, check: cond.check, cpu: None }
    }

    /// The conditioning on the UNet's device.
    pub fn main(&self) -> Cond<'_> {
        Cond { emb: self.emb, context: self.context, slice: self.slice, check: self.check }
    }

    /// The conditioning on the CPU in `dtype` (copied on first use).
    ///
    /// # Errors
    /// Tensor errors.
    pub fn cpu(&mut self, dtype: DType) -> Result<Cond<'_>> {
        if self.cpu.as_ref().is_none_or(|(e, _)| e.dtype() != dtype) {
            let to_cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(dtype);
            self.cpu = Some((to_cpu(self.emb)?, to_cpu(self.context)?));
        }
        let (emb, context) = self.cpu.as_ref().expect("set above");
        Ok(Cond { emb, context, slice: self.slice, check: self.check })
    }
}
