//! The gauges along the bottom: RAM (system and this process) and VRAM per GPU over the last
//! minutes, with run events marked; says plainly when there is no NVIDIA GPU.

use egui::{Color32, RichText};
use egui_plot::{HLine, Legend, Line, Plot, PlotPoints, VLine};

use super::HeadroomApp;
use super::backend::GpuInfo;
use super::widgets::fmt_bytes;

/// How much history the plots show.
const WINDOW_SECS: f64 = 180.0;
const GIB: f64 = (1u64 << 30) as f64;

impl HeadroomApp {
    /// The bottom panel.
    pub(super) fn gauges_ui(&mut self, ui: &mut egui::Ui) {
        let history = self.rt.backend.memory_history();
        let gpu = self.rt.backend.gpu_info();
        let now = history.last().map(|p| p.t_secs).unwrap_or(0.0);
        ui.horizontal(|ui| {
            ui.label(RichText::new("MEMORY").small().strong().weak());
            match history.last() {
                Some(p) => {
                    ui.label(format!(
                        "RAM {} of {} · Headroom {}",
                        fmt_bytes(p.ram_used_bytes),
                        fmt_bytes(p.ram_total_bytes),
                        fmt_bytes(p.process_rss_bytes)
                    ));
                    for (name, used, total) in &p.gpus {
                        ui.separator();
                        ui.label(format!(
                            "{name}: {} of {}",
                            fmt_bytes(*used),
                            fmt_bytes(*total)
                        ));
                    }
                }
                None => {
                    ui.label(RichText::new("no memory readings yet").weak());
                }
            }
            if let GpuInfo::Unavailable(why) = &gpu {
                ui.separator();
                ui.label(RichText::new(format!("VRAM: {why}")).weak());
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if let Some((p50, p99)) = self.rt.frame_percentiles() {
                    ui.label(
                        RichText::new(format!("frame {p50:.1} / {p99:.1} ms (p50/p99)"))
                            .small()
                            .weak(),
                    );
                }
            });
        });
        let marks = &self.rt.run_marks;
        // the plan's predicted peak per device, drawn against what is measured (the app's own
        // window and GPU context come on top of it in the RSS)
        let planned: Vec<(String, u64)> = match &self.rt.plan {
            Some(Ok(plan)) => plan.per_device.iter().map(|d| (d.device.clone(), d.bytes)).collect(),
            _ => Vec::new(),
        };
        let planned_on = |device: &str| planned.iter().find(|(d, _)| d == device).map(|(_, b)| *b as f64 / GIB);
        let show_gpu = matches!(gpu, GpuInfo::Available(n) if n > 0);
        let height = ui.available_height().max(60.0);
        let ram_plot = |ui: &mut egui::Ui| {
            let pts = |f: &dyn Fn(&super::backend::MemoryPoint) -> u64| -> PlotPoints<'static> {
                history
                    .iter()
                    .filter(|p| now - p.t_secs <= WINDOW_SECS)
                    .map(|p| [p.t_secs - now, f(p) as f64 / GIB])
                    .collect()
            };
            Plot::new("ram_plot")
                .height(height)
                .legend(Legend::default())
                .include_y(0.0)
                .include_x(-WINDOW_SECS)
                .include_x(0.0)
                .allow_drag(false)
                .allow_zoom(false)
                .allow_scroll(false)
                .y_axis_label("GiB")
                .x_axis_label("seconds ago")
                .show(ui, |p| {
                    p.line(
                        Line::new("system RAM", pts(&|m| m.ram_used_bytes))
                            .color(Color32::from_rgb(70, 140, 200)),
                    );
                    p.line(
                        Line::new("Headroom", pts(&|m| m.process_rss_bytes))
                            .color(Color32::from_rgb(230, 170, 60)),
                    );
                    if let Some(gib) = planned_on("cpu") {
                        p.hline(
                            HLine::new("planned peak of a run (model, activations)", gib)
                                .color(Color32::from_rgb(230, 170, 60))
                                .style(egui_plot::LineStyle::dashed_loose()),
                        );
                    }
                    mark_runs(p, marks, now);
                });
        };
        if show_gpu {
            ui.columns(2, |cols| {
                ram_plot(&mut cols[0]);
                let gpus = history.last().map(|p| p.gpus.len()).unwrap_or(0);
                Plot::new("vram_plot")
                    .height(height)
                    .legend(Legend::default())
                    .include_y(0.0)
                    .include_x(-WINDOW_SECS)
                    .include_x(0.0)
                    .allow_drag(false)
                    .allow_zoom(false)
                    .allow_scroll(false)
                    .y_axis_label("GiB")
                    .show(&mut cols[1], |p| {
                        for g in 0..gpus {
                            let name = history
                                .last()
                                .map(|h| h.gpus[g].0.clone())
                                .unwrap_or_default();
                            let pts: PlotPoints = history
                                .iter()
                                .filter(|h| now - h.t_secs <= WINDOW_SECS && g < h.gpus.len())
                                .map(|h| [h.t_secs - now, h.gpus[g].1 as f64 / GIB])
                                .collect();
                            p.line(Line::new(format!("GPU {g} {name}"), pts));
                        }
                        for (device, bytes) in planned.iter().filter(|(d, _)| d != "cpu") {
                            p.hline(
                                HLine::new(format!("planned peak ({device})"), *bytes as f64 / GIB)
                                    .style(egui_plot::LineStyle::dashed_loose()),
                            );
                        }
                        mark_runs(p, marks, now);
                    });
            });
        } else {
            ram_plot(ui);
        }
    }
}

/// Vertical lines at run events (start, stages, done) inside the window.
fn mark_runs(p: &mut egui_plot::PlotUi<'_>, marks: &[(f64, String)], now: f64) {
    // One legend entry for all of them.
    for (t, _stage) in marks.iter().filter(|(t, _)| now - t <= WINDOW_SECS) {
        p.vline(
            VLine::new("run events", t - now)
                .color(Color32::from_gray(120))
                .width(1.0),
        );
    }
}
