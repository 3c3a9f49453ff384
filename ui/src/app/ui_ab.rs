//! A/B: two runs side by side with a wipe, a difference heatmap and a table of numbers, and an
//! ABX blind test (N trials, score, p-value).

use egui::{Color32, RichText, Sense, Stroke, Vec2};

use super::HeadroomApp;
use super::backend::{Media, binomial_p_value};
use super::command::AppCommand;
use super::ui_output::{fit, run_line};
use super::widgets::fmt_bytes;

impl HeadroomApp {
    /// The A/B tab.
    pub(super) fn ab_ui(&mut self, ui: &mut egui::Ui) {
        let n = self.rt.outputs.len();
        if n < 2 {
            ui.label(
                RichText::new("A/B needs two outputs: generate twice, changing a knob in between.")
                    .weak(),
            );
            return;
        }
        ui.horizontal(|ui| {
            for (b, label) in [(false, "A"), (true, "B")] {
                let cur = if b { self.rt.ab.b } else { self.rt.ab.a };
                let l = ui.label(RichText::new(label).strong());
                egui::ComboBox::from_id_salt(("ab", label))
                    .selected_text(
                        cur.map(|i| {
                            format!("#{} seed {}", i + 1, self.rt.outputs[i].record.request.seed)
                        })
                        .unwrap_or_default(),
                    )
                    .show_ui(ui, |ui| {
                        for (i, o) in self.rt.outputs.iter().enumerate() {
                            let text = format!(
                                "#{} seed {} · {}",
                                i + 1,
                                o.record.request.seed,
                                o.record.knobs.precision.describe()
                            );
                            if ui.selectable_label(cur == Some(i), text).clicked() {
                                self.rt
                                    .commands
                                    .push(AppCommand::SetAbSide { b, output: i });
                            }
                        }
                    })
                    .response
                    .labelled_by(l.id);
            }
        });
        let (Some(a), Some(b)) = (self.rt.ab.a, self.rt.ab.b) else {
            return;
        };
        let (Some(oa), Some(ob)) = (self.rt.outputs.get(a), self.rt.outputs.get(b)) else {
            return;
        };
        ui.label(
            RichText::new(format!("A: {}", run_line(&oa.record)))
                .small()
                .weak(),
        );
        ui.label(
            RichText::new(format!("B: {}", run_line(&ob.record)))
                .small()
                .weak(),
        );
        ui.separator();
        ui.columns(2, |cols| {
            self.ab_numbers_ui(&mut cols[1], a, b);
            self.abx_ui(&mut cols[1], a, b);
            self.ab_view_ui(&mut cols[0], a, b);
        });
    }

    /// The wipe (or heatmap) for images, play buttons for audio.
    fn ab_view_ui(&mut self, ui: &mut egui::Ui, a: usize, b: usize) {
        let (oa, ob) = (&self.rt.outputs[a], &self.rt.outputs[b]);
        match (&oa.media, &ob.media, &oa.texture, &ob.texture) {
            (Some(Ok(Media::Image(_))), Some(Ok(Media::Image(_))), Some(ta), Some(tb)) => {
                ui.horizontal(|ui| {
                    let mut heat = self.rt.ab.show_heatmap;
                    if ui
                        .add_enabled(
                            self.rt.ab.heatmap.is_some(),
                            egui::Checkbox::new(&mut heat, "Difference heatmap"),
                        )
                        .changed()
                    {
                        self.rt.commands.push(AppCommand::ShowHeatmap(heat));
                    }
                });
                let size = fit(ta.size_vec2(), ui.available_size() - Vec2::new(0.0, 30.0));
                let (rect, resp) = ui.allocate_exact_size(size, Sense::drag());
                let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
                let painter = ui.painter_at(rect);
                if let (true, Some(h)) = (self.rt.ab.show_heatmap, &self.rt.ab.heatmap) {
                    painter.image(h.id(), rect, uv, Color32::WHITE);
                } else {
                    let x = rect.left() + rect.width() * self.rt.ab.wipe;
                    painter.image(tb.id(), rect, uv, Color32::WHITE);
                    let left = egui::Rect::from_min_max(rect.min, egui::pos2(x, rect.bottom()));
                    painter
                        .with_clip_rect(left)
                        .image(ta.id(), rect, uv, Color32::WHITE);
                    painter.line_segment(
                        [egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())],
                        Stroke::new(2.0, Color32::WHITE),
                    );
                    painter.text(
                        rect.left_top() + Vec2::splat(6.0),
                        egui::Align2::LEFT_TOP,
                        "A",
                        egui::FontId::proportional(14.0),
                        Color32::WHITE,
                    );
                    painter.text(
                        rect.right_top() + Vec2::new(-6.0, 6.0),
                        egui::Align2::RIGHT_TOP,
                        "B",
                        egui::FontId::proportional(14.0),
                        Color32::WHITE,
                    );
                    if let Some(p) = resp.interact_pointer_pos().filter(|_| resp.dragged()) {
                        self.rt
                            .commands
                            .push(AppCommand::SetWipe((p.x - rect.left()) / rect.width()));
                    }
                }
                let mut w = self.rt.ab.wipe;
                if ui
                    .add(egui::Slider::new(&mut w, 0.0..=1.0).text("wipe"))
                    .changed()
                {
                    self.rt.commands.push(AppCommand::SetWipe(w));
                }
            }
            (Some(Ok(Media::Audio(_))), Some(Ok(Media::Audio(_))), _, _) => {
                ui.horizontal(|ui| {
                    if ui.button("Play A").clicked() {
                        self.rt.commands.push(AppCommand::PlayAudio(a));
                    }
                    if ui.button("Play B").clicked() {
                        self.rt.commands.push(AppCommand::PlayAudio(b));
                    }
                    if ui.button("Stop").clicked() {
                        self.rt.commands.push(AppCommand::PauseAudio);
                    }
                });
            }
            _ => {
                ui.label(RichText::new("A and B must both be images or both be audio").weak());
            }
        }
    }

    /// Quality, time and memory numbers.
    fn ab_numbers_ui(&mut self, ui: &mut egui::Ui, a: usize, b: usize) {
        let (ra, rb) = (&self.rt.outputs[a].record, &self.rt.outputs[b].record);
        egui::Grid::new("ab_numbers")
            .num_columns(2)
            .striped(true)
            .spacing([16.0, 3.0])
            .show(ui, |ui| {
                match &self.rt.ab.comparison {
                    Some(Ok(c)) => {
                        for (name, v) in &c.numbers {
                            ui.label(name);
                            ui.label(RichText::new(format!("{v:.4}")).monospace());
                            ui.end_row();
                        }
                    }
                    Some(Err(e)) => {
                        ui.label("quality");
                        ui.label(RichText::new(e).weak());
                        ui.end_row();
                    }
                    None => {}
                }
                let ratio = |x: u64, y: u64| {
                    if x == 0 {
                        "—".to_string()
                    } else {
                        format!("{:.3}", y as f64 / x as f64)
                    }
                };
                ui.label("time B/A");
                ui.label(RichText::new(ratio(ra.total_ms(), rb.total_ms())).monospace());
                ui.end_row();
                ui.label("peak RAM B/A");
                ui.label(
                    RichText::new(format!(
                        "{} ({} → {})",
                        ratio(ra.peak_ram_bytes, rb.peak_ram_bytes),
                        fmt_bytes(ra.peak_ram_bytes),
                        fmt_bytes(rb.peak_ram_bytes)
                    ))
                    .monospace(),
                );
                ui.end_row();
                ui.label("peak VRAM B/A");
                ui.label(RichText::new(ratio(ra.peak_vram_bytes, rb.peak_vram_bytes)).monospace());
                ui.end_row();
                ui.label("knobs that differ");
                ui.label(ra.knobs.diff(&rb.knobs).join(", "));
                ui.end_row();
            });
    }

    /// The ABX blind test: is X A or B?
    fn abx_ui(&mut self, ui: &mut egui::Ui, a: usize, b: usize) {
        ui.add_space(8.0);
        ui.label(RichText::new("ABX blind test").strong());
        let Some(abx) = &self.rt.ab.abx else {
            ui.horizontal(|ui| {
                let mut n = self.state.abx_trials;
                let l = ui.label("Trials");
                ui.add(egui::DragValue::new(&mut n).range(1..=100))
                    .labelled_by(l.id);
                if ui.button("Start ABX").clicked() {
                    self.rt.commands.push(AppCommand::StartAbx(n));
                }
            });
            return;
        };
        let done = abx.answers.len();
        let total = abx.x_is_a.len();
        let correct = abx.answers.iter().filter(|&&c| c).count() as u32;
        if done >= total {
            let p = binomial_p_value(correct, total as u32);
            ui.label(format!("Score {correct}/{total} · p = {p:.4}"));
            ui.label(
                RichText::new(if p < 0.05 {
                    "You can tell them apart."
                } else {
                    "No reliable difference heard or seen."
                })
                .weak(),
            );
            if ui.button("New ABX test").clicked() {
                self.rt.commands.push(AppCommand::StartAbx(total as u32));
            }
            return;
        }
        let x = if abx.x_is_a[done] { a } else { b };
        ui.label(format!(
            "Trial {} of {total} · {correct} right so far",
            done + 1
        ));
        let is_audio = matches!(self.rt.outputs[x].media, Some(Ok(Media::Audio(_))));
        if is_audio {
            ui.horizontal(|ui| {
                for (label, i) in [("Play A", a), ("Play B", b), ("Play X", x)] {
                    if ui.button(label).clicked() {
                        // From the start every time: resuming the loaded clip would tell X apart.
                        self.rt.commands.push(AppCommand::PlayAudioFromStart(i));
                    }
                }
            });
        } else if let Some(t) = &self.rt.outputs[x].texture {
            let size = fit(t.size_vec2(), Vec2::splat(ui.available_width().min(220.0)));
            ui.label("X:");
            ui.add(egui::Image::from_texture(egui::load::SizedTexture::new(
                t.id(),
                size,
            )));
        }
        ui.horizontal(|ui| {
            if ui.button("X is A").clicked() {
                self.rt.commands.push(AppCommand::AnswerAbx(true));
            }
            if ui.button("X is B").clicked() {
                self.rt.commands.push(AppCommand::AnswerAbx(false));
            }
        });
    }
}
