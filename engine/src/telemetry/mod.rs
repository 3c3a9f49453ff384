//! Memory and time: the RAM/VRAM sampler thread, per-run peaks by stage, a counting allocator.

/// Timings and memory peaks of one run.
#[derive(Clone, Debug, Default)]
pub struct RunTelemetry {}
