//! Turning failures into events a person can act on: out-of-memory errors that name the knob
//! that would help, one-line messages with the rest as detail, and panic payloads as text.

use std::any::Any;

use super::protocol::{Event, Stage};
use crate::error::Error;
use crate::knobs::{DeviceKind, Knobs};

/// Phrases by which candle, CUDA, Metal and allocators report running out of memory.
const OOM_PHRASES: [&str; 6] = [
    "out of memory",
    "cuda_error_out_of_memory",
    "memory allocation of",
    "allocation failed",
    "failed to allocate",
    "alloc failure",
];

/// True when an error's text says a device ran out of memory.
pub fn is_out_of_memory(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    OOM_PHRASES.iter().any(|p| t.contains(p))
}

/// The knob that would help when memory runs out in `stage` of a run on `device`.
pub fn oom_hint(stage: Option<Stage>, device: DeviceKind) -> &'static str {
    match (stage, device.is_gpu()) {
        (Some(Stage::Load), true) => {
            "try a smaller precision (precision.unet=q8_0 or q4k), offload.gpu_blocks=N or offload.text=cpu"
        }
        (Some(Stage::Load), false) => "try a smaller precision (precision=q8_0 or q4k)",
        (Some(Stage::Text), true) => "try offload.text=cpu or precision.text=f16",
        (Some(Stage::Text), false) => "try precision.text=q8_0",
        (Some(Stage::Decode), true) => "try slicing.vae_tile=32 or offload.vae=cpu",
        (Some(Stage::Decode), false) => "try slicing.vae_tile=32 or slicing.attention_slice=16",
        (_, true) => "try precision.unet=q8_0, offload.gpu_blocks or slicing.attention_slice",
        (_, false) => "try precision.unet=q8_0 or slicing.attention_slice=16",
    }
}

/// Refuses a stage of a run whose planned CPU bytes (`need`, above what is resident) this process
/// cannot allocate now: more than an address-space or control-group limit leaves, or more than
/// the system will reserve. Failing here, with the knob that would help, beats an allocation
/// failing inside a tensor library, which aborts the process.
///
/// # Errors
/// [`Error::OutOfMemory`] naming the stage, the bytes, the limit and a knob.
pub fn check_allocatable(need: u64, stage: Stage, device: DeviceKind) -> Result<(), Error> {
    use crate::telemetry::limits;
    let with_slack = limits::with_slack(need);
    let over = limits::tightest().filter(|l| with_slack > l.remaining_bytes);
    if over.is_none() && limits::can_allocate(with_slack) {
        return Ok(());
    }
    let why = match over {
        Some(l) => format!("{} leaves {}", l.what, crate::human_bytes(l.remaining_bytes)),
        None => "the system will not reserve that much".to_string(),
    };
    Err(Error::OutOfMemory {
        device: DeviceKind::Cpu.to_string(),
        hint: format!(
            "the {} stage needs about {} more ({} with the allocator's slack) and {why}; {}",
            stage.name(),
            crate::human_bytes(need),
            crate::human_bytes(with_slack),
            oom_hint(Some(stage), device)
        ),
    })
}

/// Re-labels an out-of-memory error as [`Error::OutOfMemory`] with a hint for the stage it
/// happened in; returns the original text as the second value for the event's detail.
pub fn classify(err: Error, stage: Option<Stage>, knobs: &Knobs) -> (Error, String) {
    let text = err.to_string();
    if matches!(err, Error::OutOfMemory { .. }) || !is_out_of_memory(&text) {
        return (err, String::new());
    }
    let oom = Error::OutOfMemory {
        device: knobs.device.to_string(),
        hint: oom_hint(stage, knobs.device).to_string(),
    };
    (oom, text)
}

/// An error event: the first line of the error for a person, the rest (and `extra`) as detail.
pub fn error_event(err: &Error, extra: &str) -> Event {
    let text = err.to_string();
    let mut lines = text.lines();
    let message = lines.next().unwrap_or("unknown error").trim().to_string();
    let mut detail: Vec<&str> = lines.collect();
    if !extra.is_empty() {
        detail.push(extra);
    }
    Event::Error { message, detail: detail.join("\n") }
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CUDA's out-of-memory text becomes OutOfMemory naming a knob; other errors pass through.
    #[test]
    fn oom_is_recognised_and_names_a_knob() {
        let cuda = Error::Candle(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ));
        let knobs = Knobs { device: "cuda:0".parse().unwrap(), ..Knobs::default() };
        let (e, detail) = classify(cuda, Some(Stage::Denoise), &knobs);
        let msg = e.to_string();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{msg}");
        assert!(msg.contains("cuda:0") && msg.contains("precision.unet=q8_0"), "{msg}");
        assert!(detail.contains("CUDA_ERROR_OUT_OF_MEMORY"));
        let (e, _) = classify(Error::invalid("steps = 0"), Some(Stage::Decode), &knobs);
        assert!(matches!(e, Error::Invalid(_)));
        let (e, _) = classify(Error::invalid("failed to allocate 4 GiB"), Some(Stage::Decode), &knobs);
        assert!(e.to_string().contains("offload.vae=cpu"), "{e}");
        // On the CPU, moving things to the CPU cannot help: the hint says something else.
        let (e, _) =
            classify(Error::invalid("failed to allocate 4 GiB"), Some(Stage::Decode), &Knobs::default());
        assert!(e.to_string().starts_with("out of memory on cpu: try slicing.vae_tile"), "{e}");
    }

    /// Multi-line errors keep one line as the message and the rest as detail.
    #[test]
    fn message_is_one_line() {
        match error_event(&Error::invalid("first\nsecond"), "stage: text") {
            Event::Error { message, detail } => {
                assert_eq!(message, "first");
                assert_eq!(detail, "second\nstage: text");
            }
            other => panic!("not an error event: {other:?}"),
        }
    }
}
