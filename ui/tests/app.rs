//! The desktop app driven headlessly with egui_kittest and a fake engine (the real worker and
//! model families are not needed to check what the panels do with their answers).

mod common;

use common::{FakeBackend, Gate, drop_files, harness, plan_bar_text, threaded_harness};
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use headroom_engine::Request;
use headroom_engine::request::NoiseMode;
use headroom_ui::app::backend::RestoredView;
use headroom_ui::app::state::SavedState;

/// Dropping a model file shows its inspect summary (format, family, parameters) and the plan.
#[test]
fn dropping_a_model_shows_its_summary() {
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    assert_eq!(
        h.state().rt.candidate.as_ref().map(|c| c.model.as_str()),
        Some("/models/sd15.safetensors")
    );
    h.get_by_label("Stable Diffusion 1.x");
    h.get_by_label("1.07 B");
    h.get_by_label("Plan: fits");
    assert!(
        h.query_by_label("Load").is_some(),
        "a model that fits offers Load"
    );
}

/// The inspection's warnings show in the model card (in glyphs the app's fonts have: the test
/// harness fails on a missing one).
#[test]
fn inspect_warnings_show_in_the_model_card() {
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/odd.safetensors"]);
    h.get_by_label("warning: tensor 'extra.weight' belongs to no component; it is not loaded");
}

/// Choosing q4k for all components shrinks the predicted bytes and the plan bar says so.
#[test]
fn changing_a_knob_updates_the_plan_bar() {
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    let before = plan_bar_text(h.state()).expect("a plan");
    h.get_by_label(&before);
    // "q4k" is also a row of the summary's bytes-per-precision table: click the button.
    h.get_all_by_label("q4k")
        .find(|n| n.accesskit_node().role() != egui::accesskit::Role::Label)
        .expect("a q4k button")
        .click();
    h.run_steps(3);
    let after = plan_bar_text(h.state()).expect("a plan");
    assert_ne!(before, after);
    h.get_by_label(&after);
    assert!(
        h.query_by_label(&before).is_none(),
        "the old figure is gone"
    );
    assert_eq!(
        h.state().state.knobs.precision.get("unet"),
        headroom_engine::knobs::Precision::Q4K
    );
}

/// A model that does not fit is not loaded by Load: the button is disabled and Load anyway is offered.
#[test]
fn a_model_that_does_not_fit_is_not_loaded_blindly() {
    let mut fake = FakeBackend::new();
    fake.budget_bytes = 1 << 30;
    let mut h = harness(fake);
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Plan: does not fit");
    h.get_by_label("Load").click();
    h.run_steps(3);
    assert!(h.state().rt.loaded.is_none() && h.state().rt.loading.is_none());
    h.get_by_label("Load anyway").click();
    h.run_steps(3);
    assert!(h.state().rt.loaded.is_some());
}

/// A model that fits only with changes is refused like one that does not fit (Load disabled,
/// Generate says why), and the plan bar's fix is one click: it sets the knobs, the plan fits,
/// and Load works.
#[test]
fn a_plan_fix_is_one_click() {
    let mut fake = FakeBackend::new();
    fake.budget_bytes = 3 << 30;
    let mut h = harness(fake);
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Plan: fits with changes");
    h.get_by_label("Load").click();
    h.run_steps(3);
    assert!(h.state().rt.loaded.is_none() && h.state().rt.loading.is_none());
    h.get_by_label("Generate").click();
    h.run_steps(3);
    assert!(h.state().rt.loading.is_none() && h.state().rt.run.is_none());
    h.get_by_label_contains("does not fit in the memory free now");
    h.get_by_label_contains("precision=q4k:").click();
    h.run_steps(3);
    assert_eq!(
        h.state().state.knobs.precision.get("unet"),
        headroom_engine::knobs::Precision::Q4K
    );
    h.get_by_label("Plan: fits");
    h.get_by_label("Load").click();
    h.run_steps(3);
    assert!(h.state().rt.loaded.is_some());
}

/// Load then Generate (fake engine) ends with an output card showing the run's seed.
#[test]
fn generate_produces_an_output_card() {
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Load").click();
    h.run_steps(3);
    assert!(h.state().rt.loaded.is_some());
    h.get_by_label("Generate").click();
    h.run_steps(6);
    assert_eq!(h.state().rt.outputs.len(), 1);
    assert!(h.state().rt.run.is_none());
    h.get_by_label("seed 42");
    h.get_by_label("Save as…");
}

/// A slicing change is announced as applied without a reload, and the next run takes it in place
/// (the fake engine answers as the worker does, naming what it read again): the loaded model
/// keeps its load time and records the new knobs. A precision change says it reads that
/// component again, and the next run does so without loading the model again.
#[test]
fn knob_changes_reload_only_what_they_touch() {
    let fake = FakeBackend::new();
    let loads = std::rc::Rc::clone(&fake.loads);
    let mut h = harness(fake);
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Load").click();
    h.run_steps(3);
    h.state_mut().state.knobs.slicing.vae_tile = 32;
    h.run_steps(2);
    h.get_by_label("Knobs changed: the next run applies them without reloading");
    h.get_by_label("Generate").click();
    h.run_steps(6);
    assert_eq!(h.state().rt.outputs.len(), 1);
    assert_eq!(*loads.borrow(), 1, "the slicing change read the model again");
    let loaded = h.state().rt.loaded.clone().expect("still loaded");
    assert_eq!((loaded.knobs.slicing.vae_tile, loaded.load_ms), (32, 12));
    assert!(h.query_by_label("Knobs changed: the next run applies them without reloading").is_none());
    h.state_mut().state.knobs.precision.set("unet", headroom_engine::knobs::Precision::Q8_0).unwrap();
    h.run_steps(2);
    h.get_by_label("Knobs changed: the next run reads the unet again");
    h.get_by_label("Generate").click();
    h.run_steps(6);
    assert_eq!(h.state().rt.outputs.len(), 2);
    assert_eq!(*loads.borrow(), 1, "the precision change loaded the whole model again");
    assert!(
        h.state().rt.notices.iter().any(|n| n.text.starts_with("Read the unet of /models/sd15.safetensors again")),
        "{:?}",
        h.state().rt.notices
    );
    let loaded = h.state().rt.loaded.clone().expect("still loaded");
    assert_eq!(loaded.knobs.precision.get("unet"), headroom_engine::knobs::Precision::Q8_0);
    h.state_mut().state.knobs.device = headroom_engine::knobs::DeviceKind::Cuda(0);
    h.run_steps(2);
    h.get_by_label("Knobs changed: the next run loads the model again with them");
}

/// "Compare with f32" on a q8_0 output reruns its request (same seed) with every component in
/// f32 and no slicing, then opens A/B with the output as A and the reference as B; the knobs the
/// user had chosen come back. On the reference itself the button does nothing.
#[test]
fn compare_with_f32_is_one_click() {
    use headroom_engine::knobs::{PrecisionKnobs, Precision};
    use headroom_ui::app::state::CenterTab;
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.state_mut().state.knobs.precision = PrecisionKnobs::all(Precision::Q8_0);
    h.state_mut().state.knobs.slicing.vae_tile = 32;
    h.get_by_label("Load").click();
    h.run_steps(3);
    h.get_by_label("Generate").click();
    h.run_steps(6);
    let first = h.state().rt.outputs[0].record.clone();
    assert_eq!(first.knobs.precision.get("unet"), Precision::Q8_0);
    // the run's notes explain how it computed: on its card and in the plan bar
    h.get_by_label("Run notes (1)");
    h.get_by_label("1 run note");
    h.get_by_label("Compare with f32").click();
    h.run_steps(8);
    let rt = &h.state().rt;
    assert_eq!(rt.outputs.len(), 2);
    let reference = &rt.outputs[1].record;
    assert_eq!(reference.knobs, first.knobs.reference());
    assert_eq!((reference.knobs.precision.get("unet"), reference.knobs.slicing.vae_tile), (Precision::F32, 0));
    assert_eq!(reference.request, first.request, "the same request and seed");
    assert_eq!((rt.ab.a, rt.ab.b, rt.tab), (Some(0), Some(1), CenterTab::Ab));
    assert!(rt.ab.comparison.is_some(), "the pair is compared");
    let knobs = h.state().state.knobs;
    assert_eq!((knobs.precision.get("unet"), knobs.slicing.vae_tile), (Precision::Q8_0, 32), "the chosen knobs came back");
}

/// A sweep over the UNet's precision runs the f32 reference and then each value in order (the
/// fake engine records the knobs each run was loaded with), lists a row per run with its quality
/// against the reference, draws the frontier, gives the chosen knobs back, and a row opens its
/// output.
#[test]
fn sweep_runs_each_value_after_the_reference() {
    use headroom_engine::knobs::Precision;
    use headroom_ui::app::state::{CenterTab, SWEEP_REFERENCE};
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Load").click();
    h.run_steps(3);
    h.state_mut().state.knobs.slicing.vae_tile = 32;
    h.get_by_label("Sweep").click();
    h.run_steps(2);
    h.get_by_label("Run sweep").click();
    h.run_steps(30);
    let rt = &h.state().rt;
    assert!(!rt.sweep.running(), "the sweep ended");
    let values: Vec<&str> = rt.sweep.rows.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(values, [SWEEP_REFERENCE, "f32", "f16", "q8_0", "q4k"]);
    let unet = |i: usize| rt.outputs[rt.sweep.rows[i].output].record.knobs.precision.get("unet");
    assert_eq!((unet(0), unet(2), unet(4)), (Precision::F32, Precision::F16, Precision::Q4K));
    // the reference has no slicing; the swept runs keep the chosen vae_tile
    assert_eq!(rt.outputs[rt.sweep.rows[0].output].record.knobs.slicing.vae_tile, 0);
    assert_eq!(rt.outputs[rt.sweep.rows[3].output].record.knobs.slicing.vae_tile, 32);
    assert!(rt.sweep.rows[1..].iter().all(|r| r.quality.first().is_some_and(|q| q.0 == "PSNR dB")));
    assert_eq!(rt.tab, CenterTab::Sweep);
    let knobs = h.state().state.knobs;
    assert_eq!((knobs.precision.get("unet"), knobs.slicing.vae_tile), (Precision::Auto, 32), "the chosen knobs came back");
    h.get_by_label("Frontier:");
    h.get_all_by_label("Open").nth(2).expect("a row's Open").click();
    h.run_steps(2);
    assert_eq!(h.state().rt.selected, Some(h.state().rt.sweep.rows[2].output));
    assert_eq!(h.state().rt.tab, CenterTab::Output);
}

/// Ctrl+Enter generates too, and an unlocked seed changes per run.
#[test]
fn ctrl_enter_generates_with_a_fresh_seed_when_unlocked() {
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Lock").click();
    h.run_steps(2);
    assert!(!h.state().state.seed_locked);
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    h.run_steps(6);
    assert_eq!(h.state().rt.outputs.len(), 1);
    assert_ne!(
        h.state().rt.outputs[0].record.request.seed,
        Request::default().seed
    );
}

/// The Noise menu is disabled for a batch of one (the same noise either way); with a batch of
/// two, choosing per-image sets the request's noise mode and the run carries it.
#[test]
fn noise_mode_is_chosen_in_the_request_panel() {
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    let menu = |h: &egui_kittest::Harness<'_, headroom_ui::app::HeadroomApp>| {
        h.get_all_by_label("Noise")
            .find(|n| n.accesskit_node().role() != egui::accesskit::Role::Label)
            .expect("a noise menu")
            .accesskit_node()
            .is_disabled()
    };
    assert_eq!(h.state().state.request.noise, NoiseMode::Batch);
    assert!(menu(&h), "disabled for a batch of one");
    h.state_mut().state.request.batch = 2;
    h.run_steps(2);
    assert!(!menu(&h));
    h.get_all_by_label("Noise")
        .find(|n| n.accesskit_node().role() != egui::accesskit::Role::Label)
        .unwrap()
        .click();
    h.run_steps(2);
    h.get_by_label("per-image").click();
    h.run_steps(2);
    assert_eq!(h.state().state.request.noise, NoiseMode::PerImage);
    h.get_by_label("Load").click();
    h.run_steps(3);
    h.get_by_label("Generate").click();
    h.run_steps(6);
    assert_eq!(h.state().rt.outputs[0].record.request.noise, NoiseMode::PerImage);
}

/// Dropping an output PNG restores the seed and prompt it carries.
#[test]
fn dropping_an_output_png_restores_seed_and_prompt() {
    let mut fake = FakeBackend::new();
    let request = Request {
        prompt: "a teal triangle".into(),
        seed: 1234,
        ..Request::default()
    };
    fake.restorable.insert(
        "/outputs/run7.png".into(),
        RestoredView {
            request,
            knobs: None,
            model_hint: None,
            mapped: vec!["seed".into(), "prompt".into()],
            unmapped: vec![],
        },
    );
    let mut h = harness(fake);
    drop_files(&mut h, &["/outputs/run7.png"]);
    assert_eq!(h.state().state.request.seed, 1234);
    assert_eq!(h.state().state.request.prompt, "a teal triangle");
    assert!(
        h.query_all_by_value("a teal triangle").next().is_some(),
        "the prompt box shows it"
    );
}

/// Two outputs make an A/B pair, and an ABX test scores answers with a p-value.
#[test]
fn ab_and_abx_score() {
    let mut h = harness(FakeBackend::new());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Load").click();
    h.run_steps(3);
    for _ in 0..2 {
        h.get_by_label("Generate").click();
        h.run_steps(6);
    }
    assert_eq!((h.state().rt.ab.a, h.state().rt.ab.b), (Some(0), Some(1)));
    h.get_by_label("A/B").click();
    h.run_steps(2);
    h.get_by_label("PSNR dB");
    h.get_by_label("Start ABX").click();
    h.run_steps(2);
    let trials = h.state().state.abx_trials as usize;
    for i in 0..trials {
        let x_is_a = h.state().rt.ab.abx.as_ref().unwrap().x_is_a[i];
        h.get_by_label(if x_is_a { "X is A" } else { "X is B" })
            .click();
        h.run_steps(1);
    }
    h.run_steps(2);
    let abx = h.state().rt.ab.abx.clone().unwrap();
    assert_eq!(
        abx.answers,
        vec![true; trials],
        "every answer counted right"
    );
    h.get_by_label_contains(&format!("Score {trials}/{trials}"));
}

/// In an audio ABX trial, "Play X" starts X from 0 even when X is the clip already loaded and
/// paused part-way (as Play A and Play B start theirs), so where it starts gives nothing away.
#[test]
fn abx_play_x_starts_from_the_beginning() {
    use headroom_ui::app::command::AppCommand;
    use headroom_ui::audio::Player;
    use headroom_ui::audio::mock::MockOutput;
    let mut fake = FakeBackend::new();
    // Ten seconds at 8 kHz: the clip cannot end (and rewind by itself) during the test.
    let samples = (0..80_000).map(|i| (i as f32 * 0.03).sin() * 0.6).collect();
    fake.media = Some(headroom_ui::app::backend::Media::Audio(headroom_engine::media::Audio {
        sample_rate: 8000,
        samples,
    }));
    let mut h = harness(fake);
    h.state_mut().rt.player = Some(Player::spawn(MockOutput { realtime: true, ..MockOutput::default() }).unwrap());
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Load").click();
    h.run_steps(3);
    for _ in 0..2 {
        h.get_by_label("Generate").click();
        h.run_steps(6);
    }
    h.get_by_label("A/B").click();
    h.run_steps(2);
    h.get_by_label("Start ABX").click();
    h.run_steps(2);
    h.state_mut().rt.ab.abx.as_mut().unwrap().x_is_a[0] = true;
    let a = h.state().rt.ab.a.unwrap();
    // A is played (say from the A/B panel) and paused part-way.
    h.state_mut().rt.commands.push(AppCommand::PlayAudio(a));
    h.run_steps(1);
    let position = |h: &egui_kittest::Harness<'_, headroom_ui::app::HeadroomApp>| {
        h.state().rt.player.as_ref().unwrap().position_fraction()
    };
    let start = std::time::Instant::now();
    while position(&h) < 0.1 && start.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    h.state_mut().rt.commands.push(AppCommand::PauseAudio);
    h.run_steps(1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let paused_at = position(&h);
    assert!(paused_at >= 0.1, "A played part-way: {paused_at}");
    h.get_by_label("Play X").click();
    h.run_steps(1);
    let start = std::time::Instant::now();
    while position(&h) >= paused_at / 2.0 && start.elapsed().as_secs() < 2 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        position(&h) < paused_at / 2.0,
        "Play X started from 0, not from A's paused position {paused_at}: now {}",
        position(&h)
    );
}

/// Saved state keeps defaults for fields it does not name (older saves still load).
#[test]
fn saved_state_fills_missing_fields() {
    let s: SavedState = serde_json::from_str(r#"{"seed_locked": false}"#).unwrap();
    assert!(!s.seed_locked);
    assert_eq!(s.request.steps, SavedState::default().request.steps);
    let back: SavedState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

/// Two instances saving settings at once leave a whole file: every read while they write parses
/// as one of the two, never a mix or a truncated file.
#[test]
fn two_instances_saving_settings_never_corrupt_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settings.json");
    let a = SavedState { budget_gib: 6.0, ..SavedState::default() };
    let b = SavedState {
        budget_gib: 12.0,
        // About 1 MB, so a write takes many system calls and a reader can land inside one.
        recent_models: (0..20_000).map(|i| format!("/models/long/path/number/{i}.safetensors")).collect(),
        ..SavedState::default()
    };
    a.save(&path).unwrap();
    std::thread::scope(|scope| {
        for state in [&a, &b] {
            let path = &path;
            scope.spawn(move || {
                for _ in 0..30 {
                    state.save(path).unwrap();
                }
            });
        }
        for _ in 0..200 {
            let read = SavedState::load(&path).expect("a whole settings file");
            assert!(read == a || read == b, "a mix of both instances' settings");
        }
    });
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "no temporary files left behind"
    );
}

/// An audio output shows a waveform; Play plays it through the player (mock device here) and a
/// click on the waveform seeks.
#[test]
fn audio_output_plays_and_seeks() {
    use headroom_ui::audio::Player;
    use headroom_ui::audio::mock::MockOutput;
    let mut fake = FakeBackend::new();
    let samples = (0..16_000).map(|i| (i as f32 * 0.03).sin() * 0.6).collect();
    fake.media = Some(headroom_ui::app::backend::Media::Audio(
        headroom_engine::media::Audio {
            sample_rate: 8000,
            samples,
        },
    ));
    let mut h = harness(fake);
    h.state_mut().rt.player = Some(
        Player::spawn(MockOutput {
            realtime: true,
            ..MockOutput::default()
        })
        .unwrap(),
    );
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    h.get_by_label("Generate").click();
    h.run_steps(6);
    assert_eq!(h.state().rt.outputs.len(), 1);
    assert!(
        !h.state().rt.outputs[0].envelope.is_empty(),
        "a waveform to draw"
    );
    h.get_by_label("Play").click();
    h.run_steps(2);
    let player = h.state().rt.player.as_ref().unwrap();
    assert!(player.is_playing());
    // A click lands in the middle of the waveform.
    let clicked = std::time::Instant::now();
    h.get_by_label("waveform").click();
    h.run_steps(2);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let at = h.state().rt.player.as_ref().unwrap().position_fraction();
    // the 2 s clip plays on from the click: a busy machine reads it later, further on
    let played = clicked.elapsed().as_secs_f32() / 2.0;
    assert!(
        (0.45..0.6 + played).contains(&at),
        "seeked to about the middle: {at} ({played} of the clip played since the click)"
    );
    h.get_by_label("Pause").click();
    h.run_steps(2);
    assert!(!h.state().rt.player.as_ref().unwrap().is_playing());
}

/// On first start (no paths, no last model) the built-in image model is inspected and loaded.
#[test]
fn first_start_loads_the_builtin_model() {
    let mut h = harness(FakeBackend::new());
    h.state_mut().start(Vec::new());
    h.run_steps(3);
    let app = h.state();
    assert_eq!(app.rt.loaded.as_ref().map(|l| l.model.as_str()), Some("builtin:shapes"));
}

/// Opening the app on a user's own model inspects it but does not load it unasked.
#[test]
fn start_with_a_path_does_not_load_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sd15.safetensors");
    std::fs::write(&model, b"weights").unwrap();
    let mut h = harness(FakeBackend::new());
    h.state_mut().start(vec![model.clone()]);
    h.run_steps(3);
    let app = h.state();
    let shown = model.display().to_string();
    assert_eq!(app.rt.candidate.as_ref().map(|c| c.model.as_str()), Some(shown.as_str()));
    assert!(app.rt.loaded.is_none());
}

/// `headroom out.png` restores the output's seed and prompt, as dropping it on the window does.
#[test]
fn a_launch_path_is_opened_like_a_drop() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("run7.png");
    std::fs::write(&png, b"png").unwrap();
    let mut fake = FakeBackend::new();
    let request = Request {
        prompt: "a teal triangle".into(),
        seed: 1234,
        ..Request::default()
    };
    fake.restorable.insert(
        png.clone(),
        RestoredView {
            request,
            knobs: None,
            model_hint: None,
            mapped: vec!["seed".into(), "prompt".into()],
            unmapped: vec![],
        },
    );
    let mut h = harness(fake);
    h.state_mut().start(vec![png]);
    h.run_steps(3);
    assert_eq!(h.state().state.request.seed, 1234);
    assert!(
        h.query_all_by_value("a teal triangle").next().is_some(),
        "the prompt box shows the restored prompt"
    );
    h.get_by_label("Restored from run7.png: seed, prompt");
}

/// A launch path that does not exist is one line in the messages; the app starts as usual, on
/// the built-in model, and the bad path is not remembered as a model.
#[test]
fn a_missing_launch_path_is_a_message_and_the_app_starts() {
    let mut h = harness(FakeBackend::new());
    h.state_mut().start(vec!["/no/such/dir/model.safetensors".into()]);
    h.run_steps(3);
    h.get_by_label("/no/such/dir/model.safetensors: no such file or folder (given on the command line)");
    let app = h.state();
    assert_eq!(app.rt.loaded.as_ref().map(|l| l.model.as_str()), Some("builtin:shapes"));
    assert!(!app.state.recent_models.iter().any(|m| m.contains("no/such")));
}

/// A folder that is not a model, or a file of the wrong kind, opens the app with the reason in
/// the model card (one line, naming the path), and nothing is loaded.
#[test]
fn a_launch_path_of_the_wrong_kind_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"not weights").unwrap();
    for path in [dir.path().to_path_buf(), notes] {
        let mut h = harness(FakeBackend::new());
        h.state_mut().start(vec![path.clone()]);
        h.run_steps(3);
        h.get_by_label(&format!("{}: not a model file", path.display()));
        assert!(h.state().rt.loaded.is_none());
    }
}

/// Inspecting runs on the chores thread: while a slow read of the headers blocks, frames keep
/// coming, the model card says it is reading them and, past 100 ms, the plan bar says what runs;
/// the summary and the plan arrive when the read ends. (Were the read on the UI thread, the
/// first frame would wait for the gate's 10 s.)
#[test]
fn slow_reads_run_off_the_ui_thread() {
    let gate = std::sync::Arc::new(Gate::default());
    let mut fake = FakeBackend::new();
    fake.inspect_gate = Some(std::sync::Arc::clone(&gate));
    let mut h = threaded_harness(fake);
    let start = std::time::Instant::now();
    drop_files(&mut h, &["/models/sd15.safetensors"]);
    std::thread::sleep(std::time::Duration::from_millis(150));
    h.run_steps(3);
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "a frame waited for the read");
    assert!(h.state().rt.candidate.as_ref().is_some_and(|c| c.summary.is_none()));
    h.get_by_label("Reading its headers…");
    h.get_by_label_contains("Inspecting sd15.safetensors…");
    gate.open();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.state().rt.plan.is_none() && std::time::Instant::now() < deadline {
        h.step();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    h.run_steps(2);
    h.get_by_label("Stable Diffusion 1.x");
    assert!(plan_bar_text(h.state()).is_some(), "the plan followed the summary");
    assert!(!h.state().rt.chores.busy());
}

/// A family the app has never heard of plugs in through its declarations alone: the knobs panel
/// offers its components (a placeable codec, a language model whose layers are the offloadable
/// units) and the request panel its fields (a length, no size), with no Stable Diffusion
/// component or field in sight; a precision set per component reaches the loaded model's knobs
/// by the family's own name.
#[test]
fn a_stand_in_family_plugs_in_by_its_declarations() {
    use headroom_engine::families::{ComponentSpec, FieldKind, FieldSpec};
    let mut fake = FakeBackend::new();
    fake.components = vec![
        ComponentSpec { name: "text", aliases: &[], label: "Prompt encoder", placeable: true, units: None },
        ComponentSpec { name: "lm", aliases: &["decoder"], label: "Language model", placeable: false, units: Some("layers") },
        ComponentSpec { name: "codec", aliases: &[], label: "Audio codec", placeable: true, units: None },
    ];
    fake.fields = vec![
        FieldSpec { key: "seconds", label: "Length", kind: FieldKind::Float { min: 0.0, max: 30.0, step: 0.5, unit: " s" }, help: "" },
        FieldSpec { key: "guidance", label: "Guidance", kind: FieldKind::Float { min: 0.0, max: 10.0, step: 0.5, unit: "" }, help: "" },
        FieldSpec { key: "temperature", label: "Temperature", kind: FieldKind::Float { min: 0.0, max: 2.0, step: 0.05, unit: "" }, help: "" },
    ];
    let mut h = harness(fake);
    drop_files(&mut h, &["/models/tones.safetensors"]);
    for label in ["Prompt encoder", "Language model", "Audio codec", "Resident layers", "Other layers", "Length", "Guidance"] {
        assert!(h.query_all_by_label(label).count() >= 1, "{label} not shown");
    }
    for absent in ["UNet", "VAE", "Text encoder", "Width", "Height", "Steps", "Scheduler", "Negative prompt"] {
        assert_eq!(h.query_all_by_label(absent).count(), 0, "{absent} shown for a family that has none");
    }
    // an optional field starts as the model's own; unticking sets a value, ticking gives it back
    // (the length's is the first, the temperature's the second)
    assert_eq!(h.state().state.request.temperature, None);
    h.query_all_by_label("model's").nth(1).expect("temperature: model's").click();
    h.run_steps(2);
    assert_eq!(h.state().state.request.temperature, Some(1.0));
    h.query_all_by_label("model's").nth(1).expect("temperature: model's").click();
    h.run_steps(2);
    assert_eq!(h.state().state.request.temperature, None);
    h.state_mut().state.knobs.set("precision.decoder", "q8_0").unwrap();
    h.get_by_label("Load").click();
    h.run_steps(3);
    let loaded = h.state().rt.loaded.clone().expect("loaded");
    assert_eq!(loaded.components.len(), 3);
    let k = loaded.knobs.for_family(&loaded.components, "tones").unwrap();
    assert_eq!(k.precision.get("lm"), headroom_engine::knobs::Precision::Q8_0, "the alias is the lm's knob");
}
