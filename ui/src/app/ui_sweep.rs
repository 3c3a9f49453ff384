//! The Sweep tab: one knob, several values, the current request run once per value after the
//! full-precision reference; a table of the rows (each opens its output) and the quality–memory
//! frontier (egui_plot), with time as the other view.

use egui::RichText;
use egui_plot::{Legend, Line, Plot, PlotPoints, Points, Text};
use headroom_engine::families::ComponentSpec;

use super::HeadroomApp;
use super::command::AppCommand;
use super::state::{CenterTab, SWEEP_REFERENCE};
use super::widgets::fmt_bytes;

/// The knobs a sweep can turn on a model with `components`, by profile key, with the values
/// offered first: every component's precision together and each one's apart, the offloadable
/// units where the model has them, and slicing.
fn sweepable(components: &[ComponentSpec]) -> Vec<(String, &'static str)> {
    let precisions = "f32,f16,q8_0,q4k";
    let mut knobs = vec![("precision".to_string(), precisions)];
    knobs.extend(components.iter().map(|c| (format!("precision.{}", c.name), precisions)));
    if components.iter().any(|c| c.units.is_some()) {
        knobs.push(("offload.gpu_blocks".into(), "all,4,2,0"));
    }
    knobs.push(("slicing.attention_slice".into(), "0,1024,256"));
    knobs.push(("slicing.vae_tile".into(), "0,64,32"));
    knobs
}

impl HeadroomApp {
    pub(super) fn sweep_ui(&mut self, ui: &mut egui::Ui) {
        let components = self.rt.components().to_vec();
        let knobs = sweepable(&components);
        let sweep = &mut self.rt.sweep;
        if sweep.knob.is_empty() {
            // the largest component's precision first: the denoiser, the one with offloadable units
            let first = components
                .iter()
                .find(|c| c.units.is_some())
                .and_then(|c| knobs.iter().find(|k| k.0 == format!("precision.{}", c.name)))
                .unwrap_or(&knobs[0]);
            sweep.knob = first.0.clone();
            sweep.values = first.1.to_string();
        }
        let running = sweep.running();
        ui.horizontal_wrapped(|ui| {
            ui.label("Knob");
            let before = sweep.knob.clone();
            egui::ComboBox::from_id_salt("sweep_knob").selected_text(&sweep.knob).show_ui(ui, |ui| {
                for (k, _) in &knobs {
                    ui.selectable_value(&mut sweep.knob, k.clone(), k);
                }
            });
            if sweep.knob != before
                && let Some((_, values)) = knobs.iter().find(|(k, _)| *k == sweep.knob)
            {
                sweep.values = (*values).to_string();
            }
            ui.label("Values");
            ui.add(egui::TextEdit::singleline(&mut sweep.values).desired_width(160.0));
            if running {
                ui.label(format!("run {} of {}", sweep.rows.len() + 1, sweep.total));
                if ui.button("Stop sweep").clicked() {
                    self.rt.commands.push(AppCommand::StopSweep);
                }
            } else if ui
                .button("Run sweep")
                .on_hover_text("The f32 reference first, then the current request once per value")
                .clicked()
            {
                self.rt.commands.push(AppCommand::StartSweep { knob: sweep.knob.clone(), values: sweep.values.clone() });
            }
        });
        let sweep = &self.rt.sweep;
        if sweep.rows.is_empty() {
            ui.add_space(20.0);
            ui.vertical_centered(|ui| {
                ui.label(
                    RichText::new("Each value is run with the current request and compared with the f32 reference run.")
                        .weak(),
                );
            });
            return;
        }
        ui.separator();
        let mut open = None;
        egui::Grid::new("sweep_rows").striped(true).num_columns(5).show(ui, |ui| {
            for h in [sweep.knob.as_str(), "quality", "peak memory", "time", ""] {
                ui.label(RichText::new(h).strong());
            }
            ui.end_row();
            for row in &sweep.rows {
                ui.label(&row.value);
                let q: Vec<String> =
                    row.quality.iter().map(|(k, v)| format!("{k} {}", if v.is_finite() { format!("{v:.3}") } else { "∞".into() })).collect();
                ui.label(if row.value == SWEEP_REFERENCE { "reference".to_string() } else { q.join(", ") });
                ui.label(fmt_bytes(row.peak_bytes));
                ui.label(format!("{} ms", row.time_ms));
                if ui.small_button("Open").clicked() {
                    open = Some(row.output);
                }
                ui.end_row();
            }
        });
        if let Some(i) = open {
            self.rt.commands.push(AppCommand::SelectOutput(i));
            self.rt.commands.push(AppCommand::ShowTab(CenterTab::Output));
        }
        let sweep = &mut self.rt.sweep;
        ui.horizontal(|ui| {
            ui.label("Frontier:");
            ui.selectable_value(&mut sweep.by_time, false, "quality against peak memory");
            ui.selectable_value(&mut sweep.by_time, true, "quality against time");
        });
        let by_time = sweep.by_time;
        let quality_name = sweep
            .rows
            .iter()
            .find_map(|r| r.quality.first().map(|(k, _)| k.clone()))
            .unwrap_or_else(|| "PSNR dB".into());
        let points: Vec<(String, [f64; 2])> = sweep
            .rows
            .iter()
            .filter(|r| r.value != SWEEP_REFERENCE)
            .filter_map(|r| {
                let q = headroom_engine::compare::finite_db(r.quality.first()?.1);
                let x = if by_time { r.time_ms as f64 / 1000.0 } else { r.peak_bytes as f64 / (1u64 << 30) as f64 };
                Some((r.value.clone(), [x, q]))
            })
            .collect();
        let mut frontier: Vec<[f64; 2]> = points.iter().map(|p| p.1).collect();
        frontier.sort_by(|a, b| a[0].total_cmp(&b[0]));
        Plot::new("sweep_frontier")
            .height(ui.available_height().max(120.0))
            .legend(Legend::default())
            .x_axis_label(if by_time { "seconds" } else { "peak memory GiB" })
            .y_axis_label(quality_name.clone())
            .allow_scroll(false)
            .show(ui, |p| {
                p.line(Line::new("frontier", PlotPoints::from(frontier)));
                p.points(Points::new(quality_name, points.iter().map(|p| p.1).collect::<Vec<_>>()).radius(5.0));
                for (label, [x, y]) in &points {
                    // no name: the labels stay out of the legend
                    p.text(Text::new("", [*x, *y].into(), label.clone()).anchor(egui::Align2::LEFT_BOTTOM));
                }
            });
    }
}
