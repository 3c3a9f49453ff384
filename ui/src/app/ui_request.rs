//! The request panel: prompt, negative, seed (dice and lock), steps, guidance, scheduler, size or
//! seconds, batch and its noise; Generate (Ctrl+Enter) and Cancel (Esc); progress with the stage.

use egui::RichText;
use headroom_engine::request::{NoiseMode, Scheduler};

use super::HeadroomApp;
use super::command::AppCommand;
use super::widgets::section_ui;

impl HeadroomApp {
    /// True when the model about to run (the inspected candidate, else the loaded one) makes
    /// audio, as its manifest says.
    pub(super) fn model_is_audio(&self) -> bool {
        match &self.rt.candidate {
            Some(c) => c.summary.as_ref().is_some_and(|s| s.as_ref().is_ok_and(|s| s.audio)),
            None => self.rt.loaded.as_ref().is_some_and(|l| l.audio),
        }
    }

    /// The right panel.
    pub(super) fn request_ui(&mut self, ui: &mut egui::Ui) {
        let mut r = self.state.request.clone();
        section_ui(ui, "Request");
        let prompt_label = ui.label("Prompt");
        ui.add(
            egui::TextEdit::multiline(&mut r.prompt)
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .hint_text("what to make"),
        )
        .labelled_by(prompt_label.id);
        let negative_label = ui.label("Negative prompt");
        ui.add(
            egui::TextEdit::multiline(&mut r.negative)
                .desired_rows(2)
                .desired_width(f32::INFINITY)
                .hint_text("what to avoid"),
        )
        .labelled_by(negative_label.id);
        ui.add_space(4.0);
        egui::Grid::new("request_grid")
            .num_columns(2)
            .spacing([8.0, 4.0])
            .show(ui, |ui| {
                let l = ui.label("Seed");
                ui.horizontal(|ui| {
                    ui.add(egui::DragValue::new(&mut r.seed).speed(1.0))
                        .labelled_by(l.id);
                    if ui
                        .button("Random")
                        .on_hover_text("Draw a new seed")
                        .clicked()
                    {
                        self.rt.commands.push(AppCommand::RandomizeSeed);
                    }
                    let mut locked = self.state.seed_locked;
                    if ui
                        .checkbox(&mut locked, "Lock")
                        .on_hover_text("Keep this seed; unlocked draws a new one per run")
                        .changed()
                    {
                        self.rt.commands.push(AppCommand::SetSeedLocked(locked));
                    }
                });
                ui.end_row();
                let l = ui.label("Steps");
                ui.add(egui::Slider::new(&mut r.steps, 1..=150))
                    .labelled_by(l.id);
                ui.end_row();
                let l = ui.label("Guidance");
                ui.add(egui::Slider::new(&mut r.guidance, 0.0..=20.0).step_by(0.5))
                    .labelled_by(l.id);
                ui.end_row();
                let l = ui.label("Scheduler");
                ui.horizontal(|ui| {
                    egui::ComboBox::from_id_salt("scheduler")
                        .selected_text(r.scheduler.name())
                        .show_ui(ui, |ui| {
                            for s in Scheduler::ALL {
                                ui.selectable_value(&mut r.scheduler, s, s.name());
                            }
                        })
                        .response
                        .labelled_by(l.id);
                    ui.checkbox(&mut r.karras, "Karras");
                });
                ui.end_row();
                if self.model_is_audio() {
                    let l = ui.label("Seconds");
                    let mut secs = r.seconds.unwrap_or(0.0);
                    if ui
                        .add(
                            egui::DragValue::new(&mut secs)
                                .range(0.0..=60.0)
                                .speed(0.1)
                                .suffix(" s"),
                        )
                        .labelled_by(l.id)
                        .on_hover_text("0 means the model's native length")
                        .changed()
                    {
                        r.seconds = (secs > 0.0).then_some(secs);
                    }
                    ui.end_row();
                } else {
                    ui.label("Size");
                    ui.horizontal(|ui| {
                        let w = ui.label("W");
                        ui.add(
                            egui::DragValue::new(&mut r.width)
                                .range(8..=4096)
                                .speed(8.0),
                        )
                        .labelled_by(w.id);
                        let h = ui.label("H");
                        ui.add(
                            egui::DragValue::new(&mut r.height)
                                .range(8..=4096)
                                .speed(8.0),
                        )
                        .labelled_by(h.id);
                        r.width = r.width / 8 * 8;
                        r.height = r.height / 8 * 8;
                    });
                    ui.end_row();
                }
                let l = ui.label("Batch");
                ui.add(egui::DragValue::new(&mut r.batch).range(1..=16))
                    .labelled_by(l.id);
                ui.end_row();
                let l = ui.label("Noise");
                ui.add_enabled_ui(r.batch > 1, |ui| {
                    egui::ComboBox::from_id_salt("noise")
                        .selected_text(r.noise.name())
                        .show_ui(ui, |ui| {
                            for (m, what) in NoiseMode::ALL.into_iter().zip([
                                "one generator draws the whole batch, as diffusers and ComfyUI",
                                "image i from seed + i, as A1111",
                            ]) {
                                ui.selectable_value(&mut r.noise, m, m.name())
                                    .on_hover_text(what);
                            }
                        })
                        .response
                        .labelled_by(l.id)
                        .on_hover_text("How the batch's noise comes from the seed")
                        .on_disabled_hover_text("A batch of one draws the same noise either way");
                });
                ui.end_row();
            });
        if r != self.state.request {
            self.rt.commands.push(AppCommand::SetRequest(r));
        }

        ui.add_space(8.0);
        self.run_controls_ui(ui);
        self.notices_ui(ui);
    }

    /// Generate / Cancel and the progress of the current run.
    fn run_controls_ui(&mut self, ui: &mut egui::Ui) {
        let running = self.rt.run.is_some();
        ui.horizontal(|ui| {
            let generate = egui::Button::new(RichText::new("Generate").strong())
                .min_size(egui::vec2(140.0, 28.0));
            if ui
                .add_enabled(!running, generate)
                .on_hover_text("Ctrl+Enter")
                .on_disabled_hover_text("A run is in progress")
                .clicked()
            {
                self.rt.commands.push(AppCommand::Generate);
            }
            let cancel = egui::Button::new("Cancel").min_size(egui::vec2(80.0, 28.0));
            if ui
                .add_enabled(running, cancel)
                .on_hover_text("Esc")
                .clicked()
            {
                self.rt.commands.push(AppCommand::Cancel);
            }
        });
        if let Some(run) = &self.rt.run {
            let frac = if run.total > 0 {
                run.step as f32 / run.total as f32
            } else {
                0.0
            };
            let text = if run.total > 0 {
                format!(
                    "{} {}/{} · {:.1} s",
                    run.stage,
                    run.step,
                    run.total,
                    run.started.elapsed().as_secs_f32()
                )
            } else {
                format!(
                    "{} · {:.1} s",
                    run.stage,
                    run.started.elapsed().as_secs_f32()
                )
            };
            ui.add(egui::ProgressBar::new(frac).text(text).animate(true));
        }
    }

    /// Recent messages, errors in red.
    fn notices_ui(&mut self, ui: &mut egui::Ui) {
        if self.rt.notices.is_empty() {
            return;
        }
        ui.add_space(6.0);
        ui.horizontal(|ui| {
            ui.label(RichText::new("Messages").small().weak());
            if ui.small_button("Clear").clicked() {
                self.rt.commands.push(AppCommand::ClearNotices);
            }
        });
        for n in self.rt.notices.iter().rev().take(6) {
            let color = if n.is_error {
                ui.visuals().error_fg_color
            } else {
                ui.visuals().text_color()
            };
            ui.label(RichText::new(&n.text).small().color(color));
        }
    }
}
