//! The engine thread driven through its public handle with a small test family: loading,
//! progress in order, outputs, cancellation, panics, errors, the waker and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use headroom_engine::families::{Family, RunObserver};
use headroom_engine::media::Image;
use headroom_engine::worker::{Artifact, Command, Engine, Event, Loader, Preview, Stage};
use headroom_engine::{Error, Knobs, ModelRef, Request, Result};

/// Generous: the machine is shared and slow, but a hang must still end the test.
const WAIT: Duration = Duration::from_secs(60);
const PANIC_PROMPT: &str = "please panic";
const WAIT_FOR_CANCEL_PROMPT: &str = "run until cancelled";
const OOM_PROMPT: &str = "run out of memory";

/// Paints a gradient over `steps` steps; panics, stalls or fails on magic prompts.
struct Gradient {
    dropped: Arc<AtomicBool>,
}

impl Family for Gradient {
    fn name(&self) -> &str {
        "test-gradient"
    }

    fn weight_bytes(&self) -> Vec<(String, u64)> {
        vec![("cpu".into(), 1000), ("cuda:0".into(), 24)]
    }

    fn generate(&mut self, request: &Request, obs: &mut dyn RunObserver) -> Result<Vec<Artifact>> {
        obs.stage(Stage::Text)?;
        if request.prompt == PANIC_PROMPT {
            panic!("the test family was asked to panic");
        }
        if request.prompt == OOM_PROMPT {
            return Err(Error::Candle(candle_core::Error::Msg(
                "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
            )));
        }
        obs.stage(Stage::Denoise)?;
        obs.note("test: gradient painted on the cpu".into());
        let (w, h) = (request.width, request.height);
        for step in 1..=request.steps {
            if obs.cancelled() {
                return Err(Error::Cancelled);
            }
            obs.progress(step, request.steps);
            obs.preview(Preview::Image(Image { width: 1, height: 1, rgb: vec![step as u8; 3] }));
            if request.prompt == WAIT_FOR_CANCEL_PROMPT {
                // Poll (not an assertion) until the test cancels, with a bound so a bug cannot hang.
                let deadline = Instant::now() + WAIT;
                while !obs.cancelled() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        obs.stage(Stage::Decode)?;
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, request.seed as u8]);
            }
        }
        Ok(vec![Artifact::Image(Image { width: w, height: h, rgb })])
    }
}

impl Drop for Gradient {
    fn drop(&mut self) {
        // Only counts when dropped on the engine thread, which also checks its name.
        if std::thread::current().name() == Some("headroom-engine") {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }
}

/// An engine whose loader opens `builtin:gradient`, with a counting waker and a drop flag.
fn engine() -> (Engine, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let wakes = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let (w, d) = (Arc::clone(&wakes), Arc::clone(&dropped));
    let loader: Loader =
        Box::new(move |model: &ModelRef, _knobs: &Knobs, obs: &mut dyn RunObserver| match model {
            ModelRef::Builtin(name) if name == "gradient" => {
                obs.progress(1, 1);
                Ok(Box::new(Gradient { dropped: Arc::clone(&d) }) as Box<dyn Family>)
            }
            other => Err(Error::file(other.to_string(), "not a gradient")),
        });
    let engine = Engine::spawn_with(
        move || {
            w.fetch_add(1, Ordering::SeqCst);
        },
        loader,
    );
    (engine, wakes, dropped)
}

fn next(engine: &Engine) -> Event {
    engine.recv_timeout(WAIT).expect("an event within the time limit")
}

/// Events up to and including the first one that `last` accepts.
fn until(engine: &Engine, last: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let e = next(engine);
        let done = last(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

fn load(engine: &Engine) {
    let model = ModelRef::Builtin("gradient".into());
    engine.send(Command::Load { model, knobs: Knobs::default() }).unwrap();
    let events = until(engine, |e| matches!(e, Event::Loaded { .. } | Event::Error { .. }));
    match events.last() {
        Some(Event::Loaded { family, weight_bytes, .. }) => {
            assert_eq!(family, "test-gradient");
            assert_eq!(*weight_bytes, 1024);
        }
        other => panic!("load failed: {other:?}"),
    }
    assert!(events.iter().any(|e| matches!(e, Event::Telemetry(t) if t.timings_ms.contains_key("load"))));
}

fn generate(engine: &Engine, prompt: &str, steps: u32, out: &std::path::Path) {
    let request = Request { prompt: prompt.into(), steps, width: 16, height: 8, ..Request::default() };
    engine.send(Command::Generate { request, out_dir: out.to_path_buf() }).unwrap();
}

fn is_end(e: &Event) -> bool {
    matches!(e, Event::Output { .. } | Event::Error { .. } | Event::Cancelled)
}

/// Load, then generate: progress 1..=N in order, telemetry with stage timings, then the files.
#[test]
fn load_generate_progress_output() {
    let (engine, wakes, _) = engine();
    let out = tempfile::tempdir().unwrap();
    load(&engine);
    generate(&engine, "a gradient", 5, out.path());
    assert!(engine.is_busy());
    let events = until(&engine, is_end);
    let steps: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress { stage: Stage::Denoise, step, total: 5 } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Preview(_))).count(), 5);
    let telemetry = events.iter().find_map(|e| match e {
        Event::Telemetry(t) => Some(t),
        _ => None,
    });
    let t = telemetry.expect("telemetry before the output");
    for stage in ["load", "text", "denoise", "decode", "save"] {
        assert!(t.timings_ms.contains_key(stage), "no {stage} timing in {:?}", t.timings_ms);
    }
    assert!(t.peak_ram_bytes > 0 && t.peaks_by_stage.contains_key("denoise"));
    assert_eq!(t.notes, vec!["test: gradient painted on the cpu".to_string()]);
    match events.last().unwrap() {
        Event::Output { paths, profile_path, .. } => {
            assert_eq!(paths.len(), 1);
            let bytes = std::fs::read(&paths[0]).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", paths[0].display());
            assert!(paths[0].to_string_lossy().ends_with("-0.png"));
            let record = std::fs::read_to_string(profile_path).unwrap();
            assert!(record.contains("a gradient") && record.contains("denoise"), "{record}");
        }
        other => panic!("expected the output, got {other:?}"),
    }
    assert!(!engine.is_busy());
    assert!(wakes.load(Ordering::SeqCst) >= events.len(), "the waker was not called for every event");
}

/// Cancelling mid-run ends that run as Cancelled, and the next run still makes its output.
#[test]
fn cancel_mid_run_then_run_again() {
    let (engine, _, _) = engine();
    let out = tempfile::tempdir().unwrap();
    load(&engine);
    generate(&engine, WAIT_FOR_CANCEL_PROMPT, 50, out.path());
    until(&engine, |e| matches!(e, Event::Progress { step: 1, .. }));
    engine.send(Command::Cancel).unwrap();
    let events = until(&engine, is_end);
    assert!(matches!(events.last(), Some(Event::Cancelled)), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Event::Telemetry(_))));
    let max_step = events.iter().filter_map(|e| match e {
        Event::Progress { step, .. } => Some(*step),
        _ => None,
    });
    assert!(max_step.max().unwrap_or(1) < 50, "the run did not stop early");
    generate(&engine, "after the cancel", 3, out.path());
    let events = until(&engine, is_end);
    assert!(matches!(events.last(), Some(Event::Output { .. })), "{events:?}");
}

/// A panic in the family becomes an error event, the model is unloaded, and the engine serves
/// the next load and run.
#[test]
fn panic_becomes_error_and_engine_survives() {
    let (engine, _, dropped) = engine();
    let out = tempfile::tempdir().unwrap();
    load(&engine);
    generate(&engine, PANIC_PROMPT, 3, out.path());
    let events = until(&engine, is_end);
    match events.last().unwrap() {
        Event::Error { message, .. } => {
            assert!(message.starts_with("internal error while generating:"), "{message}");
            assert!(message.contains("asked to panic"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(matches!(next(&engine), Event::Unloaded));
    assert!(dropped.load(Ordering::SeqCst), "the panicked model was not dropped");
    generate(&engine, "no model now", 3, out.path());
    assert!(
        matches!(until(&engine, is_end).last(), Some(Event::Error { message, .. }) if message == "no model loaded")
    );
    load(&engine);
    generate(&engine, "works again", 3, out.path());
    assert!(matches!(until(&engine, is_end).last(), Some(Event::Output { .. })));
}

/// Generating before any load is an error that says so; the engine stays idle afterwards.
#[test]
fn generate_without_model_is_an_error() {
    let (engine, _, _) = engine();
    let out = tempfile::tempdir().unwrap();
    generate(&engine, "nothing loaded", 3, out.path());
    match next(&engine) {
        Event::Error { message, .. } => assert_eq!(message, "no model loaded"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(!engine.is_busy());
}

/// An out-of-memory error from a family becomes one line naming the device and a knob.
#[test]
fn out_of_memory_names_a_knob() {
    let (engine, _, _) = engine();
    let out = tempfile::tempdir().unwrap();
    load(&engine);
    generate(&engine, OOM_PROMPT, 3, out.path());
    match until(&engine, is_end).pop().unwrap() {
        Event::Error { message, detail } => {
            assert!(message.starts_with("out of memory on cpu: try "), "{message}");
            assert!(message.contains("precision.text="), "text-stage hint expected: {message}");
            assert!(detail.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{detail}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A failing load and an invalid request are one-line errors; the real loader says no family
/// can run the model yet; planning a missing model names it, planning a real one answers.
#[test]
fn errors_are_one_line() {
    let (engine, _, _) = engine();
    engine
        .send(Command::Load { model: ModelRef::parse("/no/such.safetensors"), knobs: Knobs::default() })
        .unwrap();
    let events = until(&engine, is_end);
    assert!(
        matches!(events.last(), Some(Event::Error { message, .. }) if message == "/no/such.safetensors: not a gradient")
    );
    let bad = Request { width: 100, ..Request::default() };
    engine.send(Command::Generate { request: bad, out_dir: ".".into() }).unwrap();
    assert!(matches!(next(&engine), Event::Error { message, .. } if message.contains("width = 100")));
    let plan = Command::Plan {
        model: ModelRef::parse("builtin:gradient"),
        knobs: Knobs::default(),
        request: Request::default(),
        budget_bytes: None,
    };
    engine.send(plan).unwrap();
    assert!(matches!(next(&engine), Event::Error { message, .. } if message.contains("builtin:gradient")));
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sd/tiny-sd1");
    let plan = Command::Plan { model: ModelRef::parse(fixture), knobs: Knobs::default(), request: Request::default(), budget_bytes: Some(1 << 40) };
    engine.send(plan).unwrap();
    assert!(matches!(next(&engine), Event::Planned(p) if p.verdict == headroom_engine::plan::Verdict::Fits));

    let real = Engine::spawn(|| {});
    let missing = "/no/such/folder/model.safetensors";
    real.send(Command::Load { model: ModelRef::parse(missing), knobs: Knobs::default() }).unwrap();
    let events = until(&real, is_end);
    assert!(
        matches!(events.last(), Some(Event::Error { message, .. }) if message.contains(missing) && !message.contains('\n')),
        "{events:?}"
    );
}

/// Dropping the handle while a run waits for cancel stops it, joins the thread and drops the
/// model on the engine thread.
#[test]
fn drop_cancels_and_joins() {
    let (engine, _, dropped) = engine();
    let out = tempfile::tempdir().unwrap();
    load(&engine);
    generate(&engine, WAIT_FOR_CANCEL_PROMPT, 50, out.path());
    until(&engine, |e| matches!(e, Event::Progress { step: 1, .. }));
    let started = Instant::now();
    drop(engine);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the model was not dropped on the engine thread before drop returned"
    );
    assert!(started.elapsed() < WAIT / 2, "drop waited for the run instead of cancelling it");
}

/// A cancel sent while idle does not cancel the run sent after it.
#[test]
fn late_cancel_does_not_poison_next_run() {
    let (engine, _, _) = engine();
    let out = tempfile::tempdir().unwrap();
    load(&engine);
    engine.cancel();
    generate(&engine, "after an idle cancel", 2, out.path());
    assert!(matches!(until(&engine, is_end).last(), Some(Event::Output { .. })));
}

/// With nobody draining, progress and previews are dropped instead of stalling the run, while
/// the telemetry and the output still arrive.
#[test]
fn full_queue_drops_progress_not_output() {
    let (engine, _, _) = engine();
    let out = tempfile::tempdir().unwrap();
    load(&engine);
    // 1000 steps (Request's MAX_STEPS): still ~4× the event queue's 256.
    generate(&engine, "a long run nobody watches", 1000, out.path());
    let deadline = Instant::now() + WAIT;
    while engine.is_busy() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!engine.is_busy(), "the run stalled on a full event queue");
    let events = until(&engine, is_end);
    let progress = events.iter().filter(|e| matches!(e, Event::Progress { .. })).count();
    assert!(progress < 1000, "no progress event was dropped ({progress})");
    assert!(events.iter().any(|e| matches!(e, Event::Telemetry(_))));
    assert!(matches!(events.last(), Some(Event::Output { .. })), "{:?}", events.last());
}

/// Knobs that change no weights (slicing) reach the loaded model in place, and a precision or
/// placement change reads again only the component it touches: the loader is not called again,
/// `Loaded` names what was read (nothing, then `unet`, then `vae`), the next run's profile records
/// the new knobs, and its image is the one a fresh load with those knobs makes. A device change
/// loads the whole model again.
#[test]
fn knob_changes_reread_only_what_they_touch() {
    let loads = Arc::new(AtomicUsize::new(0));
    let l = Arc::clone(&loads);
    let loader: Loader = Box::new(move |model: &ModelRef, knobs: &Knobs, obs: &mut dyn RunObserver| {
        l.fetch_add(1, Ordering::SeqCst);
        headroom_engine::families::load(model, knobs, obs)
    });
    let engine = Engine::spawn_with(|| {}, loader);
    let out = tempfile::tempdir().unwrap();
    let model = ModelRef::parse("builtin:shapes");
    let load = |engine: &Engine, knobs: Knobs| {
        engine.send(Command::Load { model: model.clone(), knobs }).unwrap();
        match until(engine, |e| matches!(e, Event::Loaded { .. } | Event::Error { .. })).pop() {
            Some(Event::Loaded { reread, weight_bytes, .. }) => (reread, weight_bytes),
            other => panic!("load failed: {other:?}"),
        }
    };
    let request = Request { prompt: "a red circle".into(), steps: 2, width: 64, height: 64, ..Request::default() };
    let run = |engine: &Engine| {
        engine.send(Command::Generate { request: request.clone(), out_dir: out.path().to_path_buf() }).unwrap();
        match until(engine, is_end).pop() {
            Some(Event::Output { profile, .. }) => profile,
            other => panic!("the run failed: {other:?}"),
        }
    };
    let (reread, f32_bytes) = load(&engine, Knobs::default());
    assert_eq!(reread, None, "a first load reads the whole model");
    let mut tiled = Knobs::default();
    tiled.set("slicing.vae_tile", "4").unwrap();
    tiled.set("slicing.attention_slice", "16").unwrap();
    assert_eq!(load(&engine, tiled).0, Some(vec![]), "a slicing change read weights again");
    let profile = run(&engine);
    assert_eq!((profile.knobs.slicing.vae_tile, profile.knobs.slicing.attention_slice), (4, 16));

    let mut q8 = tiled;
    q8.set("precision.unet", "q8_0").unwrap();
    let (reread, q8_bytes) = load(&engine, q8);
    assert_eq!(reread, Some(vec!["unet".to_string()]));
    assert!(q8_bytes < f32_bytes, "q8_0 UNet: {q8_bytes} resident bytes, f32: {f32_bytes}");
    let mut q8_vae16 = q8;
    q8_vae16.set("precision.vae", "f16").unwrap();
    assert_eq!(load(&engine, q8_vae16).0, Some(vec!["vae".to_string()]));
    let retuned = run(&engine);
    assert_eq!(retuned.knobs, q8_vae16);
    assert_eq!(loads.load(Ordering::SeqCst), 1, "knob changes on the loaded model called the loader");

    // the same knobs read from scratch give the same weights and the same image
    let fresh = Engine::spawn(|| {});
    let (reread, bytes) = load(&fresh, q8_vae16);
    assert_eq!(reread, None);
    assert_eq!(bytes, load(&engine, q8_vae16).1, "resident bytes after a partial reload differ from a fresh load");
    let again = run(&fresh);
    let sha = |p: &headroom_engine::profile::Profile| p.result.as_ref().map(|r| r.sha256.clone());
    assert_eq!(sha(&retuned), sha(&again), "a partial reload gave another image than a fresh load");

    let mut other_device = q8_vae16;
    other_device.device = headroom_engine::knobs::DeviceKind::Cuda(0);
    engine.send(Command::Load { model: model.clone(), knobs: other_device }).unwrap();
    until(&engine, |e| matches!(e, Event::Loaded { .. } | Event::Error { .. }));
    assert_eq!(loads.load(Ordering::SeqCst), 2, "a device change must load the whole model again");
}
