//! The worker's side of the event channel and its [`RunObserver`]: which events may be dropped
//! when the front end falls behind, the waker, and cancellation by command order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use super::protocol::{Event, Preview, Stage};
use crate::families::RunObserver;
use crate::knobs::DeviceKind;
use crate::telemetry::RunRecorder;

/// Sends events and wakes the front end after each one that got through.
pub(crate) struct EventTx {
    tx: SyncSender<Event>,
    waker: Box<dyn Fn() + Send>,
}

impl EventTx {
    pub(crate) fn new(tx: SyncSender<Event>, waker: Box<dyn Fn() + Send>) -> Self {
        EventTx { tx, waker }
    }

    /// Sends an event that must arrive (output, error, telemetry, cancelled, …), waiting for
    /// room if the queue is full. Nothing happens once the front end is gone.
    pub(crate) fn send(&self, event: Event) {
        if self.tx.send(event).is_ok() {
            (self.waker)();
        }
    }

    /// Sends progress or a preview, dropping it rather than waiting when the queue is full.
    pub(crate) fn send_droppable(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => (self.waker)(),
            Err(TrySendError::Full(e)) => log::trace!("event queue full, dropped {e:?}"),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Cancellation by command order: [`CancelToken::cancel_before`] cancels every command sent
/// before the call and none sent after, so a late cancel never poisons the next run.
#[derive(Clone, Default)]
pub(crate) struct CancelToken {
    /// Commands with a sequence number below this are cancelled.
    before: Arc<AtomicU64>,
}

impl CancelToken {
    pub(crate) fn cancel_before(&self, seq: u64) {
        self.before.fetch_max(seq, Ordering::SeqCst);
    }

    pub(crate) fn is_cancelled(&self, seq: u64) -> bool {
        seq < self.before.load(Ordering::SeqCst)
    }
}

/// The [`RunObserver`] handed to families: forwards progress and previews as events and keeps
/// timings and peaks in the run's recorder.
pub(crate) struct Observer<'a> {
    pub(crate) events: &'a EventTx,
    pub(crate) recorder: &'a mut RunRecorder,
    pub(crate) cancel: &'a CancelToken,
    /// The sequence number of the command being run.
    pub(crate) seq: u64,
    /// The stage in progress, for progress events and out-of-memory hints.
    pub(crate) stage: Option<Stage>,
    /// The planned CPU bytes of each stage of this run, checked as the stage begins
    /// ([`super::failure::check_allocatable`]); empty when there is no plan.
    pub(crate) cpu_stage_bytes: BTreeMap<String, u64>,
    /// The run's device, for the hint of a refused stage.
    pub(crate) device: DeviceKind,
}

impl<'a> Observer<'a> {
    /// The observer of a load (or a partial reload) of command `seq` on `device`, already in the
    /// load stage; a load is not checked against a plan (the planner's pre-flight is its check).
    pub(crate) fn loading(
        events: &'a EventTx,
        recorder: &'a mut RunRecorder,
        cancel: &'a CancelToken,
        seq: u64,
        device: DeviceKind,
    ) -> Self {
        let mut obs = Observer { events, recorder, cancel, seq, stage: None, cpu_stage_bytes: BTreeMap::new(), device };
        let _ = crate::families::RunObserver::stage(&mut obs, Stage::Load);
        obs
    }
}

impl RunObserver for Observer<'_> {
    fn stage(&mut self, stage: Stage) -> crate::Result<()> {
        // the buffer the last stage's layers widened narrow weights into is as large as that
        // stage's largest layer; this stage's layers need their own (families run on this thread)
        crate::nn::cpu::expand::release();
        self.stage = Some(stage);
        self.recorder.stage(stage.name());
        match self.cpu_stage_bytes.get(stage.name()) {
            Some(&need) => super::failure::check_allocatable(need, stage, self.device),
            None => Ok(()),
        }
    }

    fn progress(&mut self, step: u32, total: u32) {
        let stage = self.stage.unwrap_or(Stage::Denoise);
        if stage == Stage::Denoise {
            self.recorder.step_done();
        }
        self.events.send_droppable(Event::Progress { stage, step, total });
    }

    fn preview(&mut self, preview: Preview) {
        self.events.send_droppable(Event::Preview(preview));
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled(self.seq)
    }

    fn cancel_check(&self) -> crate::CancelCheck {
        let (token, seq) = (self.cancel.clone(), self.seq);
        crate::CancelCheck::new(move || token.is_cancelled(seq))
    }

    fn note(&mut self, note: String) {
        self.recorder.note(note);
    }
}
