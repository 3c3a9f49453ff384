//! Headroom's engine: everything that reads, plans, runs and records models, with no GUI in it.
//!
//! Data flows one way: a file (or a profile) → [`formats`] reads headers → [`plan`] predicts →
//! the [`worker`] loads a family with the [`knobs`] → it generates, sending progress, previews and
//! telemetry as events → [`media`] writes the output with the profile embedded → [`profile`]
//! records it. See `ARCHITECTURE.md` at the repository root for one line per module.

pub mod cancel;
pub mod compare;
pub mod error;
pub mod families;
pub mod formats;
pub mod fsutil;
pub mod knobs;
pub mod media;
pub mod model;
pub mod nn;
pub mod paths;
pub mod plan;
pub mod profile;
pub mod request;
pub mod rng;
pub mod telemetry;
pub mod worker;

pub use cancel::CancelCheck;
pub use error::{Error, Result};
pub use knobs::Knobs;
pub use model::ModelRef;
pub use request::Request;

/// The engine's version, recorded in every profile's `[build]` section.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A byte count for people, in the largest binary unit that keeps the number ≥ 1: `1.23 GiB`,
/// `512 B`. What the CLI, the app and the planner's messages all print.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.2} {}", UNITS[u]) }
}
