//! The knobs panel: device, precision per component and for all, offload, slicing. Widgets edit a
//! copy and push [`AppCommand::SetKnobs`]; knobs that cannot act here are disabled with the reason.

use egui::RichText;
use headroom_engine::knobs::{DeviceKind, OffloadMode, Placement, Precision};

use super::HeadroomApp;
use super::backend::GpuInfo;
use super::command::AppCommand;
use super::widgets::section_ui;

impl HeadroomApp {
    /// The knobs section of the left panel.
    pub(super) fn knobs_ui(&mut self, ui: &mut egui::Ui) {
        let mut k = self.state.knobs;
        let gpus = match self.rt.backend.gpu_info() {
            GpuInfo::Available(n) => n,
            GpuInfo::Unavailable(_) => 0,
        };
        section_ui(ui, "Knobs");
        egui::Grid::new("device_grid")
            .num_columns(2)
            .spacing([8.0, 4.0])
            .show(ui, |ui| {
                let label = ui.label("Device");
                egui::ComboBox::from_id_salt("device")
                    .selected_text(k.device.to_string())
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut k.device, DeviceKind::Cpu, "cpu");
                        let cuda_built = cfg!(feature = "cuda");
                        for i in 0..gpus.max(1) {
                            let ok = cuda_built && i < gpus;
                            ui.add_enabled_ui(ok, |ui| {
                                ui.selectable_value(
                                    &mut k.device,
                                    DeviceKind::Cuda(i),
                                    format!("cuda:{i}"),
                                )
                            })
                            .response
                            .on_disabled_hover_text(if cuda_built {
                                "no NVIDIA GPU found"
                            } else {
                                "this build has no CUDA support (cargo feature cuda)"
                            });
                        }
                        ui.add_enabled_ui(cfg!(feature = "metal"), |ui| {
                            ui.selectable_value(&mut k.device, DeviceKind::Metal, "metal")
                        })
                        .response
                        .on_disabled_hover_text(
                            "this build has no Metal support (cargo feature metal)",
                        );
                    })
                    .response
                    .labelled_by(label.id);
                ui.end_row();
            });

        // the components of the model at hand, as its family declares them
        let components = self.rt.components().to_vec();
        ui.add_space(4.0);
        ui.label(RichText::new("Precision").strong());
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing.x = 1.0;
            ui.spacing_mut().button_padding.x = 3.0;
            ui.label(RichText::new("all").weak());
            let every = k.precision.named().next().is_none();
            for p in std::iter::once(Precision::Auto).chain(Precision::CONCRETE) {
                let on = every && k.precision.fallback() == p;
                if ui
                    .selectable_label(on, p.name())
                    .on_hover_text(precision_hint(p))
                    .clicked()
                {
                    k.precision.set_all(p);
                }
            }
        });
        if components.is_empty() {
            ui.label(RichText::new("Drop or pick a model to set its components apart").small().weak());
        }
        egui::Grid::new("precision_knobs")
            .num_columns(2)
            .spacing([8.0, 3.0])
            .show(ui, |ui| {
                for c in &components {
                    let label = ui.label(c.label);
                    let mut p = k.precision.get(c.name);
                    egui::ComboBox::from_id_salt(("precision", c.name))
                        .selected_text(p.name())
                        .show_ui(ui, |ui| {
                            for q in std::iter::once(Precision::Auto).chain(Precision::CONCRETE) {
                                ui.selectable_value(&mut p, q, q.name())
                                    .on_hover_text(precision_hint(q));
                            }
                        })
                        .response
                        .labelled_by(label.id);
                    if p != k.precision.get(c.name) {
                        // a declared name always fits
                        let _ = k.precision.set(c.name, p);
                    }
                    ui.end_row();
                }
            });

        ui.add_space(4.0);
        ui.label(RichText::new("Offload").strong());
        let on_gpu = k.device.is_gpu();
        // the component with offloadable units (the UNet's blocks) and how many the plan counts
        let units = components.iter().find_map(|c| c.units.map(|u| (c.label, u)));
        let max_units = match &self.rt.plan {
            Some(Ok(p)) => p.units,
            _ => None,
        };
        egui::Grid::new("offload_grid")
            .num_columns(2)
            .spacing([8.0, 3.0])
            .show(ui, |ui| {
                for c in components.iter().filter(|c| c.placeable) {
                    let l = ui.label(c.label);
                    let mut place = k.offload.placement.get(c.name);
                    ui.add_enabled_ui(on_gpu, |ui| {
                        egui::ComboBox::from_id_salt(("place", c.name))
                            .selected_text(place.to_string())
                            .show_ui(ui, |ui| {
                                for p in [Placement::Auto, Placement::Cpu, Placement::Gpu] {
                                    ui.selectable_value(&mut place, p, p.to_string());
                                }
                            })
                            .response
                            .labelled_by(l.id)
                    })
                    .response
                    .on_disabled_hover_text("placement moves a component off the GPU; the device is the CPU");
                    if place != k.offload.placement.get(c.name) {
                        let _ = k.offload.placement.set(c.name, place);
                    }
                    ui.end_row();
                }
                let Some((owner, unit)) = units else { return };
                let max = max_units.unwrap_or(0);
                ui.label(if on_gpu { format!("GPU {unit}") } else { format!("Resident {unit}") })
                    .on_hover_text(format!("How many of the {owner}'s {unit} stay on the device"));
                ui.horizontal(|ui| {
                    let mut all = k.offload.gpu_blocks.is_none();
                    if ui.add_enabled(max > 0, egui::Checkbox::new(&mut all, "all")).changed() {
                        k.offload.gpu_blocks = if all { None } else { Some(max / 2) };
                    }
                    let mut n = k.offload.gpu_blocks.unwrap_or(max).min(max);
                    let r = ui
                        .add_enabled(!all && max > 0, egui::Slider::new(&mut n, 0..=max).text(unit))
                        .on_disabled_hover_text(if max == 0 {
                            "the plan has not counted them yet"
                        } else {
                            "untick all to choose"
                        });
                    if r.changed() {
                        k.offload.gpu_blocks = Some(n);
                    }
                });
                ui.end_row();
                ui.label(format!("Other {unit}"));
                ui.horizontal(|ui| {
                    let (split, stream) = if on_gpu {
                        ("computed on the CPU", "held in the weight file, copied to the GPU just before use")
                    } else {
                        (
                            "kept in RAM (on a CPU run the same as resident)",
                            "left in the memory-mapped weight file, read in one at a time at each use",
                        )
                    };
                    ui.selectable_value(&mut k.offload.mode, OffloadMode::Split, "split")
                        .on_hover_text(split);
                    ui.selectable_value(&mut k.offload.mode, OffloadMode::Stream, "stream")
                        .on_hover_text(stream);
                });
                ui.end_row();
            });

        ui.add_space(4.0);
        ui.label(RichText::new("Slicing").strong());
        egui::Grid::new("slicing_grid")
            .num_columns(2)
            .spacing([8.0, 3.0])
            .show(ui, |ui| {
                ui.label("Attention slice");
                ui.add(
                    egui::Slider::new(&mut k.slicing.attention_slice, 0..=4096)
                        .logarithmic(true)
                        .text("rows"),
                )
                .on_hover_text("Compute attention in chunks of this many query rows; 0 is off");
                ui.end_row();
                ui.label("VAE tile");
                ui.add(egui::Slider::new(&mut k.slicing.vae_tile, 0..=256).text("latent px"))
                    .on_hover_text(
                        "Decode in tiles of this many latent pixels (same picture, less memory); 0 is off",
                    );
                ui.end_row();
            });

        if k != self.state.knobs {
            self.rt.commands.push(AppCommand::SetKnobs(Box::new(k)));
        }
    }
}

fn precision_hint(p: Precision) -> String {
    match p {
        Precision::Auto => "f16 on a GPU, f32 on the CPU".into(),
        p => format!("{:.2} bits per weight", p.bits_per_weight()),
    }
}
