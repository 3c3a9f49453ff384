//! Model families the engine can run, and the interface the worker drives them through.

pub(crate) mod holding;
pub mod latent_diffusion;
pub mod musicgen;

use crate::error::{Error, Result};
use std::path::Path;

use crate::formats::Inspection;
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
    /// Its components as the knobs name them, in pipeline order (profiles list them; none for
    /// a family with no per-component knobs).
    fn components(&self) -> Vec<ComponentSpec> {
        Vec::new()
    }
    /// The request fields it takes besides the prompt, seed and batch, in the order the request
    /// panel shows them.
    fn fields(&self) -> Vec<FieldSpec> {
        Vec::new()
    }
    /// Resident weight bytes per device name (`cpu`, `cuda:0`), counted from the loaded tensors.
    fn weight_bytes(&self) -> Vec<(String, u64)>;
    /// Runs a request to the end, or returns [`crate::Error::Cancelled`] between steps.
    ///
    /// # Errors
    /// Invalid requests, tensor errors, out of memory, cancellation.
    fn generate(&mut self, request: &Request, observer: &mut dyn RunObserver) -> Result<Vec<Artifact>>;
    /// Takes `knobs` in place of `loaded_with`, the knobs it was loaded with, reading again only
    /// the components whose precision or placement changed (each freed before it is read), and
    /// applying knobs that change no weight (slicing) in place. [`Retuned::No`], the default,
    /// means the whole model must be loaded again (a device change, or a family that cannot).
    ///
    /// # Errors
    /// As a load's, for the components read again; the model is then unusable and the caller
    /// drops it.
    fn retune(&mut self, loaded_with: &Knobs, knobs: &Knobs, cancel: &crate::CancelCheck) -> Result<Retuned> {
        let _ = (loaded_with, knobs, cancel);
        Ok(Retuned::No)
    }
}

/// What [`Family::retune`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retuned {
    /// Nothing: load the model again.
    No,
    /// It took the knobs, reading again these components (none: nothing was read).
    Read(Vec<String>),
}

/// One component of a model as its family declares it: what the knobs call it, what people call
/// it, and which knobs it honours. The knobs panel, the CLI's checks, the planner and the profile
/// read these; nothing outside the family names a component itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ComponentSpec {
    /// Its name in knobs and profiles (`text`, `unet`, `vae`, `text_2`): `precision.NAME`.
    pub name: &'static str,
    /// Other names read as this one (`text_encoder`).
    #[serde(skip)]
    pub aliases: &'static [&'static str],
    /// For people: "Text encoder", "UNet".
    pub label: &'static str,
    /// Whether `offload.NAME` may place it apart from the run's device.
    pub placeable: bool,
    /// Its offloadable units (`blocks`, `layers`), placed with `offload.gpu_blocks` and
    /// `offload.mode`; the count comes from the model (the plan's `unet_blocks`).
    pub units: Option<&'static str>,
}

/// A request field a family reads (beyond the prompt, seed and batch every run has), declared
/// so that the request panel shows exactly what the model takes, with its bounds, and the CLI's
/// `--field KEY=VALUE` and profiles use the same keys ([`crate::Request::field`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FieldSpec {
    /// The request's key (`steps`, `guidance`, `seconds`, …).
    pub key: &'static str,
    /// For people: "Steps".
    pub label: &'static str,
    pub kind: FieldKind,
    /// A hover hint; empty for none.
    pub help: &'static str,
}

/// What kind of value a request field takes, with its bounds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum FieldKind {
    /// Free text over this many lines.
    Text { rows: u8 },
    /// A whole number in `min..=max`, moved in steps of `step` (sizes in multiples of 8).
    Int { min: i64, max: i64, step: i64 },
    /// A number in `min..=max`; `unit` is shown after it (" s").
    Float { min: f64, max: f64, step: f64, unit: &'static str },
    /// One of these names.
    Choice(&'static [&'static str]),
    /// On or off.
    Flag,
}

/// How sure a family is that it runs a model, and on what evidence.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Recognition {
    /// The family's name (`latent-diffusion`), as in profiles.
    pub family: &'static str,
    /// 0 to 1: 1 when the model says what it is and the family runs exactly that; lower when the
    /// family only tries a model it cannot tell apart (its load then names what is missing).
    pub confidence: f32,
    /// The evidence, for people ("a diffusers folder of Stable Diffusion 1.x: …").
    pub reason: String,
    /// The model's components as this family runs them, in pipeline order.
    pub components: Vec<ComponentSpec>,
    /// The request fields this model takes, in the order the request panel shows them.
    pub fields: Vec<FieldSpec>,
}

/// A family this build runs: how it recognises a model from its inspection (`None`: it cannot
/// run it), and how it loads one, asking a [`CancelCheck`](crate::CancelCheck) before each tensor.
pub struct FamilyEntry {
    pub name: &'static str,
    pub recognise: fn(&Inspection) -> Option<Recognition>,
    pub load: fn(&Path, &Knobs, &crate::CancelCheck) -> Result<Box<dyn Family>>,
}

/// Every family this build runs; [`load`] and `headroom inspect` choose among them.
pub const FAMILIES: &[FamilyEntry] = &[latent_diffusion::ENTRY, musicgen::ENTRY];

/// The family that would run the inspected model: the most confident recogniser; `None` when no
/// family of this build runs it.
pub fn recognise(insp: &Inspection) -> Option<(Recognition, &'static FamilyEntry)> {
    FAMILIES
        .iter()
        .filter_map(|f| (f.recognise)(insp).map(|r| (r, f)))
        .max_by(|a, b| a.0.confidence.total_cmp(&b.0.confidence))
}

/// Why a model no family of this build runs ([`recognise`] is `None`) cannot be run, for people:
/// "running language models (llm:llama) is not supported yet", "running Stable Diffusion 1.x
/// (sd1) from gguf is not supported yet". What `inspect` and the planner say.
pub fn not_supported(insp: &Inspection) -> String {
    let id = insp.family.id.as_str();
    if id.starts_with("llm:") {
        return format!("running language models ({id}) is not supported yet");
    }
    if insp.format == crate::formats::Format::Gguf
        && matches!(id, "unknown" | "sd1" | "sd2" | "sdxl")
        && !insp.family.label.starts_with("Diffusion model")
        && let Some(problem) = latent_diffusion::gguf_problem(insp)
    {
        return if problem.starts_with("holds only a denoiser") {
            format!("a GGUF that {problem}")
        } else {
            format!("a GGUF Headroom cannot run: {problem}")
        };
    }
    let what = match (id, insp.family.label.as_str()) {
        (_, "Unknown") => "this model".to_string(),
        ("unknown", label) => label.to_string(),
        (id, label) => format!("{label} ({id})"),
    };
    format!("running {what} from {} is not supported yet", insp.format.name())
}

/// `knobs` in the words of the family that runs `model` ([`Knobs::for_family`]): aliases made
/// its component names, settings alike written once; unchanged when no family runs it (its load
/// or plan says so).
///
/// # Errors
/// The model cannot be read, or the knobs name a component it does not have (one line naming the
/// knob, the model and its components).
pub fn knobs_for(model: &ModelRef, knobs: &Knobs) -> Result<Knobs> {
    let insp = crate::formats::inspect(&model.resolve()?)?;
    match recognise(&insp) {
        Some((r, _)) => knobs.for_family(&r.components, &model.to_string()),
        None => Ok(*knobs),
    }
}

/// Opens `model` with the family that recognises it most surely ([`recognise`]), placing its
/// weights as `knobs` say, asking `obs` (its [`RunObserver::cancel_check`]) whether to cancel
/// before each tensor.
///
/// # Errors
/// The model cannot be found or read, no family can run it (the message says what it is), or
/// the family's own load errors.
pub fn load(model: &ModelRef, knobs: &Knobs, obs: &mut dyn RunObserver) -> Result<Box<dyn Family>> {
    let cancel = obs.cancel_check();
    let path = model.resolve()?;
    let insp = crate::formats::inspect(&path)?;
    if let Some((_, family)) = recognise(&insp) {
        return (family.load)(&path, knobs, &cancel);
    }
    if insp.format == crate::formats::Format::Gguf && !insp.family.id.starts_with("llm:") {
        return Err(Error::file(&path, not_supported(&insp)));
    }
    let runs: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
    Err(Error::file(
        &path,
        format!(
            "a {} {} cannot be run yet: this build runs {} (Stable Diffusion 1.x/2.x diffusers folders and single-file checkpoints, SDXL diffusers folders, MusicGen folders)",
            insp.family.label,
            insp.format.name(),
            runs.join(", ")
        ),
    ))
}

/// What the families' unit tests observe a run with.
#[cfg(test)]
pub(crate) mod testing {
    use crate::worker::protocol::{Preview, Stage};

    /// Keeps a run's notes and the stages it entered; never cancels.
    #[derive(Default)]
    pub(crate) struct Notes {
        pub notes: Vec<String>,
        pub stages: Vec<Stage>,
    }

    impl super::RunObserver for Notes {
        fn stage(&mut self, stage: Stage) -> crate::Result<()> {
            self.stages.push(stage);
            Ok(())
        }
        fn progress(&mut self, _: u32, _: u32) {}
        fn preview(&mut self, _: Preview) {}
        fn cancelled(&self) -> bool {
            false
        }
        fn note(&mut self, note: String) {
            self.notes.push(note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stable Diffusion folders and single files and SDXL folders are recognised surely, with the
    /// evidence; a GGUF language model and an SDXL single file by no family of this build; a
    /// single file whose family cannot be told is only tried.
    #[test]
    fn recognisers_choose_and_say_why() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let insp = |p: &str| crate::formats::inspect(&root.join(p)).unwrap();
        let (r, f) = recognise(&insp("sd/tiny-sd1")).unwrap();
        assert_eq!((r.family, f.name, r.confidence), ("latent-diffusion", "latent-diffusion", 1.0));
        assert!(r.reason.starts_with("a diffusers folder of Stable Diffusion 1.x: "), "{}", r.reason);
        let (r, _) = recognise(&insp("formats/tiny.safetensors")).unwrap();
        assert!(r.reason.starts_with("a single-file checkpoint of Stable Diffusion 2.x: "), "{}", r.reason);
        let music = insp("musicgen/tiny-musicgen");
        assert_eq!((music.family.id.as_str(), music.family.label.as_str()), ("musicgen", "MusicGen (text to music)"));
        let (r, f) = recognise(&music).unwrap();
        assert_eq!((r.family, f.name, r.components.len(), r.fields.len()), ("musicgen", "musicgen", 3, 5));
        let llm = insp("formats/tiny.gguf");
        assert!(recognise(&llm).is_none());
        assert_eq!(not_supported(&llm), "running language models (llm:llama) is not supported yet");
        let mut unknown = insp("formats/tiny.safetensors");
        unknown.family.id = "unknown".into();
        assert!(recognise(&unknown).is_some_and(|(r, _)| r.confidence < 0.5));
        let (r, f) = recognise(&insp("sdxl/tiny-sdxl")).unwrap();
        assert_eq!((r.family, f.name, r.confidence), ("latent-diffusion", "latent-diffusion", 1.0));
        assert!(r.reason.starts_with("a diffusers folder of Stable Diffusion XL: "), "{}", r.reason);
        let (r, _) = recognise(&insp("sdxl/tiny-sdxl.safetensors")).unwrap();
        assert_eq!((r.confidence, r.components.len()), (1.0, 4));
        assert!(r.reason.starts_with("a single-file checkpoint of Stable Diffusion XL: "), "{}", r.reason);
        let mut xl = insp("formats/tiny.gguf");
        xl.family.id = "sdxl".into();
        xl.family.label = "Stable Diffusion XL".into();
        // an SDXL GGUF runs when its names are sd.cpp's (gguf_tests); these are a language model's
        assert!(recognise(&xl).is_none());
        let e = not_supported(&xl);
        assert!(e.starts_with("a GGUF Headroom cannot run: its tensor names match no Stable Diffusion layout"), "{e}");
    }
}
