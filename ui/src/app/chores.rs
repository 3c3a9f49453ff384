//! The chores thread: everything slow the app asks of a [`Reader`] (inspect, plan, restore,
//! history, decoding outputs, A/B metrics) runs here, in the order asked, never in a frame. A
//! chore is two closures: the work, given the reader on the chores thread, and what to do with
//! its answer, run on the UI thread at the start of a frame (so state is only ever changed
//! there). Chores that run longer than [`Chores::SHOW_AFTER`] are shown with a spinner.
//!
//! Tests of panel logic use [`Chores::inline`], which does the work at once (still answering in a
//! later frame, as the thread does), so a fixed number of frames is enough.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::HeadroomApp;
use super::backend::Reader;

/// What to do with a chore's answer, on the UI thread.
pub type Answer = Box<dyn FnOnce(&mut HeadroomApp, &egui::Context) + Send>;

/// A chore's work: it reads, computes, and returns what to do with the result.
type Work = Box<dyn FnOnce(&dyn Reader) -> Answer + Send>;

/// One chore still running: its number, its words, and since when.
struct Running {
    id: u64,
    label: String,
    since: Instant,
}

/// The chores runner the app holds.
pub struct Chores {
    reader: Arc<dyn Reader>,
    /// To the chores thread; `None` runs each chore at once ([`Chores::inline`]).
    work: Option<Sender<(u64, Work)>>,
    answers_tx: Sender<(u64, Answer)>,
    answers: Receiver<(u64, Answer)>,
    running: Vec<Running>,
    next_id: u64,
    /// Woken when an answer is ready (the app's context, once it has drawn a frame).
    waker: Arc<Mutex<Option<egui::Context>>>,
}

impl Chores {
    /// Chores running longer than this are shown (spinner and words).
    pub const SHOW_AFTER: Duration = Duration::from_millis(100);

    /// Starts the thread `headroom-chores` around `reader`.
    pub fn threaded(reader: Arc<dyn Reader>) -> Self {
        let mut chores = Self::inline(reader);
        let (tx, rx) = mpsc::channel::<(u64, Work)>();
        let reader = Arc::clone(&chores.reader);
        let answers = chores.answers_tx.clone();
        let waker = Arc::clone(&chores.waker);
        let spawned = std::thread::Builder::new()
            .name("headroom-chores".into())
            .spawn(move || {
                for (id, work) in rx {
                    let answer = do_work(&*reader, work);
                    if answers.send((id, answer)).is_err() {
                        return;
                    }
                    if let Some(ctx) = waker.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                        ctx.request_repaint();
                    }
                }
            });
        match spawned {
            Ok(_) => chores.work = Some(tx),
            // without a thread the app still works, each chore in its frame
            Err(e) => log::warn!("the chores thread could not start ({e}); chores run in the frame"),
        }
        chores
    }

    /// Runs each chore at once on the calling thread; its answer is taken like a thread's.
    pub fn inline(reader: Arc<dyn Reader>) -> Self {
        let (answers_tx, answers) = mpsc::channel();
        Self {
            reader,
            work: None,
            answers_tx,
            answers,
            running: Vec::new(),
            next_id: 0,
            waker: Arc::new(Mutex::new(None)),
        }
    }

    /// Queues a chore: `work` runs on the chores thread with the reader; `then` gets its result
    /// on the UI thread. `label` says what it does ("Inspecting model.safetensors").
    pub fn run<T: Send + 'static>(
        &mut self,
        label: impl Into<String>,
        work: impl FnOnce(&dyn Reader) -> T + Send + 'static,
        then: impl FnOnce(&mut HeadroomApp, &egui::Context, T) + Send + 'static,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let label = label.into();
        let work: Work = Box::new(move |reader| {
            let out = work(reader);
            Box::new(move |app: &mut HeadroomApp, ctx: &egui::Context| then(app, ctx, out))
        });
        self.running.push(Running { id, label, since: Instant::now() });
        let work = match &self.work {
            Some(tx) => match tx.send((id, work)) {
                Ok(()) => return,
                Err(mpsc::SendError((_, work))) => work,
            },
            None => work,
        };
        let answer = do_work(&*self.reader, work);
        let _ = self.answers_tx.send((id, answer));
    }

    /// The answers ready now, in the order the chores were asked.
    pub fn take_answers(&mut self, ctx: &egui::Context) -> Vec<Answer> {
        let mut waker = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if waker.is_none() {
            *waker = Some(ctx.clone());
        }
        drop(waker);
        let mut out = Vec::new();
        while let Ok((id, answer)) = self.answers.try_recv() {
            self.running.retain(|r| r.id != id);
            out.push(answer);
        }
        out
    }

    /// True while a chore has not answered.
    pub fn busy(&self) -> bool {
        !self.running.is_empty()
    }

    /// The oldest chore running longer than [`Chores::SHOW_AFTER`]: its words and how long.
    pub fn slow(&self) -> Option<(&str, Duration)> {
        self.running
            .first()
            .map(|r| (r.label.as_str(), r.since.elapsed()))
            .filter(|(_, t)| *t >= Self::SHOW_AFTER)
    }
}

/// Runs one chore; a panic becomes an error notice instead of ending the thread.
fn do_work(reader: &dyn Reader, work: Work) -> Answer {
    match catch_unwind(AssertUnwindSafe(|| work(reader))) {
        Ok(answer) => answer,
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Box::new(move |app: &mut HeadroomApp, _: &egui::Context| app.rt.error(format!("internal error in a background read: {why}")))
        }
    }
}

impl HeadroomApp {
    /// How often a frame is drawn while a chore runs (its spinner and time).
    const CHORE_TICK: Duration = Duration::from_millis(100);

    /// Applies the chores' answers that are ready (at the start of a frame, and after its
    /// commands so an inline chore's answer shows in the same frame).
    pub(super) fn take_chore_answers(&mut self, ctx: &egui::Context) {
        let answers = self.rt.chores.take_answers(ctx);
        if !answers.is_empty() {
            ctx.request_repaint();
        }
        for answer in answers {
            answer(self, ctx);
        }
        if self.rt.chores.busy() {
            // the spinner of a slow chore appears, and moves, without other events
            ctx.request_repaint_after(Self::CHORE_TICK);
        }
    }
}
