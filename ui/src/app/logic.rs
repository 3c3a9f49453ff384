//! Per-frame logic that does not draw: draining engine events (with a time limit), keeping the
//! plan in step with the knobs, dropped files, outputs, history and A/B numbers.

use std::time::{Duration, Instant};

use egui::{ColorImage, TextureOptions};
use headroom_engine::media::Image;
use headroom_engine::worker::protocol::Preview;

use super::HeadroomApp;
use super::backend::{EngineEvent, Media, RunRecord};
use super::command::AppCommand;
use super::state::{CenterTab, LoadedModel, OutputCard, RunProgress};

/// Longest time spent draining engine events in one frame.
const EVENT_BUDGET: Duration = Duration::from_millis(4);

/// Turns an engine image into a texture (nearest-neighbour when magnified: outputs are small).
pub fn texture(ctx: &egui::Context, name: &str, img: &Image) -> Option<egui::TextureHandle> {
    let (w, h) = (img.width as usize, img.height as usize);
    if w == 0 || h == 0 || img.rgb.len() != w * h * 3 {
        return None;
    }
    let color = ColorImage::from_rgb([w, h], &img.rgb);
    Some(ctx.load_texture(name, color, TextureOptions::NEAREST))
}

/// Min/max pairs over `buckets` equal slices of a clip.
pub fn envelope(samples: &[f32], buckets: usize) -> Vec<(f32, f32)> {
    if samples.is_empty() || buckets == 0 {
        return Vec::new();
    }
    let per = samples.len().div_ceil(buckets).max(1);
    samples
        .chunks(per)
        .map(|c| {
            c.iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)))
        })
        .collect()
}

impl HeadroomApp {
    /// What runs every frame, and also while the window is hidden: draining engine events and
    /// keeping the plan in step with the knobs.
    pub fn logic(&mut self, ctx: &egui::Context) {
        self.rt.frame_start = Some(std::time::Instant::now());
        self.drain_events(ctx);
        self.refresh_plan();
    }

    /// Files dropped on (or hovering over) the window; read only in shown frames, since a hidden
    /// window's input is the last shown frame's.
    pub(super) fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let (hovering, dropped) = ctx.input(|i| {
            let paths: Vec<_> = i
                .raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect();
            (!i.raw.hovered_files.is_empty(), paths)
        });
        self.rt.hovering_files = hovering;
        if !dropped.is_empty() {
            self.rt.commands.push(AppCommand::OpenPaths(dropped));
        }
    }

    fn drain_events(&mut self, ctx: &egui::Context) {
        let deadline = Instant::now() + EVENT_BUDGET;
        while Instant::now() < deadline {
            let Some(ev) = self.rt.backend.try_recv() else {
                return;
            };
            self.handle_event(ctx, ev);
        }
        // Events left over: come back next frame.
        ctx.request_repaint();
    }

    fn handle_event(&mut self, ctx: &egui::Context, ev: EngineEvent) {
        let rt = &mut self.rt;
        match ev {
            EngineEvent::Loaded {
                model,
                family,
                weight_bytes,
                load_ms,
            } => {
                rt.loading = None;
                // load_ms 0 for the loaded model: it took knobs that change no weights in place
                if load_ms == 0
                    && let Some(l) = rt.loaded.as_mut().filter(|l| l.model == model)
                {
                    l.knobs = self.state.knobs;
                    rt.notify(format!("Knobs applied to {model} without reloading"));
                    return;
                }
                rt.notify(format!("Loaded {model} ({family}) in {load_ms} ms"));
                self.state.last_model = Some(model.clone());
                self.state.remember(&model);
                // whether it makes audio: as its inspection said, else from its manifest (once)
                let audio = match rt.candidate.take_if(|c| c.model == model) {
                    Some(c) => c.summary.as_ref().is_ok_and(|s| s.audio),
                    None => headroom_engine::model::makes_audio(&headroom_engine::ModelRef::parse(&model)),
                };
                rt.loaded = Some(LoadedModel {
                    model,
                    audio,
                    family,
                    weight_bytes,
                    load_ms,
                    knobs: self.state.knobs,
                });
            }
            EngineEvent::Unloaded => rt.loaded = None,
            EngineEvent::Progress { stage, step, total } => {
                let run = rt.run.get_or_insert_with(|| RunProgress {
                    stage: String::new(),
                    step: 0,
                    total: 0,
                    started: Instant::now(),
                });
                let started = run.started;
                let new_stage = run.stage != stage;
                *run = RunProgress {
                    stage: stage.clone(),
                    step,
                    total,
                    started,
                };
                if new_stage {
                    rt.mark_run_event(stage);
                }
            }
            EngineEvent::Preview(Preview::Image(img)) => rt.preview = texture(ctx, "preview", &img),
            EngineEvent::Preview(Preview::Waveform(w)) => rt.preview_wave = w,
            EngineEvent::Output(record) => {
                let record = *record;
                rt.run = None;
                rt.mark_run_event("done");
                let reproduction = rt.expect.take().map(|e| {
                    let drift = rt.backend.drift(&e.original, &record);
                    if drift.is_empty() { Ok(()) } else { Err(drift) }
                });
                if let Some(h) = &mut rt.history {
                    h.insert(0, record.clone());
                }
                let compare = rt.compare_with.take();
                let swept = rt.sweep.current.take();
                self.add_output(ctx, record, reproduction);
                if let Some(value) = swept {
                    // a sweep's outputs fill its table; the tab stays
                    self.sweep_row(value);
                    self.rt.tab = CenterTab::Sweep;
                    self.sweep_next();
                }
                if let Some(with) = compare {
                    // the pair: the output compared (A) and its reference (B)
                    self.give_back();
                    self.rt.ab.a = Some(with);
                    self.rt.ab.b = Some(self.rt.outputs.len() - 1);
                    self.compare_ab(ctx);
                    self.rt.tab = CenterTab::Ab;
                }
            }
            EngineEvent::Cancelled => {
                rt.run = None;
                rt.expect = None;
                let swept = rt.sweep.running();
                self.end_lent_runs();
                self.rt.notify(if swept { "Sweep stopped" } else { "Run cancelled" });
            }
            EngineEvent::Error { message, detail } => {
                rt.run = None;
                rt.loading = None;
                rt.expect = None;
                self.end_lent_runs();
                let rt = &mut self.rt;
                if !detail.is_empty() {
                    log::warn!("{message}: {detail}");
                }
                rt.error(message);
            }
        }
    }

    /// Adds an output card (decoding its media) and selects it.
    pub(super) fn add_output(
        &mut self,
        ctx: &egui::Context,
        record: RunRecord,
        reproduction: Option<Result<(), Vec<String>>>,
    ) {
        let rt = &mut self.rt;
        let media = match record.outputs.first() {
            Some(p) => rt.backend.read_media(p),
            None => Err("the run wrote no output file".to_string()),
        };
        let n = rt.outputs.len();
        let (texture, envelope) = match &media {
            Ok(Media::Image(img)) => (self::texture(ctx, &format!("output-{n}"), img), Vec::new()),
            Ok(Media::Audio(a)) => (None, envelope(&a.samples, 1024)),
            Err(_) => (None, Vec::new()),
        };
        rt.outputs.push(OutputCard {
            record,
            media,
            texture,
            envelope,
            reproduction,
        });
        rt.selected = Some(n);
        rt.tab = CenterTab::Output;
        // Newest output becomes B, the previous A: the usual A/B is "last two runs".
        rt.ab.a = rt.ab.b.or(n.checked_sub(1));
        rt.ab.b = Some(n);
        self.compare_ab(ctx);
    }

    /// Recomputes the plan when the model, knobs, request size or budget changed.
    fn refresh_plan(&mut self) {
        let Some(model) = self.rt.current_model().map(str::to_string) else {
            self.rt.plan = None;
            return;
        };
        // A model that could not be inspected cannot be planned; its card says why.
        let unreadable = self.rt.loaded.is_none()
            && self.rt.candidate.as_ref().is_some_and(|c| c.summary.is_err());
        if unreadable {
            self.rt.plan = None;
            self.rt.plan_key.clear();
            return;
        }
        let s = &self.state;
        let budget = s.budget_bytes();
        let key = format!(
            "{model}|{:?}|{}x{}x{}|{:?}|{:?}",
            s.knobs, s.request.width, s.request.height, s.request.batch, s.request.seconds, budget
        );
        if key != self.rt.plan_key {
            self.rt.plan = Some(self.rt.backend.plan(&model, &s.knobs, &s.request, budget));
            self.rt.plan_key = key;
        }
    }

    /// Reads the profiles in the output folder as history cards, newest first.
    pub(super) fn refresh_history(&mut self) {
        let mut files: Vec<_> = std::fs::read_dir(&self.rt.out_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort_by_key(|p| {
            std::cmp::Reverse(std::fs::metadata(p).and_then(|m| m.modified()).ok())
        });
        let mut runs = Vec::new();
        for p in files.iter().take(200) {
            match self.rt.backend.read_run(p) {
                Ok(r) => runs.push(r),
                Err(e) => log::warn!("{e}"),
            }
        }
        self.rt.history = Some(runs);
    }

    /// Records the newest output as the sweep's row for `value`, with its quality against the
    /// reference run (the first of the sweep).
    fn sweep_row(&mut self, value: String) {
        let output = self.rt.outputs.len() - 1;
        if value == super::state::SWEEP_REFERENCE {
            self.rt.sweep.reference = Some(output);
        }
        let card = &self.rt.outputs[output];
        let quality = match (self.rt.sweep.reference.and_then(|r| self.rt.outputs.get(r)), &card.media) {
            (Some(reference), Ok(media)) => match &reference.media {
                Ok(ref_media) => self.rt.backend.compare(ref_media, media).map(|c| c.numbers).unwrap_or_default(),
                Err(_) => Vec::new(),
            },
            _ => Vec::new(),
        };
        let r = &card.record;
        let row = super::state::SweepRow {
            value,
            output,
            quality,
            // the heap peak where counted: the RSS of a long-lived app keeps what earlier runs freed
            peak_bytes: if r.peak_vram_bytes > 0 {
                r.peak_vram_bytes
            } else if r.peak_heap_bytes > 0 {
                r.peak_heap_bytes
            } else {
                r.peak_ram_bytes
            },
            time_ms: r.timings_ms.iter().filter(|(s, _)| s != "load").map(|(_, ms)| ms).sum(),
        };
        self.rt.sweep.rows.push(row);
    }

    /// Compares the A and B outputs when both are chosen.
    pub(super) fn compare_ab(&mut self, ctx: &egui::Context) {
        let ab = &mut self.rt.ab;
        ab.comparison = None;
        ab.heatmap = None;
        ab.abx = None;
        let (Some(a), Some(b)) = (ab.a, ab.b) else {
            return;
        };
        let (Some(Ok(ma)), Some(Ok(mb))) = (
            self.rt.outputs.get(a).map(|o| &o.media),
            self.rt.outputs.get(b).map(|o| &o.media),
        ) else {
            return;
        };
        let result = self.rt.backend.compare(ma, mb);
        if let Ok(c) = &result {
            self.rt.ab.heatmap = c
                .heatmap
                .as_ref()
                .and_then(|h| texture(ctx, "ab-heatmap", h));
        }
        self.rt.ab.comparison = Some(result);
    }
}
