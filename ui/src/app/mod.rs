//! The desktop app: [`HeadroomApp`] holds the saved [`state::SavedState`] and the runtime
//! [`state::Runtime`]; each frame runs [`HeadroomApp::logic`], draws the panels (the `*_ui`
//! functions, which only push [`command::AppCommand`]s), then runs the commands.
//!
//! Layout: plan bar on top, model and knobs on the left, request on the right, output / history /
//! A/B in the center, memory gauges at the bottom.

pub mod backend;
pub mod chores;
pub mod command;
pub mod engine_link;
mod logic;
pub mod state;
mod ui_ab;
mod ui_gauges;
mod ui_knobs;
mod ui_model;
mod ui_output;
mod ui_plan;
mod ui_request;
mod ui_sweep;
pub mod widgets;

use std::path::PathBuf;
use std::time::Instant;

use egui::{Key, Modifiers};

pub use backend::Backend;
pub use command::AppCommand;
use state::{Runtime, SavedState};

/// The key older versions stored the settings under in eframe's storage (read when there is no
/// `settings.json` yet).
const STORAGE_KEY: &str = "headroom-app";

/// The window icon: the app icon's 256 px rendering (`icons/headroom.svg`, `tools/icons.sh`).
const ICON_PNG: &[u8] = include_bytes!("../../../icons/256x256.png");

/// The app id: the desktop entry's name (`headroom.desktop`), so that window managers match the
/// window to its menu entry and icon (Wayland `app_id`, X11 `WM_CLASS`).
pub const APP_ID: &str = "headroom";

/// Opens the desktop window; `initial_paths` are handled as if dropped on it.
///
/// # Errors
/// No display (with no `DISPLAY`/`WAYLAND_DISPLAY`, eframe cannot open a window) or a renderer
/// that fails to start.
pub fn run_app(initial_paths: Vec<PathBuf>) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Headroom")
        .with_app_id(APP_ID)
        .with_inner_size([1440.0, 900.0])
        .with_min_inner_size([960.0, 600.0])
        .with_drag_and_drop(true);
    match eframe::icon_data::from_png_bytes(ICON_PNG) {
        Ok(icon) => viewport = viewport.with_icon(icon),
        Err(e) => log::warn!("the window icon could not be decoded: {e}"),
    }
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "Headroom",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            let backend = engine_link::EngineBackend::spawn(move || ctx.request_repaint());
            // Settings live in their own atomically written file; eframe's storage is read only
            // when that file is missing (settings saved by an older version).
            let saved: SavedState = SavedState::default_path()
                .and_then(|p| SavedState::load(&p))
                .or_else(|| cc.storage.and_then(|s| eframe::get_value(s, STORAGE_KEY)))
                .unwrap_or_default();
            let mut app = HeadroomApp::new(saved, Box::new(backend), backend::runs_dir());
            app.start(initial_paths);
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the Headroom window: {e}"))
}

/// The whole app: saved state plus runtime handles.
pub struct HeadroomApp {
    /// Persisted between sessions.
    pub state: SavedState,
    /// Handles and caches.
    pub rt: Runtime,
}

impl HeadroomApp {
    /// An app around a back end; outputs and profiles go to `out_dir`.
    pub fn new(state: SavedState, backend: Box<dyn Backend>, out_dir: PathBuf) -> Self {
        Self {
            state,
            rt: Runtime::new(backend, out_dir),
        }
    }

    /// First-frame work: open the paths given on the command line exactly as a drop would
    /// ([`AppCommand::OpenPaths`]), else inspect the last model used (or the built-in image model)
    /// so the plan is there at once; a built-in model (small, known to fit) is loaded straight
    /// away, so the app is ready to generate on first start. A path that does not exist is a
    /// one-line message, and the app starts as if it had not been given.
    pub fn start(&mut self, initial_paths: Vec<PathBuf>) {
        let (found, missing): (Vec<PathBuf>, Vec<PathBuf>) =
            initial_paths.into_iter().partition(|p| p.exists());
        for p in &missing {
            self.rt.error(format!("{}: no such file or folder (given on the command line)", p.display()));
        }
        if !found.is_empty() {
            self.rt.commands.push(AppCommand::OpenPaths(found));
            return;
        }
        let model = self
            .state
            .last_model
            .clone()
            .unwrap_or_else(|| "builtin:shapes".into());
        self.rt.commands.push(AppCommand::InspectModel(model.clone()));
        if model.starts_with("builtin:") {
            self.rt.commands.push(AppCommand::LoadModel { model, force: false });
        }
    }

    /// Runs the slow reads in the frame that asks for them instead of on the chores thread
    /// (answers still arrive a frame later): tests of panel logic step a fixed number of frames.
    pub fn with_inline_chores(mut self) -> Self {
        self.rt.chores = chores::Chores::inline(self.rt.backend.reader());
        self
    }

    /// One whole frame, as tests drive it: [`HeadroomApp::logic`] then [`HeadroomApp::draw_ui`].
    pub fn frame_ui(&mut self, ui: &mut egui::Ui) {
        self.logic(&ui.ctx().clone());
        self.draw_ui(ui);
    }

    /// Input, drawing, then the commands the drawing pushed (eframe calls
    /// [`HeadroomApp::logic`] separately, also while the window is hidden).
    pub fn draw_ui(&mut self, ui: &mut egui::Ui) {
        let t0 = self.rt.frame_start.take().unwrap_or_else(Instant::now);
        let ctx = ui.ctx().clone();
        self.take_dropped_files(&ctx);
        self.shortcuts(&ctx);
        self.layout_ui(ui);
        self.drop_overlay_ui(&ctx);
        self.run_commands(&ctx);
        self.take_chore_answers(&ctx);
        self.rt.record_frame(t0.elapsed().as_secs_f32() * 1000.0);
        if self.rt.run.is_some() {
            // Keep the elapsed time and spinner moving between engine events.
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let (generate, cancel, quit) = ctx.input_mut(|i| {
            (
                i.consume_key(Modifiers::COMMAND, Key::Enter),
                i.consume_key(Modifiers::NONE, Key::Escape),
                i.consume_key(Modifiers::COMMAND, Key::Q),
            )
        });
        if quit {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        if generate {
            self.rt.commands.push(AppCommand::Generate);
        }
        if cancel {
            self.rt.commands.push(AppCommand::Cancel);
        }
    }

    fn layout_ui(&mut self, ui: &mut egui::Ui) {
        egui::Panel::top("plan_bar")
            .frame(
                egui::Frame::side_top_panel(ui.style())
                    .inner_margin(egui::Margin::symmetric(10, 6)),
            )
            .show(ui, |ui| self.plan_bar_ui(ui));
        egui::Panel::bottom("gauges")
            .resizable(true)
            .default_size(170.0)
            .min_size(90.0)
            .show(ui, |ui| self.gauges_ui(ui));
        egui::Panel::left("model_knobs")
            .resizable(true)
            .default_size(310.0)
            .min_size(240.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    self.model_ui(ui);
                    ui.add_space(6.0);
                    self.knobs_ui(ui);
                });
            });
        egui::Panel::right("request")
            .resizable(true)
            .default_size(330.0)
            .min_size(260.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.request_ui(ui));
            });
        egui::CentralPanel::default().show(ui, |ui| self.center_ui(ui));
    }

    /// A translucent layer over the whole window while files are dragged over it.
    fn drop_overlay_ui(&mut self, ctx: &egui::Context) {
        if !self.rt.hovering_files {
            return;
        }
        let painter = ctx.layer_painter(egui::LayerId::new(
            egui::Order::Foreground,
            egui::Id::unique("drop"),
        ));
        let rect = ctx.content_rect();
        painter.rect_filled(rect, 0.0, egui::Color32::from_black_alpha(170));
        painter.text(
            rect.center(),
            egui::Align2::CENTER_CENTER,
            "Drop a model to inspect it, or an output / profile to restore its settings",
            egui::FontId::proportional(22.0),
            egui::Color32::WHITE,
        );
    }
}

impl eframe::App for HeadroomApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        HeadroomApp::logic(self, ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.draw_ui(ui);
    }

    fn save(&mut self, _storage: &mut dyn eframe::Storage) {
        // Not into eframe's storage: its `app.ron` is rewritten in place, and two instances
        // saving at once could leave a mix of both.
        if let Some(path) = SavedState::default_path()
            && let Err(e) = self.state.save(&path)
        {
            log::warn!("settings not saved: {e}");
        }
    }

    fn on_exit(&mut self) {
        if std::env::var_os("HEADROOM_FRAME_STATS").is_some() {
            for (what, n, p) in [
                ("frames", self.rt.frame_ms.len(), self.rt.frame_percentiles()),
                ("frames during runs", self.rt.run_frame_ms.len(), self.rt.run_frame_percentiles()),
            ] {
                if let Some((p50, p99)) = p {
                    eprintln!("{what}: {n} p50 {p50:.2} ms p99 {p99:.2} ms");
                }
            }
        }
    }
}
