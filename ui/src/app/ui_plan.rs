//! The plan bar along the top: the model, predicted bytes per device against the budget, and the
//! verdict in words.

use egui::RichText;

use super::HeadroomApp;
use super::command::AppCommand;
use super::widgets::{fmt_bytes, usage_bar_ui, verdict_color};

impl HeadroomApp {
    /// The top bar.
    pub(super) fn plan_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label(RichText::new("Headroom").strong().size(16.0));
            ui.separator();
            let model = self
                .rt
                .current_model()
                .map(short_name)
                .unwrap_or_else(|| "no model".into());
            let state = if self.rt.loading.is_some() {
                "loading…"
            } else if self.rt.loaded.is_some() {
                "loaded"
            } else {
                "not loaded"
            };
            ui.label(RichText::new(model).strong());
            ui.label(RichText::new(state).weak());
            if let Some((what, t)) = self.rt.chores.slow() {
                ui.spinner();
                ui.label(RichText::new(format!("{what}… {:.1} s", t.as_secs_f32())).weak());
            }
            ui.separator();
            match &self.rt.plan {
                None => {
                    ui.label(RichText::new("Plan: drop a model to see whether it fits").weak());
                }
                Some(Err(e)) => {
                    // the planner's one line says why (a model no family of this build runs, a
                    // knob naming a component the model lacks)
                    ui.add(egui::Label::new(RichText::new(format!("No plan: {e}")).weak()).truncate())
                        .on_hover_text(e);
                }
                Some(Ok(plan)) => {
                    let verdict = plan.verdict;
                    ui.label(
                        RichText::new(verdict.words().to_uppercase())
                            .strong()
                            .color(verdict_color(verdict)),
                    );
                    let n = plan.per_device.len().max(1) as f32;
                    let width = ((ui.available_width() - 230.0) / n - 8.0).clamp(140.0, 420.0);
                    // what the last run of this model said about how it computed: why a
                    // quantized run is slower or larger than its bytes suggest
                    let notes = self
                        .rt
                        .outputs
                        .last()
                        .filter(|o| Some(o.record.model.as_str()) == self.rt.current_model())
                        .map(|o| o.record.notes.clone())
                        .unwrap_or_default();
                    if !notes.is_empty() {
                        let words = if notes.len() == 1 { "1 run note".to_string() } else { format!("{} run notes", notes.len()) };
                        ui.label(RichText::new(words).weak().underline())
                            .on_hover_text(format!("From the last run:\n{}", notes.join("\n")));
                    }
                    for d in &plan.per_device {
                        let text = format!(
                            "{}: {} of {}",
                            d.device,
                            fmt_bytes(d.bytes),
                            fmt_bytes(d.budget_bytes)
                        );
                        usage_bar_ui(ui, d.bytes, d.budget_bytes, &text, width).on_hover_text(
                            format!(
                                "weights {}, activations {}",
                                fmt_bytes(plan.weights_bytes),
                                fmt_bytes(plan.activation_bytes)
                            ),
                        );
                    }
                }
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let mut gib = self.state.budget_gib;
                let r = ui
                    .add(
                        egui::DragValue::new(&mut gib)
                            .range(0.0..=512.0)
                            .speed(0.25)
                            .custom_formatter(|v, _| {
                                if v <= 0.0 {
                                    "free memory".into()
                                } else {
                                    format!("{v:.2} GiB")
                                }
                            })
                            .custom_parser(|s| {
                                let s = s.trim().trim_end_matches("GiB").trim();
                                if s.starts_with("free") {
                                    Some(0.0)
                                } else {
                                    s.parse().ok()
                                }
                            }),
                    )
                    .on_hover_text("Memory budget for the plan; 0 means the devices' free memory");
                if r.changed() {
                    self.rt.commands.push(AppCommand::SetBudget(gib));
                }
                let l = ui.label("Budget");
                r.labelled_by(l.id);
            });
        });
        if let Some(Ok(plan)) = &self.rt.plan
            && !plan.suggestions.is_empty()
        {
            let mut chosen = None;
            ui.horizontal_wrapped(|ui| {
                ui.label(RichText::new("To fit:").weak());
                for s in &plan.suggestions {
                    let b = egui::Button::new(RichText::new(&s.words).color(verdict_color(plan.verdict)));
                    if ui.add(b).on_hover_text("Apply these knobs").clicked() {
                        chosen = Some(s.changes.clone());
                    }
                }
            });
            if let Some(changes) = chosen {
                self.rt.commands.push(AppCommand::ApplyKnobs(changes));
            }
        }
    }
}

/// The last path component of a model (or the `builtin:` name).
pub fn short_name(model: &str) -> String {
    if model.starts_with("builtin:") {
        return model.to_string();
    }
    std::path::Path::new(model)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| model.to_string())
}
