//! End-to-end parity of the pipeline with diffusers' StableDiffusionPipeline on the tiny fixtures,
//! fed diffusers' exact noise, plus the run contract (progress, previews, cancel, batch).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use candle_core::Tensor;

use super::parity_tests::{fixture, max_diff, refs};
use super::noise::{NoiseFactory, NoiseSource};
use super::pipeline::load;
use crate::error::Error;
use crate::families::{Family, RunObserver};
use crate::knobs::Knobs;
use crate::request::{NoiseMode, Request, Scheduler};
use crate::worker::protocol::{Artifact, Preview, Stage};

/// Replays fixed noise: the initial latents, then one tensor per ancestral step.
struct Replay(VecDeque<Vec<f32>>);

impl NoiseSource for Replay {
    fn randn(&mut self, numel: usize) -> Vec<f32> {
        let v = self.0.pop_front().expect("the test ran out of recorded noise");
        assert_eq!(v.len(), numel);
        v
    }
}

/// Records what a run reports; cancels after `cancel_after` progress events if set.
#[derive(Default)]
struct Recorder {
    stages: Vec<Stage>,
    progress: Vec<(u32, u32)>,
    previews: usize,
    notes: Vec<String>,
    cancel_after: Option<usize>,
    /// Cancels as soon as this stage begins.
    cancel_in: Option<Stage>,
    /// Cancels from the n-th question asked while denoising on.
    cancel_at_denoise_question: Option<usize>,
    denoise_questions: std::cell::Cell<usize>,
}

impl RunObserver for Recorder {
    fn stage(&mut self, stage: Stage) -> crate::Result<()> {
        self.stages.push(stage);
        Ok(())
    }
    fn progress(&mut self, step: u32, total: u32) {
        self.progress.push((step, total));
    }
    fn preview(&mut self, preview: Preview) {
        if let Preview::Image(img) = preview {
            assert_eq!(img.rgb.len(), (img.width * img.height * 3) as usize);
            self.previews += 1;
        }
    }
    fn cancelled(&self) -> bool {
        if self.stages.last() == Some(&Stage::Denoise) {
            self.denoise_questions.set(self.denoise_questions.get() + 1);
        }
        self.cancel_after.is_some_and(|n| self.progress.len() >= n)
            || self.cancel_in.is_some_and(|s| self.stages.last() == Some(&s))
            || self.cancel_at_denoise_question.is_some_and(|n| self.denoise_questions.get() >= n)
    }
    fn note(&mut self, note: String) {
        self.notes.push(note);
    }
}

fn request(name: &str) -> Request {
    let p: serde_json::Value = super::folder::read_json(&fixture(name).join("refs.json")).unwrap();
    Request {
        prompt: p["prompt"].as_str().unwrap().into(),
        negative: p["negative"].as_str().unwrap().into(),
        seed: 42,
        steps: 4,
        guidance: 7.5,
        width: 32,
        height: 32,
        ..Request::default()
    }
}

fn replay_factory(r: &HashMap<String, Tensor>) -> NoiseFactory {
    let mut q = vec![r["latents"].flatten_all().unwrap().to_vec1::<f32>().unwrap()];
    for i in 0..r["step_noise"].dim(0).unwrap() {
        q.push(r["step_noise"].get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    Box::new(move |seed| {
        assert_eq!(seed, 42);
        Box::new(Replay(q.clone().into()))
    })
}

/// Final images equal diffusers' (output_type="np") within 1e-3 (the issue asks 2/255) for DDIM, Euler, Euler
/// ancestral, DPM++ 2M and DPM++ 2M Karras, on SD1-style (epsilon) and SD2-style (v) models.
#[test]
fn images_match_diffusers() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let r = refs(name);
        let mut model = load(&fixture(name), &Knobs::default()).unwrap();
        for (key, kind, karras) in [
            ("ddim", Scheduler::Ddim, false),
            ("euler", Scheduler::Euler, false),
            ("euler_a", Scheduler::EulerAncestral, false),
            ("dpmpp_2m", Scheduler::DpmPp2M, false),
            ("dpmpp_2m_karras", Scheduler::DpmPp2M, true),
        ] {
            model.set_noise(replay_factory(&r));
            let req = Request { scheduler: kind, karras, ..request(name) };
            let mut obs = Recorder::default();
            let img = model.run(&req, &mut obs).unwrap();
            let d = max_diff(&img, &r[&format!("image_{key}")]);
            // measured about 1e-5; the issue asks for 2/255, this is stricter
            assert!(d <= 1e-3, "{name} {key}: {d}");
        }
    }
}

/// A run reports text, denoise and decode stages, one progress event and one preview per step,
/// and returns one 8-bit image per batch entry, different per seed.
#[test]
fn run_reports_and_batches() {
    let mut model = load(&fixture("tiny-sd1"), &Knobs::default()).unwrap();
    let req = Request { batch: 2, steps: 3, ..request("tiny-sd1") };
    let mut obs = Recorder::default();
    let out = model.generate(&req, &mut obs).unwrap();
    assert_eq!(obs.stages, vec![Stage::Text, Stage::Denoise, Stage::Decode]);
    assert_eq!(&obs.progress[..3], &[(1, 3), (2, 3), (3, 3)]);
    assert_eq!(obs.previews, 3);
    assert_eq!(out.len(), 2);
    let imgs: Vec<_> = out
        .into_iter()
        .map(|a| match a {
            Artifact::Image(i) => i,
            Artifact::Audio(_) => panic!("audio from an image model"),
        })
        .collect();
    assert_eq!((imgs[0].width, imgs[0].height), (32, 32));
    assert_ne!(imgs[0].rgb, imgs[1].rgb);
    let w = model.weight_bytes();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, "cpu");
    assert!(w[0].1 > 100_000, "{w:?}");
}

/// Runs tiny-sd2's request under `obs`, which must cancel it; returns what it recorded.
fn cancelled_run(mut obs: Recorder) -> Recorder {
    let mut model = load(&fixture("tiny-sd2"), &Knobs::default()).unwrap();
    let err = model.generate(&request("tiny-sd2"), &mut obs).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    obs
}

/// Cancelling between steps stops the run with Error::Cancelled before decoding.
#[test]
fn cancel_between_steps() {
    let obs = cancelled_run(Recorder { cancel_after: Some(2), ..Recorder::default() });
    assert_eq!(obs.progress.len(), 2);
    assert!(!obs.stages.contains(&Stage::Decode));
}

/// A cancel that arrives as the text stage begins ends the run within it, before the denoising
/// stage (asked between the two prompts' encodings, each a fraction of a second).
#[test]
fn cancel_during_text() {
    let obs = cancelled_run(Recorder { cancel_in: Some(Stage::Text), ..Recorder::default() });
    assert_eq!(obs.stages, vec![Stage::Text], "a stage began after the cancel");
}

/// A cancel that arrives inside a denoising step ends the run within that UNet call (asked
/// before each resnet): no step completes. The first question is the step's own, the third
/// comes from inside the UNet and is the last.
#[test]
fn cancel_within_a_step() {
    let obs = cancelled_run(Recorder { cancel_at_denoise_question: Some(3), ..Recorder::default() });
    assert_eq!(obs.denoise_questions.get(), 3, "asked again after the cancel");
    assert!(obs.progress.is_empty(), "a step completed: {:?}", obs.progress);
    assert!(!obs.stages.contains(&Stage::Decode));
}

/// A cancel that arrives as the decode begins ends the run with Error::Cancelled before the
/// first of the batch's images is decoded (tiled or not).
#[test]
fn cancel_during_decode() {
    for tile in ["0", "4"] {
        let mut knobs = Knobs::default();
        knobs.set("slicing.vae_tile", tile).unwrap();
        let mut model = load(&fixture("tiny-sd2"), &knobs).unwrap();
        let mut obs = Recorder { cancel_in: Some(Stage::Decode), ..Recorder::default() };
        let req = Request { batch: 2, ..request("tiny-sd2") };
        let err = model.generate(&req, &mut obs).unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(obs.progress.len(), 4, "tile {tile}: decode progress {:?}", obs.progress);
    }
}

/// A cancel asked for while a model loads ends the load with Error::Cancelled at the next tensor:
/// the check is asked once per tensor (and before each component), and nothing is read after it
/// says yes (one more question turns the constructor's error into Error::Cancelled).
#[test]
fn cancel_during_load() {
    let (check, asked) = cancel_after(u32::MAX);
    super::pipeline::load_checked(&fixture("tiny-sd1"), &Knobs::default(), &check).unwrap();
    let per_load = asked.load(Ordering::SeqCst);
    assert!(per_load > 100, "asked only {per_load} times: once per tensor expected");
    // in the text encoder, and a third of the way through the load (in the UNet, stored as q4k:
    // each tensor read and quantized in turn)
    let mut q4k = Knobs::default();
    q4k.set("precision.unet", "q4k").unwrap();
    for (knobs, n) in [(Knobs::default(), 2), (q4k, per_load / 3)] {
        let (check, asked) = cancel_after(n);
        let err = super::pipeline::load_checked(&fixture("tiny-sd1"), &knobs, &check).err().unwrap();
        assert!(matches!(err, Error::Cancelled), "{err}");
        let asked = asked.load(Ordering::SeqCst);
        assert!((n + 1..=n + 2).contains(&asked), "cancelled at question {}, asked {asked} times", n + 1);
    }
}

/// A check that says "cancelled" from its `n+1`-th question on, and the count of questions.
fn cancel_after(n: u32) -> (crate::CancelCheck, Arc<AtomicU32>) {
    let asked = Arc::new(AtomicU32::new(0));
    let a = asked.clone();
    (crate::CancelCheck::new(move || a.fetch_add(1, Ordering::SeqCst) >= n), asked)
}

/// attention_slice as a knob leaves the image unchanged (within 1e-5), and a too-long prompt
/// and an unimplemented precision are reported as notes.
#[test]
fn slicing_knob_and_notes() {
    let name = "tiny-sd1";
    let r = refs(name);
    let req = Request { scheduler: Scheduler::Euler, ..request(name) };
    let mut plain = load(&fixture(name), &Knobs::default()).unwrap();
    plain.set_noise(replay_factory(&r));
    let a = plain.run(&req, &mut Recorder::default()).unwrap();
    let mut knobs = Knobs::default();
    knobs.set("slicing.attention_slice", "3").unwrap();
    let mut quant = knobs;
    quant.set("precision.unet", "q4k").unwrap();
    let mut q = load(&fixture(name), &quant).unwrap();
    q.set_noise(replay_factory(&r));
    let mut obs = Recorder::default();
    let long = Request { prompt: "a red cat ".repeat(40), ..req.clone() };
    q.run(&long, &mut obs).unwrap();
    assert!(obs.notes.iter().any(|n| n.contains("prompt") && n.contains("dropped")), "{:?}", obs.notes);
    assert!(obs.notes.iter().any(|n| n.contains("q4k")), "{:?}", obs.notes);
    let mut sliced = load(&fixture(name), &knobs).unwrap();
    sliced.set_noise(replay_factory(&r));
    let b = sliced.run(&req, &mut Recorder::default()).unwrap();
    assert!(max_diff(&a, &b) <= 1e-5);
}

/// Loading a folder that is not a diffusers pipeline names the folder and the problem.
#[test]
fn load_errors_name_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(dir.path(), &Knobs::default()).err().unwrap().to_string();
    assert!(e.contains("model_index.json"), "{e}");
    std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
    let e = load(dir.path(), &Knobs::default()).err().unwrap().to_string();
    assert!(e.contains("vocab.json"), "{e}");
}

/// f16 and bf16 precision run end to end on the CPU within 0.02 and 0.05 of diffusers' f32 image,
/// stored in half the bytes (layer norms stay f32) and computed in f32, and say so.
#[test]
fn half_precisions_on_cpu() {
    let name = "tiny-sd2";
    let r = refs(name);
    let req = Request { scheduler: Scheduler::Euler, ..request(name) };
    let full = load(&fixture(name), &Knobs::default()).unwrap().weight_bytes()[0].1;
    let mut knobs = Knobs::default();
    knobs.set("precision", "f16").unwrap();
    let mut model = load(&fixture(name), &knobs).unwrap();
    let half = model.weight_bytes()[0].1 as f64 / full as f64;
    assert!((0.5..0.52).contains(&half), "f16 bytes {half}× f32");
    model.set_noise(replay_factory(&r));
    let mut obs = Recorder::default();
    let img = model.run(&req, &mut obs).unwrap();
    let d = max_diff(&img, &r["image_euler"]);
    println!("f16 on cpu: {half:.3}× the f32 bytes, max diff {d}");
    assert!(d <= 0.02, "f16: {d}");
    assert!(d > 0.0, "f16 gave exactly the f32 image: the knob did nothing");
    assert!(obs.notes.iter().filter(|n| n.contains("f16 is stored in f16")).count() == 3, "{:?}", obs.notes);

    knobs.set("precision", "bf16").unwrap();
    let mut model = load(&fixture(name), &knobs).unwrap();
    // stored bf16, layer norms f32 (candle's kernel wants them in the compute dtype)
    let half = model.weight_bytes()[0].1 as f64 / full as f64;
    assert!((0.5..0.52).contains(&half), "bf16 bytes {half}× f32");
    model.set_noise(replay_factory(&r));
    let mut obs = Recorder::default();
    let img = model.run(&req, &mut obs).unwrap();
    let d = max_diff(&img, &r["image_euler"]);
    println!("bf16 on cpu: {half:.3}× the f32 bytes, max diff {d}");
    assert!(d <= 0.05, "bf16: {d}");
    assert!(obs.notes.iter().filter(|n| n.contains("bf16")).count() == 3, "{:?}", obs.notes);
}

/// With the default (torch-compatible) noise, seed 42 reproduces diffusers' images directly,
/// ancestral per-step noise included.
#[test]
fn torch_noise_reproduces_diffusers() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let r = refs(name);
        let mut model = load(&fixture(name), &Knobs::default()).unwrap();
        for (key, kind) in [("euler", Scheduler::Euler), ("euler_a", Scheduler::EulerAncestral)] {
            let req = Request { scheduler: kind, ..request(name) };
            let img = model.run(&req, &mut Recorder::default()).unwrap();
            let d = max_diff(&img, &r[&format!("image_{key}")]);
            assert!(d <= 1e-3, "{name} {key}: {d}");
        }
    }
}

/// Every image of a batch of two matches diffusers' own draw (no latents passed in,
/// `tools/make_sd_fixtures.py --batch-refs`), for Euler and Euler ancestral: `noise = "batch"`
/// against one generator for the batch, `noise = "per-image"` against a list of generators seeded
/// 42 and 43. The two references' second images differ by far more than the tolerance, so each
/// mode is told apart.
#[test]
fn batches_match_diffusers_in_both_noise_modes() {
    let name = "tiny-sd1";
    let r = candle_core::safetensors::load(fixture(name).join("refs_batch.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut model = load(&fixture(name), &Knobs::default()).unwrap();
    for (key, kind) in [("euler", Scheduler::Euler), ("euler_a", Scheduler::EulerAncestral)] {
        let (batch_ref, per_image_ref) = (&r[&format!("image_{key}_b2")], &r[&format!("image_{key}_b2_per_image")]);
        assert!(max_diff(&batch_ref.get(1).unwrap(), &per_image_ref.get(1).unwrap()) > 0.1, "{key}: the references do not tell the modes apart");
        for (noise, want) in [(NoiseMode::Batch, batch_ref), (NoiseMode::PerImage, per_image_ref)] {
            let req = Request { scheduler: kind, batch: 2, noise, ..request(name) };
            let img = model.run(&req, &mut Recorder::default()).unwrap();
            let d = max_diff(&img, want);
            assert!(d <= 1e-3, "{key} {noise}: {d}");
        }
    }
}
