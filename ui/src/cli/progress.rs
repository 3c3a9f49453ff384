//! A progress line on stderr for long work: redrawn in place on a terminal, one line per stage
//! otherwise (so logs stay readable).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use headroom_engine::worker::protocol::Stage;

/// Draws progress events on stderr.
pub struct Progress {
    tty: bool,
    enabled: bool,
    stage: Option<Stage>,
    started: Instant,
}

impl Progress {
    /// `enabled = false` draws nothing.
    pub fn new(enabled: bool) -> Self {
        Self { tty: std::io::stderr().is_terminal(), enabled, stage: None, started: Instant::now() }
    }

    /// Step `step` of `total` in `stage`.
    pub fn update(&mut self, stage: Stage, step: u32, total: u32) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.stage != Some(stage) {
            if self.tty && self.stage.is_some() {
                let _ = writeln!(err);
            }
            if !self.tty {
                let _ = writeln!(err, "{} …", stage.name());
            }
            self.stage = Some(stage);
        }
        if self.tty {
            let width = 30usize;
            let filled = if total == 0 { width } else { (step as usize * width / total as usize).min(width) };
            let _ = write!(
                err,
                "\r{:<8} [{}{}] {step}/{total}  {:.1}s",
                stage.name(),
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.started.elapsed().as_secs_f32()
            );
            let _ = err.flush();
        }
    }

    /// Ends the line.
    pub fn finish(&mut self) {
        if self.enabled && self.tty && self.stage.is_some() {
            let _ = writeln!(std::io::stderr());
        }
        self.stage = None;
    }
}
