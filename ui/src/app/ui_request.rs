//! The request panel: the prompt and seed (dice and lock), the fields the model's family declares
//! (negative prompt, steps, guidance, scheduler, size or seconds, …, each as its kind's widget),
//! the batch and its noise; Generate (Ctrl+Enter) and Cancel (Esc); progress with the stage.

use egui::RichText;
use headroom_engine::Request;
use headroom_engine::families::{FieldKind, FieldSpec};
use headroom_engine::request::{FieldValue, NoiseMode};

use super::HeadroomApp;
use super::command::AppCommand;
use super::widgets::section_ui;

impl HeadroomApp {
    /// The right panel: the prompt, the seed, then the fields the model's family declares
    /// (negative prompt, steps, size or seconds, …), then the batch and its noise.
    pub(super) fn request_ui(&mut self, ui: &mut egui::Ui) {
        let mut r = self.state.request.clone();
        let fields = self.rt.fields().to_vec();
        section_ui(ui, "Request");
        let prompt_label = ui.label("Prompt");
        ui.add(
            egui::TextEdit::multiline(&mut r.prompt)
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .hint_text("what to make"),
        )
        .labelled_by(prompt_label.id);
        for f in fields.iter().filter(|f| matches!(f.kind, FieldKind::Text { .. })) {
            field_ui(ui, f, &mut r);
        }
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
                for f in fields.iter().filter(|f| !matches!(f.kind, FieldKind::Text { .. })) {
                    field_ui(ui, f, &mut r);
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
        if fields.is_empty() {
            ui.label(RichText::new("Drop or pick a model to see what it takes").small().weak());
        }
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

/// One declared request field as its kind's widget (a text box spans the panel; the others are
/// a label and a widget in the request grid's row), read and written through the request's
/// field access by key.
fn field_ui(ui: &mut egui::Ui, f: &FieldSpec, r: &mut Request) {
    let Some(value) = r.field(f.key) else {
        return;
    };
    let label = ui.label(f.label);
    let hint = |resp: egui::Response| if f.help.is_empty() { resp } else { resp.on_hover_text(f.help) };
    // an optional field set to a value can be given back to the model ("model's" ticked)
    let optional = {
        let mut probe = r.clone();
        probe.set_field(f.key, FieldValue::Unset).is_ok()
    };
    let offer_unset = optional
        && !matches!(value, FieldValue::Unset)
        && matches!(f.kind, FieldKind::Int { .. } | FieldKind::Float { .. });
    let widget = |ui: &mut egui::Ui| match (f.kind, value) {
        (FieldKind::Text { rows }, FieldValue::Text(mut s)) => {
            let resp = ui.add(
                egui::TextEdit::multiline(&mut s)
                    .desired_rows(rows as usize)
                    .desired_width(f32::INFINITY)
                    .hint_text(f.help),
            );
            resp.labelled_by(label.id).changed().then_some(FieldValue::Text(s))
        }
        (FieldKind::Int { min, max, step }, FieldValue::Int(mut n)) => {
            let resp = if max - min <= 200 {
                ui.add(egui::Slider::new(&mut n, min..=max))
            } else {
                ui.add(egui::DragValue::new(&mut n).range(min..=max).speed(step as f64))
            };
            let changed = hint(resp.labelled_by(label.id)).changed();
            // sizes move in whole steps (multiples of 8)
            changed.then_some(FieldValue::Int(n / step.max(1) * step.max(1)))
        }
        (FieldKind::Float { min, max, step, unit }, FieldValue::Float(mut x)) => {
            let resp = if unit.is_empty() {
                ui.add(egui::Slider::new(&mut x, min..=max).step_by(step))
            } else {
                ui.add(egui::DragValue::new(&mut x).range(min..=max).speed(step).suffix(unit))
            };
            hint(resp.labelled_by(label.id)).changed().then_some(FieldValue::Float(x))
        }
        (FieldKind::Choice(names), FieldValue::Choice(mut cur)) => {
            let before = cur.clone();
            let resp = egui::ComboBox::from_id_salt(("field", f.key))
                .selected_text(cur.clone())
                .show_ui(ui, |ui| {
                    for n in names {
                        ui.selectable_value(&mut cur, n.to_string(), *n);
                    }
                })
                .response
                .labelled_by(label.id);
            let _ = hint(resp);
            (cur != before).then_some(FieldValue::Choice(cur))
        }
        // an optional field left to the model: tick off "model's" to choose a value
        (FieldKind::Int { min, max, .. }, FieldValue::Unset) => {
            let mut own = true;
            let resp = ui.checkbox(&mut own, "model's").on_hover_text("Untick to choose a value");
            resp.changed().then_some(FieldValue::Int((min + max) / 2))
        }
        (FieldKind::Float { min, max, .. }, FieldValue::Unset) => {
            let mut own = true;
            let resp = ui.checkbox(&mut own, "model's").on_hover_text("Untick to choose a value");
            resp.changed().then_some(FieldValue::Float((min + max) / 2.0))
        }
        (FieldKind::Flag, FieldValue::Flag(mut on)) => {
            let resp = ui.checkbox(&mut on, "");
            hint(resp.labelled_by(label.id)).changed().then_some(FieldValue::Flag(on))
        }
        _ => None,
    };
    let new = if offer_unset {
        ui.horizontal(|ui| {
            let new = widget(ui);
            let mut own = false;
            let unset = ui.checkbox(&mut own, "model's").on_hover_text("Use the model's own default").changed();
            if unset { Some(FieldValue::Unset) } else { new }
        })
        .inner
    } else {
        widget(ui)
    };
    if let Some(v) = new
        && let Err(e) = r.set_field(f.key, v)
    {
        log::warn!("{e}");
    }
}
