//! Model families the engine can run, and the interface the worker drives them through.

pub mod latent_diffusion;

use crate::error::{Error, Result};
use crate::formats::Format;
use crate::knobs::Knobs;
use crate::model::ModelRef;
use crate::request::Request;
use crate::worker::protocol::{Artifact, Preview, Stage};

/// How a family reports on a run in progress; implemented by the worker (and by tests).
pub trait RunObserver {
    /// A new stage begins (timings and memory peaks are kept per stage). The observer may refuse
    /// it, e.g. when the memory the stage needs cannot be allocated now; the family then stops
    /// with that error.
    ///
    /// # Errors
    /// Why the stage cannot run.
    fn stage(&mut self, stage: Stage) -> Result<()>;
    /// Step `step` of `total` in the current stage is done.
    fn progress(&mut self, step: u32, total: u32);
    /// A cheap look at the current state.
    fn preview(&mut self, preview: Preview);
    /// True once the user asked to cancel; families check it between steps.
    fn cancelled(&self) -> bool;
    /// The same question as an owned check a loader can hand down to what reads tensors, so a
    /// cancel ends a load within one tensor. Observers whose cancel comes from another thread (the
    /// worker's) override it; the default never cancels, so a load under such an observer runs
    /// to its end.
    fn cancel_check(&self) -> crate::CancelCheck {
        crate::CancelCheck::never()
    }
    /// Something the run's telemetry must say, e.g. "unet: bf16 convolution computed in f32 on cpu".
    fn note(&mut self, note: String);
}

/// A loaded model that can generate.
pub trait Family: Send {
    /// The family's name as written in profiles, e.g. `latent-diffusion`.
    fn name(&self) -> &str;
    /// Resident weight bytes per device name (`cpu`, `cuda:0`), counted from the loaded tensors.
    fn weight_bytes(&self) -> Vec<(String, u64)>;
    /// Runs a request to the end, or returns [`crate::Error::Cancelled`] between steps.
    ///
    /// # Errors
    /// Invalid requests, tensor errors, out of memory, cancellation.
    fn generate(&mut self, request: &Request, observer: &mut dyn RunObserver) -> Result<Vec<Artifact>>;
    /// Takes `knobs` in place of `loaded_with`, the knobs it was loaded with, without reading a
    /// weight, when the change is one it can apply so (slicing: [`Knobs::same_weights`] holds);
    /// returns whether it did. False, the default, means the model must be loaded again.
    fn retune(&mut self, loaded_with: &Knobs, knobs: &Knobs) -> bool {
        let _ = (loaded_with, knobs);
        false
    }
}

/// Opens `model` with the family that can run it, placing its weights as `knobs` say, asking
/// `obs` (its [`RunObserver::cancel_check`]) whether to cancel before each tensor.
///
/// # Errors
/// The model cannot be found or read, no family can run it (the message says what it is), or
/// the family's own load errors.
pub fn load(model: &ModelRef, knobs: &Knobs, obs: &mut dyn RunObserver) -> Result<Box<dyn Family>> {
    let cancelled = obs.cancel_check();
    let path = model.resolve()?;
    if path.join("model_index.json").is_file() {
        return Ok(Box::new(latent_diffusion::load_checked(&path, knobs, &cancelled)?));
    }
    let insp = crate::formats::inspect(&path)?;
    // a single file is tried as an LDM checkpoint, which names a few keys when it is not one
    if matches!(insp.format, Format::Safetensors | Format::Ckpt) && path.is_file() {
        return Ok(Box::new(latent_diffusion::load_checked(&path, knobs, &cancelled)?));
    }
    Err(Error::file(
        &path,
        format!(
            "a {} {} cannot be run yet: this build runs Stable Diffusion 1.x/2.x (diffusers folders and single-file checkpoints)",
            insp.family.label,
            insp.format.name()
        ),
    ))
}
