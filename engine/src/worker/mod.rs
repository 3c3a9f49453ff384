//! The background engine thread and its handle: bounded commands in, bounded events out (see
//! [`protocol`]). Front ends hold an [`Engine`], send [`Command`]s and draw [`Event`]s.
//!
//! Every `Load` and `Generate` that starts running ends with an [`Event::Telemetry`] followed by
//! exactly one of `Loaded`/`Output`, `Cancelled` or `Error` (a panic in a run is also followed by
//! `Unloaded`, because a family that panicked is not run again); one refused before it starts
//! (an invalid request, no model loaded, cancelled while queued) sends only `Error` or
//! `Cancelled`. A `Load` that replaces a model sends `Unloaded` first: the old model is freed
//! before the new one is read. The first run after a load carries the load's timing and peaks. Progress and previews may be dropped when
//! the front end falls behind; every other event waits for room. `Cancel` takes effect at once
//! for every command sent before it (the run in progress stops at its next step, queued runs
//! end as `Cancelled`) and never touches commands sent after it.

mod events;
pub mod failure;
pub mod output;
pub mod protocol;
mod thread;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

pub use output::{FileSink, OutputSink, output_id};
pub use protocol::{Artifact, Command, Event, Preview, Stage};

use crate::error::{Error, Result};
use crate::families::{Family, RunObserver};
use crate::knobs::Knobs;
use crate::model::ModelRef;
use events::{CancelToken, EventTx};
use thread::{Envelope, Worker};

/// How many commands may wait for the engine thread.
pub const COMMAND_CAPACITY: usize = 32;
/// How many events may wait for the front end.
pub const EVENT_CAPACITY: usize = 256;

/// Opens a model as a family; the engine calls it on its own thread for every `Load`.
pub type Loader =
    Box<dyn Fn(&ModelRef, &Knobs, &mut dyn RunObserver) -> crate::Result<Box<dyn Family>> + Send>;

/// The handle to the engine thread `headroom-engine`. Dropping it cancels what runs, sends
/// `Shutdown`, and joins the thread (the model is dropped on that thread).
pub struct Engine {
    commands: Option<SyncSender<Envelope>>,
    events: Option<Receiver<Event>>,
    cancel: CancelToken,
    next_seq: AtomicU64,
    pending: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread with the real model families ([`crate::families::load`]);
    /// `waker` is called after every event (e.g. `move || ctx.request_repaint()`).
    pub fn spawn(waker: impl Fn() + Send + 'static) -> Engine {
        Self::spawn_with(waker, Box::new(crate::families::load))
    }

    /// Starts the engine thread with another way to open models (tests, tools).
    pub fn spawn_with(waker: impl Fn() + Send + 'static, loader: Loader) -> Engine {
        Self::spawn_with_sink(waker, loader, Box::new(FileSink))
    }

    /// Starts the engine thread with another loader and another writer of outputs.
    ///
    /// # Panics
    /// Only if the OS cannot start a thread.
    pub fn spawn_with_sink(
        waker: impl Fn() + Send + 'static,
        loader: Loader,
        sink: Box<dyn OutputSink>,
    ) -> Engine {
        let (cmd_tx, cmd_rx) = mpsc::sync_channel::<Envelope>(COMMAND_CAPACITY);
        let (evt_tx, evt_rx) = mpsc::sync_channel::<Event>(EVENT_CAPACITY);
        let cancel = CancelToken::default();
        let pending = Arc::new(AtomicUsize::new(0));
        let worker = Worker::new(
            loader,
            sink,
            EventTx::new(evt_tx, Box::new(waker)),
            cancel.clone(),
            Arc::clone(&pending),
        );
        let thread = std::thread::Builder::new()
            .name("headroom-engine".into())
            .spawn(move || worker.run(cmd_rx))
            .expect("the OS could not start the engine thread");
        Engine {
            commands: Some(cmd_tx),
            events: Some(evt_rx),
            cancel,
            next_seq: AtomicU64::new(0),
            pending,
            thread: Some(thread),
        }
    }

    /// Queues a command; `Cancel` is applied at once instead (see [`Engine::cancel`]).
    ///
    /// # Errors
    /// The queue already holds [`COMMAND_CAPACITY`] commands, or the engine thread has stopped.
    pub fn send(&self, cmd: Command) -> Result<()> {
        if matches!(cmd, Command::Cancel) {
            self.cancel();
            return Ok(());
        }
        let Some(commands) = &self.commands else {
            return Err(Error::invalid("the engine has stopped"));
        };
        let counted = !matches!(cmd, Command::Shutdown);
        if counted {
            self.pending.fetch_add(1, Ordering::SeqCst);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let undo = || {
            if counted {
                self.pending.fetch_sub(1, Ordering::SeqCst);
            }
        };
        match commands.try_send(Envelope { seq, cmd }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                undo();
                Err(Error::invalid(format!(
                    "the engine is busy: {COMMAND_CAPACITY} commands are already waiting; try again when the run ends"
                )))
            }
            Err(TrySendError::Disconnected(_)) => {
                undo();
                Err(Error::invalid("the engine has stopped"))
            }
        }
    }

    /// Cancels the run in progress (at its next step) and every command queued before now.
    pub fn cancel(&self) {
        self.cancel.cancel_before(self.next_seq.load(Ordering::SeqCst));
    }

    /// The next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.as_ref()?.try_recv().ok()
    }

    /// The next event, waiting up to `d` for one.
    pub fn recv_timeout(&self, d: Duration) -> Option<Event> {
        self.events.as_ref()?.recv_timeout(d).ok()
    }

    /// True from the moment a command is sent until the engine has finished it (and every
    /// command queued after it).
    pub fn is_busy(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel.cancel_before(u64::MAX);
        // With the receiver gone the thread never blocks on a full event queue.
        self.events = None;
        if let Some(commands) = self.commands.take() {
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            let _ = commands.send(Envelope { seq, cmd: Command::Shutdown });
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the engine thread ended with a panic");
        }
    }
}
