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
        self.take_chore_answers(ctx);
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
                reread,
                components,
                fields,
            } => {
                rt.loading = None;
                // the loaded model took the knobs, reading again only the components they touch
                if let Some(reread) = reread
                    && let Some(l) = rt.loaded.as_mut().filter(|l| l.model == model)
                {
                    l.knobs = self.state.knobs;
                    l.weight_bytes = weight_bytes;
                    l.components = components;
                    l.fields = fields;
                    rt.notify(if reread.is_empty() {
                        format!("Knobs applied to {model} without reloading")
                    } else {
                        format!("Read the {} of {model} again in {load_ms} ms; the rest stayed loaded", reread.join(" and "))
                    });
                    return;
                }
                rt.notify(format!("Loaded {model} ({family}) in {load_ms} ms"));
                self.state.last_model = Some(model.clone());
                self.state.remember(&model);
                // whether it makes audio: as its inspection said, else from its manifest (once)
                let audio = match rt.candidate.take_if(|c| c.model == model) {
                    Some(c) => c.summary.as_ref().is_some_and(|s| s.as_ref().is_ok_and(|s| s.audio)),
                    None => headroom_engine::model::makes_audio(&headroom_engine::ModelRef::parse(&model)),
                };
                rt.loaded = Some(LoadedModel {
                    model,
                    audio,
                    family,
                    weight_bytes,
                    load_ms,
                    knobs: self.state.knobs,
                    components,
                    fields,
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
                let expected = rt.expect.take();
                if let Some(h) = &mut rt.history {
                    h.insert(0, record.clone());
                }
                let compare = rt.compare_with.take();
                let swept = rt.sweep.current.take();
                let i = self.add_output(ctx, record.clone());
                if let Some(e) = expected {
                    // whether the reproduction drifted, read from both profiles off the UI thread
                    self.rt.chores.run(
                        "Comparing with the original run",
                        move |r| r.drift(&e.original, &record),
                        move |app, _, drift| {
                            if let Some(card) = app.rt.outputs.get_mut(i) {
                                card.reproduction = Some(if drift.is_empty() { Ok(()) } else { Err(drift) });
                            }
                        },
                    );
                }
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
                    self.rt.ab.b = Some(i);
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

    /// Adds an output card and selects it; its media is decoded on the chores thread, and what
    /// waits for it (A/B numbers, a sweep row's quality) follows when it arrives. Returns its index.
    pub(super) fn add_output(&mut self, ctx: &egui::Context, record: RunRecord) -> usize {
        let rt = &mut self.rt;
        let n = rt.outputs.len();
        let path = record.outputs.first().cloned();
        rt.outputs.push(OutputCard {
            record,
            media: None,
            texture: None,
            envelope: Vec::new(),
            reproduction: None,
        });
        let label = path
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or_else(|| "output".to_string(), |f| f.to_string_lossy().into_owned());
        rt.chores.run(
            format!("Reading {label}"),
            move |r| match path {
                Some(p) => r.read_media(&p),
                None => Err("the run wrote no output file".to_string()),
            },
            move |app, ctx, media| app.media_ready(ctx, n, media),
        );
        rt.selected = Some(n);
        rt.tab = CenterTab::Output;
        // Newest output becomes B, the previous A: the usual A/B is "last two runs".
        rt.ab.a = rt.ab.b.or(n.checked_sub(1));
        rt.ab.b = Some(n);
        self.compare_ab(ctx);
        n
    }

    /// Output `i`'s media arrived: its texture or waveform, then the numbers that waited for it.
    fn media_ready(&mut self, ctx: &egui::Context, i: usize, media: Result<Media, String>) {
        let Some(card) = self.rt.outputs.get_mut(i) else {
            return;
        };
        match &media {
            Ok(Media::Image(img)) => card.texture = texture(ctx, &format!("output-{i}"), img),
            Ok(Media::Audio(a)) => card.envelope = envelope(&a.samples, 1024),
            Err(_) => {}
        }
        card.media = Some(media);
        if self.rt.ab.a == Some(i) || self.rt.ab.b == Some(i) {
            self.compare_ab(ctx);
        }
        self.measure_sweep_rows();
    }

    /// Asks for the plan when the model, knobs, request size or budget changed; the last plan
    /// stays shown until the new one arrives.
    fn refresh_plan(&mut self) {
        let Some(model) = self.rt.current_model().map(str::to_string) else {
            self.rt.plan = None;
            return;
        };
        // A model that could not be inspected cannot be planned; its card says why.
        let unreadable = self.rt.loaded.is_none()
            && self
                .rt
                .candidate
                .as_ref()
                .is_some_and(|c| c.summary.as_ref().is_some_and(|s| s.is_err()));
        if unreadable {
            self.rt.plan = None;
            self.rt.plan_key.clear();
            self.rt.plan_asked.clear();
            return;
        }
        let s = &self.state;
        let budget = s.budget_bytes();
        let key = format!(
            "{model}|{:?}|{}x{}x{}|{:?}|{:?}",
            s.knobs, s.request.width, s.request.height, s.request.batch, s.request.seconds, budget
        );
        if key == self.rt.plan_key || key == self.rt.plan_asked {
            return;
        }
        self.rt.plan_asked = key.clone();
        let (knobs, request) = (s.knobs, s.request.clone());
        self.rt.chores.run(
            format!("Planning {}", super::ui_plan::short_name(&model)),
            move |r| r.plan(&model, &knobs, &request, budget),
            move |app, _, plan| {
                // only the answer to the latest question is shown
                if app.rt.plan_asked == key {
                    app.rt.plan = Some(plan);
                    app.rt.plan_key = key;
                }
            },
        );
    }

    /// Reads the profiles in the output folder as history cards, newest first, on the chores
    /// thread.
    pub(super) fn refresh_history(&mut self) {
        let dir = self.rt.out_dir.clone();
        self.rt.history_reading = true;
        self.rt.chores.run(
            "Reading the run history",
            move |r| {
                let mut files: Vec<_> = std::fs::read_dir(&dir)
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
                    match r.read_run(p) {
                        Ok(run) => runs.push(run),
                        Err(e) => log::warn!("{e}"),
                    }
                }
                runs
            },
            |app, _, runs| {
                app.rt.history = Some(runs);
                app.rt.history_reading = false;
            },
        );
    }

    /// Records the newest output as the sweep's row for `value`; its quality against the
    /// reference run (the first of the sweep) follows once both outputs are decoded.
    fn sweep_row(&mut self, value: String) {
        let output = self.rt.outputs.len() - 1;
        if value == super::state::SWEEP_REFERENCE {
            self.rt.sweep.reference = Some(output);
        }
        let r = &self.rt.outputs[output].record;
        let row = super::state::SweepRow {
            value,
            output,
            quality: Vec::new(),
            measuring: false,
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
        self.measure_sweep_rows();
    }

    /// Measures each sweep row against the reference once both outputs are decoded (on the
    /// chores thread).
    fn measure_sweep_rows(&mut self) {
        let rt = &mut self.rt;
        let Some(Some(Ok(reference))) = rt.sweep.reference.and_then(|r| rt.outputs.get(r)).map(|o| &o.media) else {
            return;
        };
        for (k, row) in rt.sweep.rows.iter_mut().enumerate() {
            let Some(Some(Ok(media))) = rt.outputs.get(row.output).map(|o| &o.media) else {
                continue;
            };
            if row.measuring || !row.quality.is_empty() {
                continue;
            }
            row.measuring = true;
            let (reference, media, output) = (reference.clone(), media.clone(), row.output);
            rt.chores.run(
                format!("Measuring {}", row.value),
                move |r| r.compare(&reference, &media).map(|c| c.numbers).unwrap_or_default(),
                move |app, _, quality| {
                    if let Some(row) = app.rt.sweep.rows.get_mut(k).filter(|row| row.output == output) {
                        row.quality = quality;
                        row.measuring = false;
                    }
                },
            );
        }
    }

    /// Compares the A and B outputs when both are chosen and decoded (on the chores thread).
    pub(super) fn compare_ab(&mut self, _ctx: &egui::Context) {
        let ab = &mut self.rt.ab;
        ab.comparison = None;
        ab.heatmap = None;
        ab.abx = None;
        let (Some(a), Some(b)) = (ab.a, ab.b) else {
            return;
        };
        let (Some(Some(Ok(ma))), Some(Some(Ok(mb)))) = (
            self.rt.outputs.get(a).map(|o| &o.media),
            self.rt.outputs.get(b).map(|o| &o.media),
        ) else {
            return;
        };
        let (ma, mb) = (ma.clone(), mb.clone());
        self.rt.chores.run(
            "Comparing A and B",
            move |r| r.compare(&ma, &mb),
            move |app, ctx, result| {
                // a newer choice of A or B asks again
                if (app.rt.ab.a, app.rt.ab.b) != (Some(a), Some(b)) {
                    return;
                }
                if let Ok(c) = &result {
                    app.rt.ab.heatmap = c.heatmap.as_ref().and_then(|h| texture(ctx, "ab-heatmap", h));
                }
                app.rt.ab.comparison = Some(result);
            },
        );
    }
}
