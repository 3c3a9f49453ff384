//! The knobs panel: device, precision per component and for all, offload, slicing. Widgets edit a
//! copy and push [`AppCommand::SetKnobs`]; knobs that cannot act here are disabled with the reason.

use egui::RichText;
use headroom_engine::knobs::{Component, DeviceKind, OffloadMode, Placement, Precision};

use super::HeadroomApp;
use super::backend::GpuInfo;
use super::command::AppCommand;
use super::widgets::section_ui;

/// Largest `gpu_blocks` the slider offers when no plan says how many blocks the model has (SD's
/// UNet has 9: four down, the middle one, four up).
const DEFAULT_GPU_BLOCKS: u32 = 9;

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

        ui.add_space(4.0);
        ui.label(RichText::new("Precision").strong());
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing.x = 1.0;
            ui.spacing_mut().button_padding.x = 3.0;
            ui.label(RichText::new("all").weak());
            let all = [k.precision.text, k.precision.unet, k.precision.vae];
            for p in std::iter::once(Precision::Auto).chain(Precision::CONCRETE) {
                let on = all.iter().all(|&x| x == p);
                if ui
                    .selectable_label(on, p.name())
                    .on_hover_text(precision_hint(p))
                    .clicked()
                {
                    k.precision = headroom_engine::knobs::PrecisionKnobs::all(p);
                }
            }
        });
        egui::Grid::new("precision_knobs")
            .num_columns(2)
            .spacing([8.0, 3.0])
            .show(ui, |ui| {
                for c in Component::ALL {
                    let label = ui.label(component_label(c));
                    let mut p = k.precision.get(c);
                    egui::ComboBox::from_id_salt(("precision", c.name()))
                        .selected_text(p.name())
                        .show_ui(ui, |ui| {
                            for q in std::iter::once(Precision::Auto).chain(Precision::CONCRETE) {
                                ui.selectable_value(&mut p, q, q.name())
                                    .on_hover_text(precision_hint(q));
                            }
                        })
                        .response
                        .labelled_by(label.id);
                    k.precision.set(c, p);
                    ui.end_row();
                }
            });

        ui.add_space(4.0);
        ui.label(RichText::new("Offload").strong());
        let on_gpu = k.device.is_gpu();
        let max_blocks = match &self.rt.plan {
            Some(Ok(p)) => p.unet_blocks.unwrap_or(DEFAULT_GPU_BLOCKS),
            _ => DEFAULT_GPU_BLOCKS,
        };
        egui::Grid::new("offload_grid")
            .num_columns(2)
            .spacing([8.0, 3.0])
            .show(ui, |ui| {
                for (label, place) in [
                    ("Text encoder", &mut k.offload.text),
                    ("VAE", &mut k.offload.vae),
                ] {
                    let l = ui.label(label);
                    ui.add_enabled_ui(on_gpu, |ui| {
                        egui::ComboBox::from_id_salt(("place", label))
                            .selected_text(place.to_string())
                            .show_ui(ui, |ui| {
                                for p in [Placement::Auto, Placement::Cpu, Placement::Gpu] {
                                    ui.selectable_value(place, p, p.to_string());
                                }
                            })
                            .response
                            .labelled_by(l.id)
                    })
                    .response
                    .on_disabled_hover_text("placement moves a component off the GPU; the device is the CPU");
                    ui.end_row();
                }
                ui.label(if on_gpu { "GPU blocks" } else { "Resident blocks" });
                ui.horizontal(|ui| {
                    let mut all = k.offload.gpu_blocks.is_none();
                    if ui.checkbox(&mut all, "all").changed() {
                        k.offload.gpu_blocks = if all { None } else { Some(max_blocks / 2) };
                    }
                    let mut n = k.offload.gpu_blocks.unwrap_or(max_blocks).min(max_blocks);
                    let r = ui.add_enabled(
                        !all,
                        egui::Slider::new(&mut n, 0..=max_blocks).text("blocks"),
                    );
                    if r.changed() {
                        k.offload.gpu_blocks = Some(n);
                    }
                });
                ui.end_row();
                ui.label("Other blocks");
                ui.horizontal(|ui| {
                    let (split, stream) = if on_gpu {
                        ("computed on the CPU", "held in the weight file, copied to the GPU just before use")
                    } else {
                        (
                            "kept in RAM (on a CPU run the same as resident)",
                            "left in the memory-mapped weight file, read in per block at each step",
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
            self.rt.commands.push(AppCommand::SetKnobs(k));
        }
    }
}

fn component_label(c: Component) -> &'static str {
    match c {
        Component::Text => "Text encoder",
        Component::Unet => "UNet",
        Component::Vae => "VAE",
    }
}

fn precision_hint(p: Precision) -> String {
    match p {
        Precision::Auto => "f16 on a GPU, f32 on the CPU".into(),
        p => format!("{:.2} bits per weight", p.bits_per_weight()),
    }
}
