//! The app on the real engine: worker thread, output writing (PNG with the profile embedded),
//! profiles, restore and reproduce, with a stand-in family so no model weights are needed. The
//! model dropped is the tiny SD fixture, so inspect and the planner are the real ones too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use headroom_engine::families::{Family, RunObserver};
use headroom_engine::media::Image;
use headroom_engine::profile::{ModelInfo, Profile};
use headroom_engine::worker::{Artifact, Preview, Stage};
use headroom_engine::{Knobs, Request};
use headroom_ui::app::HeadroomApp;
use headroom_ui::app::engine_link::EngineBackend;
use headroom_ui::app::state::SavedState;

/// A family that paints a seed-dependent gradient in `steps` steps, reporting like a real one.
struct Gradient;

impl Family for Gradient {
    fn name(&self) -> &str {
        "test-gradient"
    }
    fn weight_bytes(&self) -> Vec<(String, u64)> {
        vec![("cpu".into(), 1024)]
    }
    fn generate(
        &mut self,
        r: &Request,
        obs: &mut dyn RunObserver,
    ) -> headroom_engine::Result<Vec<Artifact>> {
        obs.stage(Stage::Denoise)?;
        for step in 1..=r.steps {
            if obs.cancelled() {
                return Err(headroom_engine::Error::Cancelled);
            }
            obs.preview(Preview::Image(Image {
                width: 4,
                height: 4,
                rgb: vec![(step * 10) as u8; 48],
            }));
            obs.progress(step, r.steps);
        }
        obs.stage(Stage::Decode)?;
        let (w, h) = (r.width, r.height);
        let rgb = (0..w * h)
            .flat_map(|i| {
                [
                    (i % w) as u8 ^ r.seed as u8,
                    (i / w) as u8,
                    (r.seed >> 8) as u8,
                ]
            })
            .collect();
        Ok(vec![Artifact::Image(Image {
            width: w,
            height: h,
            rgb,
        })])
    }
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/sd/tiny-sd1")
        .display()
        .to_string()
}

fn harness(out_dir: PathBuf) -> Harness<'static, HeadroomApp> {
    let backend = EngineBackend::spawn_with(
        || {},
        Box::new(|_, _, _| Ok(Box::new(Gradient) as Box<dyn Family>)),
    );
    app_harness(backend, out_dir, 4)
}

/// The app on `backend`, writing into `out_dir`, with `steps` denoising steps requested.
fn app_harness(backend: EngineBackend, out_dir: PathBuf, steps: u32) -> Harness<'static, HeadroomApp> {
    let mut state = SavedState::default();
    state.request.steps = steps;
    let app = HeadroomApp::new(state, Box::new(backend), out_dir);
    Harness::builder()
        .with_size([1440.0, 900.0])
        .build_ui_state(|ui, app: &mut HeadroomApp| app.frame_ui(ui), app)
}

/// The candidate model's headers have been read and its plan made (on the chores thread), so
/// the model card's layout (and its Load button) stays where it is.
fn inspected(a: &HeadroomApp) -> bool {
    a.rt.candidate.as_ref().is_some_and(|c| c.summary.is_some()) && a.rt.plan.is_some() && !a.rt.chores.busy()
}

/// Steps the UI until `done` holds (the engine works on its own thread), failing after 20 s.
fn step_until(
    h: &mut Harness<'static, HeadroomApp>,
    what: &str,
    done: impl Fn(&HeadroomApp) -> bool,
) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {:?}",
            h.state().rt.notices
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.run_steps(2);
}

/// Drop the fixture, Load, Generate: the real worker writes a PNG and a profile, and the app shows
/// the output card; Rerun from history reproduces it identically.
#[test]
fn generate_and_reproduce_through_the_real_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path().to_path_buf());
    h.state_mut()
        .rt
        .commands
        .push(headroom_ui::app::AppCommand::InspectModel(fixture()));
    step_until(&mut h, "the inspection", inspected);
    h.get_by_label("Stable Diffusion 1.x");
    h.get_by_label("Load").click();
    step_until(&mut h, "the model to load", |a| a.rt.loaded.is_some());
    h.get_by_label("Generate").click();
    step_until(&mut h, "the output", |a| a.rt.outputs.first().is_some_and(|o| o.media.is_some()));
    let card = &h.state().rt.outputs[0];
    assert!(
        card.media.as_ref().is_some_and(|m| m.is_ok()),
        "the PNG reads back: {:?}",
        card.media.as_ref().and_then(|m| m.as_ref().err())
    );
    assert!(card.record.outputs[0].exists() && card.record.profile_path.exists());
    assert_eq!(card.record.request.seed, 42);
    h.get_by_label("seed 42");

    h.get_by_label("History").click();
    step_until(&mut h, "the history", |a| a.rt.history.is_some());
    assert_eq!(
        h.state().rt.history.as_ref().map(Vec::len),
        Some(1),
        "the profile is a history card"
    );
    h.get_by_label("Rerun").click();
    step_until(&mut h, "the reproduction", |a| a.rt.outputs.get(1).is_some_and(|o| o.reproduction.is_some()));
    assert_eq!(
        h.state().rt.outputs[1].reproduction,
        Some(Ok(())),
        "same seed, same knobs: identical"
    );
    h.get_by_label("reproduced: identical");
}

/// Dropping a PNG with an embedded profile (written by the engine's media module) restores the
/// seed and the prompt.
#[test]
fn dropping_a_png_with_a_profile_restores_seed_and_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("made-earlier.png");
    let request = Request {
        prompt: "a yellow star".into(),
        seed: 777,
        ..Request::default()
    };
    let profile = Profile::new(
        ModelInfo {
            source: fixture(),
            ..ModelInfo::default()
        },
        request,
        Knobs::default(),
    );
    let img = Image {
        width: 8,
        height: 8,
        rgb: vec![200; 192],
    };
    headroom_engine::media::write_png(&png, &img, Some(&profile)).unwrap();

    let mut h = harness(dir.path().to_path_buf());
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(png)));
    step_until(&mut h, "the restore", |a| a.state.request.seed == 777);
    assert_eq!(h.state().state.request.prompt, "a yellow star");
    assert_eq!(
        h.state().rt.candidate.as_ref().map(|c| c.model.clone()),
        Some(fixture()),
        "its model is inspected"
    );
}

#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// A family that takes `ms` per step, for watching the UI while a run is in progress.
struct Slow(u64);

impl Family for Slow {
    fn name(&self) -> &str {
        "test-slow"
    }
    fn weight_bytes(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    fn generate(
        &mut self,
        r: &Request,
        obs: &mut dyn RunObserver,
    ) -> headroom_engine::Result<Vec<Artifact>> {
        obs.stage(Stage::Denoise)?;
        for step in 1..=r.steps {
            if obs.cancelled() {
                return Err(headroom_engine::Error::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(self.0));
            let rgb = vec![(step * 7) as u8; 64 * 64 * 3];
            obs.preview(Preview::Image(Image {
                width: 64,
                height: 64,
                rgb,
            }));
            obs.progress(step, r.steps);
        }
        Gradient.generate(
            &Request {
                steps: 1,
                ..r.clone()
            },
            obs,
        )
    }
}

/// While a run streams progress and previews the UI keeps drawing frames, and the run ends in an
/// output card. Prints the frame build times (p50/p99 of the app's own per-frame timer) as a
/// measurement; speed is not asserted (timed tests flake on shared machines).
#[test]
fn ui_keeps_drawing_during_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EngineBackend::spawn_with(
        || {},
        Box::new(|_, _, _| Ok(Box::new(Slow(20)) as Box<dyn Family>)),
    );
    let mut h = app_harness(backend, dir.path().to_path_buf(), 50);
    h.state_mut()
        .rt
        .commands
        .push(headroom_ui::app::AppCommand::InspectModel(fixture()));
    step_until(&mut h, "the inspection", inspected);
    h.get_by_label("Load").click();
    step_until(&mut h, "the model to load", |a| a.rt.loaded.is_some());
    assert!(h.state().rt.run_frame_ms.is_empty(), "no run yet");
    h.get_by_label("Generate").click();
    step_until(&mut h, "the output", |a| !a.rt.outputs.is_empty());
    let (p50, p99) = h.state().rt.run_frame_percentiles().unwrap();
    let n = h.state().rt.run_frame_ms.len();
    println!("frames during a 50-step run: {n}, p50 {p50:.2} ms, p99 {p99:.2} ms");
    assert!(n > 50, "the UI kept drawing during the run ({n} frames)");
    assert!(p50 <= p99);
}

/// Esc cancels a run on the real worker: the run stops, no output card, and the app says so.
#[test]
fn escape_cancels_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EngineBackend::spawn_with(
        || {},
        Box::new(|_, _, _| Ok(Box::new(Slow(50)) as Box<dyn Family>)),
    );
    let mut state = SavedState::default();
    state.request.steps = 200;
    let app = HeadroomApp::new(state, Box::new(backend), dir.path().to_path_buf());
    let mut h = Harness::builder()
        .with_size([1440.0, 900.0])
        .build_ui_state(|ui, app: &mut HeadroomApp| app.frame_ui(ui), app);
    h.state_mut()
        .rt
        .commands
        .push(headroom_ui::app::AppCommand::InspectModel(fixture()));
    step_until(&mut h, "the inspection", inspected);
    h.get_by_label("Generate").click();
    step_until(&mut h, "the first step", |a| {
        a.rt.run.as_ref().is_some_and(|r| r.step >= 1)
    });
    h.key_press(egui::Key::Escape);
    let pressed = Instant::now();
    step_until(&mut h, "the cancel", |a| a.rt.run.is_none());
    // Generous bound: the run has 200 × 50 ms left, the cancel lands at the next step.
    assert!(
        pressed.elapsed() < Duration::from_secs(5),
        "stopped at a step boundary, not at the end"
    );
    assert!(h.state().rt.outputs.is_empty());
    assert!(
        h.state()
            .rt
            .notices
            .iter()
            .any(|n| n.text == "Run cancelled"),
        "{:?}",
        h.state().rt.notices
    );
}

/// The real engine and the real family with `builtin:melodies`: a spectrogram run (Griffin-Lim
/// included) comes back as an audio output card, a WAV with its waveform and transport.
#[test]
fn melodies_run_makes_an_audio_card() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = app_harness(EngineBackend::spawn(|| {}), dir.path().to_path_buf(), 2);
    h.state_mut()
        .rt
        .commands
        .push(headroom_ui::app::AppCommand::InspectModel("builtin:melodies".into()));
    step_until(&mut h, "the inspection", inspected);
    h.get_by_label("Seconds"); // its manifest makes it an audio model: length, not size
    h.get_by_label("Load").click();
    step_until(&mut h, "the model to load", |a| a.rt.loaded.is_some());
    h.get_by_label("Generate").click();
    step_until(&mut h, "the audio output", |a| a.rt.outputs.first().is_some_and(|o| o.media.is_some()));
    let card = &h.state().rt.outputs[0];
    match &card.media {
        Some(Ok(headroom_ui::app::backend::Media::Audio(a))) => {
            assert_eq!(a.sample_rate, 16000);
            assert!(a.duration_secs() > 1.0, "{} s", a.duration_secs());
        }
        other => panic!("expected audio, got {:?}", other.as_ref().map(|m| m.as_ref().map(|_| "an image"))),
    }
    assert!(card.record.outputs[0].extension().is_some_and(|e| e == "wav"));
    h.get_by_label("Play");
    h.get_by_label("waveform");
}

/// A GGUF language model on the real backend (inspect and planner): inspect summarizes it, and
/// its plan (what the app's plan bar holds) is the planner's one-line refusal naming the file,
/// never a Stable Diffusion plan, also once inspect has run.
#[test]
fn gguf_language_model_gets_no_plan() {
    use headroom_ui::app::Backend as _;
    let backend = EngineBackend::spawn(|| {}).reader();
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/formats/tiny.gguf")
        .display()
        .to_string();
    let plan = || backend.plan(&gguf, &Knobs::default(), &Request::default(), None);
    let before = plan().expect_err("no plan before inspect");
    assert_eq!(backend.inspect(&gguf).unwrap().parameters, 1200);
    let after = plan().expect_err("no plan after inspect");
    assert_eq!(before, after);
    for words in ["tiny.gguf", "cannot be planned", "llm:llama", "not supported yet"] {
        assert!(after.contains(words), "{words:?} not in {after}");
    }
    assert!(!after.contains('\n'), "{after}");
}
