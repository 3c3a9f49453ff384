//! The model panel: open / drop / recent / built-in models, and the inspect summary with the plan
//! verdict shown before anything is loaded.

use egui::RichText;

use headroom_engine::knobs::Precision;

use super::HeadroomApp;
use super::backend::ModelSummary;
use super::command::AppCommand;
use super::ui_plan::short_name;
use super::widgets::{fmt_bytes, fmt_count, kv_ui, section_ui, verdict_color};

/// The embedded default models: (model ref, label).
pub const BUILTINS: [(&str, &str); 2] = [
    ("builtin:shapes", "Shapes (image)"),
    ("builtin:melodies", "Melodies (audio)"),
];

impl HeadroomApp {
    /// The model section of the left panel.
    pub(super) fn model_ui(&mut self, ui: &mut egui::Ui) {
        section_ui(ui, "Model");
        ui.horizontal_wrapped(|ui| {
            if ui
                .button("Open…")
                .on_hover_text("Pick a .safetensors, .gguf, .ckpt or model_index.json")
                .clicked()
            {
                self.rt
                    .commands
                    .push(AppCommand::OpenModelDialog { folder: false });
            }
            if ui
                .button("Folder…")
                .on_hover_text("Pick a diffusers folder (the one holding model_index.json)")
                .clicked()
            {
                self.rt
                    .commands
                    .push(AppCommand::OpenModelDialog { folder: true });
            }
            for (model, label) in BUILTINS {
                if ui.button(label).on_hover_text(model).clicked() {
                    self.rt
                        .commands
                        .push(AppCommand::InspectModel(model.into()));
                }
            }
        });
        ui.label(
            RichText::new("or drop a model file or diffusers folder anywhere")
                .small()
                .weak(),
        );

        if let Some(l) = &self.rt.loaded {
            ui.add_space(4.0);
            egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.label(RichText::new(format!("Loaded: {}", short_name(&l.model))).strong());
                egui::Grid::new("loaded_grid")
                    .num_columns(2)
                    .show(ui, |ui| {
                        kv_ui(ui, "family", &l.family);
                        kv_ui(ui, "weights", fmt_bytes(l.weight_bytes));
                        kv_ui(ui, "load", format!("{} ms", l.load_ms));
                    });
                if l.knobs != self.state.knobs {
                    let what = match l.knobs.components_to_reread(&self.state.knobs, &l.components) {
                        Some(c) if c.is_empty() => "Knobs changed: the next run applies them without reloading".to_string(),
                        Some(c) => format!(
                            "Knobs changed: the next run reads the {} again",
                            c.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" and ")
                        ),
                        None => "Knobs changed: the next run loads the model again with them".to_string(),
                    };
                    ui.label(RichText::new(what).small().italics());
                }
            });
        }
        if let Some(loading) = &self.rt.loading {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("Loading {}…", short_name(loading)));
            });
        }
        self.candidate_ui(ui);

        if !self.state.recent_models.is_empty() {
            ui.add_space(4.0);
            egui::CollapsingHeader::new("Recent")
                .default_open(false)
                .show(ui, |ui| {
                    for m in &self.state.recent_models {
                        if ui
                            .selectable_label(false, short_name(m))
                            .on_hover_text(m)
                            .clicked()
                        {
                            self.rt.commands.push(AppCommand::InspectModel(m.clone()));
                        }
                    }
                });
        }
    }

    /// The inspected model: summary, bytes per precision, verdict and the Load button.
    fn candidate_ui(&mut self, ui: &mut egui::Ui) {
        let fits = !self.plan_refuses();
        let Some(c) = &self.rt.candidate else { return };
        ui.add_space(4.0);
        egui::Frame::group(ui.style()).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.horizontal(|ui| {
                ui.label(RichText::new(short_name(&c.model)).strong())
                    .on_hover_text(&c.model);
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    if ui.small_button("Dismiss").clicked() {
                        self.rt.commands.push(AppCommand::DismissCandidate);
                    }
                });
            });
            match &c.summary {
                None => {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label(RichText::new("Reading its headers…").weak());
                    });
                }
                Some(Err(e)) => {
                    ui.colored_label(ui.visuals().error_fg_color, e);
                }
                Some(Ok(s)) => summary_ui(ui, s),
            }
            let verdict = match &self.rt.plan {
                Some(Ok(p)) => Some(p.verdict),
                _ => None,
            };
            if let Some(v) = verdict {
                ui.label(
                    RichText::new(format!("Plan: {}", v.words()))
                        .strong()
                        .color(verdict_color(v)),
                );
            }
            if matches!(c.summary, Some(Ok(_))) {
                let loaded_same = self.rt.loaded.as_ref().is_some_and(|l| l.model == c.model);
                ui.horizontal(|ui| {
                    let load = ui
                        .add_enabled(fits && !loaded_same, egui::Button::new("Load"))
                        .on_disabled_hover_text(
                            "The plan says it does not fit: apply a fix from the plan bar, or Load anyway",
                        );
                    if load.clicked() {
                        self.rt.commands.push(AppCommand::LoadModel {
                            model: c.model.clone(),
                            force: false,
                        });
                    }
                    if !fits
                        && ui
                            .button("Load anyway")
                            .on_hover_text("It may run out of memory")
                            .clicked()
                    {
                        self.rt.commands.push(AppCommand::LoadModel {
                            model: c.model.clone(),
                            force: true,
                        });
                    }
                });
            }
        });
    }
}

/// The inspect summary: format, family, parameters, components, bytes per precision, warnings.
fn summary_ui(ui: &mut egui::Ui, s: &ModelSummary) {
    egui::Grid::new("summary_grid")
        .num_columns(2)
        .spacing([12.0, 2.0])
        .show(ui, |ui| {
            kv_ui(ui, "format", &s.format);
            ui.label(RichText::new("family").weak());
            ui.label(&s.family).on_hover_text(&s.family_reason);
            ui.end_row();
            kv_ui(ui, "parameters", fmt_count(s.parameters));
            for (name, params) in &s.components {
                kv_ui(ui, &format!("  {name}"), fmt_count(*params));
            }
        });
    if !s.bytes_by_precision.is_empty() {
        ui.label(RichText::new("weights by precision").small().weak());
        egui::Grid::new("precision_grid")
            .num_columns(4)
            .spacing([10.0, 1.0])
            .show(ui, |ui| {
                // Widest first, the order quality is expected to fall in; anything else after.
                let order = |p: &str| {
                    Precision::CONCRETE
                        .iter()
                        .position(|c| c.name() == p)
                        .unwrap_or(usize::MAX)
                };
                let mut rows: Vec<_> = s.bytes_by_precision.iter().collect();
                rows.sort_by_key(|(p, _)| order(p));
                for (i, (p, b)) in rows.into_iter().enumerate() {
                    ui.label(RichText::new(p).monospace());
                    ui.label(RichText::new(fmt_bytes(*b)).monospace());
                    if i % 2 == 1 {
                        ui.end_row();
                    }
                }
            });
    }
    for w in &s.warnings {
        ui.label(
            RichText::new(format!("warning: {w}"))
                .small()
                .color(ui.visuals().warn_fg_color),
        );
    }
}
