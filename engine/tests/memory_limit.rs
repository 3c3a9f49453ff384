//! A run that cannot get its memory under an address-space limit (`ulimit -v`) ends as an error
//! event naming the stage, the limit and a knob — not an abort — and the worker runs again
//! afterwards with the outputs and profiles already written untouched. The limit is set on this
//! test's own process: the binary holds this one test, so nothing else runs under it.

use std::time::Duration;

use headroom_engine::worker::protocol::{Command, Event};
use headroom_engine::worker::Engine;
use headroom_engine::knobs::DeviceKind;
use headroom_engine::telemetry::procmem;
use headroom_engine::{Knobs, ModelRef, Request};

const WAIT: Duration = Duration::from_secs(120);

/// Events up to the end of a command (loaded, output, error or cancelled).
fn finish(engine: &Engine) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let e = engine.recv_timeout(WAIT).expect("an event within the time limit");
        let end = matches!(e, Event::Loaded { .. } | Event::Output { .. } | Event::Error { .. } | Event::Cancelled);
        seen.push(e);
        if end {
            return seen;
        }
    }
}

fn generate(engine: &Engine, side: u32, out: &std::path::Path) -> Event {
    let request = Request { prompt: "a red circle".into(), steps: 1, width: side, height: side, ..Request::default() };
    engine.send(Command::Generate { request, out_dir: out.to_path_buf() }).unwrap();
    finish(engine).pop().unwrap()
}

fn set_address_limit(bytes: libc::rlim_t) {
    let lim = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct it is given and nothing else
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0, "setrlimit failed");
}

#[test]
fn address_space_limit_is_an_error_not_an_abort() {
    let engine = Engine::spawn(|| {});
    let out = tempfile::tempdir().unwrap();
    engine.send(Command::Load { model: ModelRef::parse("builtin:shapes"), knobs: Knobs::default() }).unwrap();
    assert!(matches!(finish(&engine).last(), Some(Event::Loaded { .. })), "builtin:shapes did not load");
    let Event::Output { paths, profile_path, .. } = generate(&engine, 64, out.path()) else { panic!("the first run failed") };
    let (first, first_profile) = (std::fs::read(&paths[0]).unwrap(), std::fs::read(&profile_path).unwrap());

    // what is mapped now and 128 MiB more: a 64² run fits; a 2048² run's text stage (9 MB
    // planned) does, its denoise stage (252 MiB planned) does not
    set_address_limit(procmem::mapped_bytes().expect("VmSize") + (128 << 20));
    // the planner's CPU budget (what the CLI's and the app's pre-flight check against) sees it
    let budget = headroom_engine::plan::default_budgets(&Knobs::default(), None).0[&DeviceKind::Cpu];
    // (less the slack the stage check adds)
    assert!(budget <= (128 << 20) * 4 / 5, "CPU budget {budget} under a 128 MiB address-space allowance");
    let refused = generate(&engine, 2048, out.path());
    let Event::Error { message, .. } = &refused else { panic!("expected an error event, got {refused:?}") };
    assert!(!message.contains('\n'), "{message}");
    for part in ["out of memory on cpu", "the denoise stage needs about", "address-space limit", "try "] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    // the worker is alive and runs the next request, under the same limit
    let again = generate(&engine, 64, out.path());
    set_address_limit(libc::RLIM_INFINITY);
    assert!(matches!(again, Event::Output { .. }), "the run after the refused one failed: {again:?}");
    // and what was written before is as it was
    assert_eq!(std::fs::read(&paths[0]).unwrap(), first);
    assert_eq!(std::fs::read(&profile_path).unwrap(), first_profile);
}
