//! Headroom's desktop app as a library, so the binary stays thin and UI tests can drive it:
//! [`app`] (panels, state, commands, the engine seam) and [`audio`] (playback on its own thread).

pub mod app;
pub mod audio;
