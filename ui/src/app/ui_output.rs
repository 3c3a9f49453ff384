//! The center: tabs for the output (image view with fit / 1:1 / zoom and pan, or an audio
//! waveform with play / pause / seek / loop), the history cards, and A/B.

use egui::{Color32, RichText, Sense, Stroke, Vec2};

use super::HeadroomApp;
use super::backend::{Media, RunRecord};
use super::command::AppCommand;
use super::state::{CenterTab, ImageScale};
use super::ui_plan::short_name;
use super::widgets::fmt_bytes;

impl HeadroomApp {
    /// The central panel.
    pub(super) fn center_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            for (tab, label) in [
                (CenterTab::Output, "Output"),
                (CenterTab::History, "History"),
                (CenterTab::Ab, "A/B"),
                (CenterTab::Sweep, "Sweep"),
            ] {
                if ui.selectable_label(self.rt.tab == tab, label).clicked() {
                    self.rt.commands.push(AppCommand::ShowTab(tab));
                }
            }
        });
        ui.separator();
        match self.rt.tab {
            CenterTab::Output => self.output_ui(ui),
            CenterTab::History => self.history_ui(ui),
            CenterTab::Ab => self.ab_ui(ui),
            CenterTab::Sweep => self.sweep_ui(ui),
        }
    }

    fn output_ui(&mut self, ui: &mut egui::Ui) {
        // While running, the per-step preview takes the stage.
        if self.rt.run.is_some() {
            if let Some(tex) = &self.rt.preview {
                let size = fit(tex.size_vec2(), ui.available_size() - Vec2::new(0.0, 90.0));
                ui.vertical_centered(|ui| {
                    ui.add(egui::Image::from_texture(egui::load::SizedTexture::new(
                        tex.id(),
                        size,
                    )));
                    ui.label(RichText::new("preview of the current step").weak());
                });
                return;
            }
            if !self.rt.preview_wave.is_empty() {
                waveform_ui(ui, &self.rt.preview_wave, None, 120.0);
                return;
            }
        }
        let Some(i) = self.rt.selected.filter(|&i| i < self.rt.outputs.len()) else {
            ui.centered_and_justified(|ui| {
                ui.label(
                    RichText::new(
                        "Outputs appear here. Load a model and press Generate (Ctrl+Enter).",
                    )
                    .weak(),
                );
            });
            return;
        };
        self.output_strip_ui(ui);
        let card = &self.rt.outputs[i];
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(format!("seed {}", card.record.request.seed)).strong());
            ui.label(RichText::new(run_line(&card.record)).weak());
            match &card.reproduction {
                Some(Ok(())) => {
                    ui.label(
                        RichText::new("reproduced: identical")
                            .color(Color32::from_rgb(90, 190, 110)),
                    );
                }
                Some(Err(d)) => {
                    ui.label(
                        RichText::new(format!("reproduced with drift: {}", d.join(", ")))
                            .color(Color32::from_rgb(230, 170, 60)),
                    );
                }
                None => {}
            }
            let is_reference = card.record.knobs == card.record.knobs.reference();
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui.button("Save as…").clicked() {
                    self.rt.commands.push(AppCommand::SaveOutputAs(i));
                }
                let compare = ui
                    .add_enabled(!is_reference && self.rt.run.is_none(), egui::Button::new("Compare with f32"))
                    .on_hover_text("Run the same request with every component in f32, no offload or slicing, and open A/B with the pair")
                    .on_disabled_hover_text("Already the full-precision reference, or a run is in progress");
                if compare.clicked() {
                    self.rt.commands.push(AppCommand::CompareWithReference(i));
                }
            });
        });
        let card = &self.rt.outputs[i];
        if !card.record.notes.is_empty() {
            egui::CollapsingHeader::new(format!("Run notes ({})", card.record.notes.len()))
                .id_salt(("run_notes", i))
                .show(ui, |ui| {
                    for n in &card.record.notes {
                        ui.label(RichText::new(n).small());
                    }
                });
        }
        let card = &self.rt.outputs[i];
        match &card.media {
            None => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(RichText::new("Reading the output…").weak());
                });
            }
            Some(Err(e)) => {
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
            Some(Ok(Media::Image(_))) => {
                if let Some(tex) = card.texture.clone() {
                    self.image_view_ui(ui, &tex);
                }
            }
            Some(Ok(Media::Audio(a))) => {
                let secs = a.duration_secs();
                let envelope = card.envelope.clone();
                self.audio_view_ui(ui, i, &envelope, secs);
            }
        }
    }

    /// Thumbnails of this session's outputs, newest last.
    fn output_strip_ui(&mut self, ui: &mut egui::Ui) {
        if self.rt.outputs.len() < 2 {
            return;
        }
        egui::ScrollArea::horizontal()
            .id_salt("strip")
            .max_height(52.0)
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    for (i, o) in self.rt.outputs.iter().enumerate() {
                        let selected = self.rt.selected == Some(i);
                        let resp = match &o.texture {
                            Some(t) => ui.add(
                                egui::Button::image(egui::load::SizedTexture::new(
                                    t.id(),
                                    fit(t.size_vec2(), Vec2::splat(40.0)),
                                ))
                                .selected(selected),
                            ),
                            None => {
                                ui.add(egui::Button::new(format!("#{}", i + 1)).selected(selected))
                            }
                        };
                        if resp
                            .on_hover_text(format!("seed {}", o.record.request.seed))
                            .clicked()
                        {
                            self.rt.commands.push(AppCommand::SelectOutput(i));
                        }
                    }
                });
            });
    }

    /// An image with fit / 1:1 / zoom (Ctrl+scroll) and pan (drag or scroll bars).
    fn image_view_ui(&mut self, ui: &mut egui::Ui, tex: &egui::TextureHandle) {
        ui.horizontal(|ui| {
            let scale = self.rt.scale;
            if ui
                .selectable_label(scale == ImageScale::Fit, "Fit")
                .clicked()
            {
                self.rt.commands.push(AppCommand::SetScale(ImageScale::Fit));
            }
            if ui
                .selectable_label(scale == ImageScale::Zoom(1.0), "1:1")
                .clicked()
            {
                self.rt
                    .commands
                    .push(AppCommand::SetScale(ImageScale::Zoom(1.0)));
            }
            for z in [2.0, 4.0, 8.0] {
                if ui
                    .selectable_label(scale == ImageScale::Zoom(z), format!("{z}×"))
                    .clicked()
                {
                    self.rt
                        .commands
                        .push(AppCommand::SetScale(ImageScale::Zoom(z)));
                }
            }
            let [w, h] = tex.size();
            ui.label(RichText::new(format!("{w}×{h} px")).weak());
        });
        let avail = ui.available_size();
        match self.rt.scale {
            ImageScale::Fit => {
                let size = fit(tex.size_vec2(), avail);
                ui.centered_and_justified(|ui| {
                    ui.add(egui::Image::from_texture(egui::load::SizedTexture::new(
                        tex.id(),
                        size,
                    )));
                });
            }
            ImageScale::Zoom(z) => {
                let zoom_delta = ui.input(|i| {
                    if i.modifiers.command {
                        i.zoom_delta()
                    } else {
                        1.0
                    }
                });
                if zoom_delta != 1.0 {
                    let z2 = (z * zoom_delta).clamp(0.1, 32.0);
                    self.rt
                        .commands
                        .push(AppCommand::SetScale(ImageScale::Zoom(z2)));
                }
                egui::ScrollArea::both().show(ui, |ui| {
                    ui.add(egui::Image::from_texture(egui::load::SizedTexture::new(
                        tex.id(),
                        tex.size_vec2() * z,
                    )));
                });
            }
        }
    }

    /// A waveform with a play head: click to seek; play/pause/loop.
    fn audio_view_ui(
        &mut self,
        ui: &mut egui::Ui,
        index: usize,
        envelope: &[(f32, f32)],
        secs: f32,
    ) {
        let this_playing = self.rt.audio_output == Some(index);
        let (playing, looping, pos, err) = match &self.rt.player {
            Some(p) if this_playing => (
                p.is_playing(),
                p.is_looping(),
                Some(p.position_fraction()),
                p.error().map(str::to_string),
            ),
            Some(p) => (false, p.is_looping(), None, p.error().map(str::to_string)),
            None => (false, false, None, None),
        };
        ui.horizontal(|ui| {
            if playing {
                if ui.button("Pause").clicked() {
                    self.rt.commands.push(AppCommand::PauseAudio);
                }
                ui.ctx()
                    .request_repaint_after(std::time::Duration::from_millis(33));
            } else if ui.button("Play").clicked() {
                self.rt.commands.push(AppCommand::PlayAudio(index));
            }
            let mut l = looping;
            if ui.checkbox(&mut l, "Loop").changed() {
                self.rt.commands.push(AppCommand::SetLoop(l));
            }
            let at = pos.unwrap_or(0.0) * secs;
            ui.label(RichText::new(format!("{at:.2} / {secs:.2} s")).monospace());
            if let Some(e) = err {
                ui.colored_label(ui.visuals().warn_fg_color, e);
            }
        });
        if let Some(f) = waveform_ui(ui, envelope, pos, ui.available_height().clamp(80.0, 260.0)) {
            if this_playing {
                self.rt.commands.push(AppCommand::SeekAudio(f));
            } else {
                self.rt.commands.push(AppCommand::PlayAudio(index));
                self.rt.commands.push(AppCommand::SeekAudio(f));
            }
        }
    }

    /// History cards: the saved profiles of every session, newest first, filtered by words; click
    /// to restore, Rerun to reproduce, Compare with f32 to set it against its reference.
    fn history_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label(RichText::new(format!("Runs in {}", self.rt.out_dir.display())).weak());
            if ui.small_button("Refresh").clicked() {
                self.rt.commands.push(AppCommand::RefreshHistory);
            }
            ui.label("Filter");
            ui.add(
                egui::TextEdit::singleline(&mut self.rt.history_filter)
                    .hint_text("model, prompt, seed, precision.unet=q4k …")
                    .desired_width(260.0),
            );
        });
        if self.rt.history_reading {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(RichText::new("Reading the run history…").weak());
            });
        }
        let Some(history) = &self.rt.history else {
            return;
        };
        if history.is_empty() {
            ui.label(RichText::new("No saved runs yet.").weak());
            return;
        }
        let filter = self.rt.history_filter.clone();
        egui::ScrollArea::vertical().show(ui, |ui| {
            for r in history.iter().filter(|r| history_matches(r, &filter)) {
                egui::Frame::group(ui.style()).show(ui, |ui| {
                    ui.set_width(ui.available_width());
                    ui.horizontal(|ui| {
                        ui.label(RichText::new(short_name(&r.model)).strong());
                        ui.label(format!("seed {}", r.request.seed));
                        ui.label(RichText::new(run_line(r)).weak());
                        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                            if ui
                                .button("Rerun")
                                .on_hover_text("Run again and check the output is identical")
                                .clicked()
                            {
                                self.rt
                                    .commands
                                    .push(AppCommand::Reproduce(Box::new(r.clone())));
                            }
                            if ui
                                .button("Restore")
                                .on_hover_text("Put its request and knobs back")
                                .clicked()
                            {
                                self.rt
                                    .commands
                                    .push(AppCommand::RestoreRun(Box::new(r.clone())));
                            }
                            if ui.button("Open").clicked() {
                                self.rt
                                    .commands
                                    .push(AppCommand::OpenRun(Box::new(r.clone())));
                            }
                            let reference = r.knobs == r.knobs.reference();
                            if ui
                                .add_enabled(!reference, egui::Button::new("Compare with f32"))
                                .on_hover_text("Open it and run its request with every component in f32, then A/B")
                                .clicked()
                            {
                                self.rt
                                    .commands
                                    .push(AppCommand::CompareRun(Box::new(r.clone())));
                            }
                        });
                    });
                    ui.label(RichText::new(&r.request.prompt).italics());
                });
            }
        });
    }
}

/// Whether a history card shows under `filter`: every word of it (case-insensitive) appears in
/// the run's model, prompt, negative prompt, `seed N` or its knobs as `key=value`.
pub fn history_matches(r: &RunRecord, filter: &str) -> bool {
    let mut text = format!("{} {} {} seed {}", r.model, r.request.prompt, r.request.negative, r.request.seed);
    for (k, v) in r.knobs.to_pairs() {
        text.push_str(&format!(" {k}={v}"));
    }
    let text = text.to_lowercase();
    filter.split_whitespace().all(|w| text.contains(&w.to_lowercase()))
}

/// One line about a run: steps, scheduler, size, precision, time, peak memory.
pub fn run_line(r: &RunRecord) -> String {
    format!(
        "{} steps {} · {}×{} · {} · {:.1} s · peak RAM {} · VRAM {}",
        r.request.steps,
        r.request.scheduler.name(),
        r.request.width,
        r.request.height,
        r.knobs.precision.describe(),
        r.total_ms() as f64 / 1000.0,
        fmt_bytes(r.peak_ram_bytes),
        fmt_bytes(r.peak_vram_bytes)
    )
}

/// `size` scaled to fit inside `avail`, keeping its aspect ratio.
pub fn fit(size: Vec2, avail: Vec2) -> Vec2 {
    if size.x <= 0.0 || size.y <= 0.0 {
        return Vec2::ZERO;
    }
    let s = (avail.x / size.x).min(avail.y / size.y).max(0.01);
    size * s
}

/// Draws a min/max envelope with an optional play head; returns the clicked position (0..1).
pub fn waveform_ui(
    ui: &mut egui::Ui,
    envelope: &[(f32, f32)],
    head: Option<f32>,
    height: f32,
) -> Option<f32> {
    let (rect, resp) =
        ui.allocate_exact_size(Vec2::new(ui.available_width(), height), Sense::click());
    resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Slider, true, "waveform"));
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 4.0, ui.visuals().extreme_bg_color);
    let n = envelope.len().max(1) as f32;
    let color = Color32::from_rgb(70, 140, 200);
    for (i, (lo, hi)) in envelope.iter().enumerate() {
        let x = rect.left() + rect.width() * (i as f32 + 0.5) / n;
        let y = |v: f32| rect.center().y - v.clamp(-1.0, 1.0) * rect.height() * 0.45;
        painter.line_segment(
            [egui::pos2(x, y(*hi)), egui::pos2(x, y(*lo))],
            Stroke::new(1.0, color),
        );
    }
    if let Some(h) = head {
        let x = rect.left() + rect.width() * h;
        painter.line_segment(
            [egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())],
            Stroke::new(2.0, Color32::WHITE),
        );
    }
    let pos = resp.interact_pointer_pos().filter(|_| resp.clicked())?;
    Some(((pos.x - rect.left()) / rect.width()).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use headroom_engine::{Knobs, Request};

    /// Every word must match, in any case, against the model, prompt, seed and knob pairs.
    #[test]
    fn history_filter_matches_every_word() {
        let mut knobs = Knobs::default();
        knobs.set("precision.unet", "q4k").unwrap();
        let r = RunRecord {
            profile_path: "a.toml".into(),
            outputs: vec![],
            model: "/models/sd15.safetensors".into(),
            request: Request { prompt: "A red Circle".into(), seed: 42, ..Request::default() },
            knobs,
            sha256: None,
            peak_ram_bytes: 0,
            peak_vram_bytes: 0,
            peak_heap_bytes: 0,
            notes: vec![],
            timings_ms: vec![],
        };
        for yes in ["", "sd15", "red circle", "precision.unet=q4k", "seed 42", "SD15 circle"] {
            assert!(history_matches(&r, yes), "{yes:?}");
        }
        for no in ["precision.unet=f32", "blue", "sd15 blue", "seed 43"] {
            assert!(!history_matches(&r, no), "{no:?}");
        }
    }
}
