//! Small drawing helpers shared by the panels: byte counts, section headings, usage bars.

use egui::{Color32, RichText, Sense, Stroke, StrokeKind, Vec2};

use super::backend::Verdict;

/// Bytes in the largest unit that keeps the number ≥ 1 ("1.23 GiB").
pub use headroom_engine::human_bytes as fmt_bytes;

/// A parameter count as "860.0 M" / "1.23 B".
pub fn fmt_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1} K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}

/// The colour of a verdict: green, amber, red.
pub fn verdict_color(v: Verdict) -> Color32 {
    match v {
        Verdict::Fits => Color32::from_rgb(90, 190, 110),
        Verdict::FitsWith => Color32::from_rgb(230, 170, 60),
        Verdict::DoesNotFit => Color32::from_rgb(230, 80, 70),
    }
}

/// A small all-caps section heading with a rule under it.
pub fn section_ui(ui: &mut egui::Ui, title: &str) {
    ui.add_space(4.0);
    ui.label(
        RichText::new(title.to_uppercase())
            .small()
            .strong()
            .color(ui.visuals().weak_text_color()),
    );
    ui.separator();
}

/// A horizontal bar of `used` against `budget` with `text` over it; red past the budget.
/// The text is the widget's accessible label.
pub fn usage_bar_ui(
    ui: &mut egui::Ui,
    used: u64,
    budget: u64,
    text: &str,
    width: f32,
) -> egui::Response {
    let (rect, response) = ui.allocate_exact_size(Vec2::new(width, 18.0), Sense::hover());
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::ProgressIndicator, true, text));
    let frac = if budget == 0 {
        1.0
    } else {
        (used as f64 / budget as f64) as f32
    };
    let fill = if frac > 1.0 {
        Color32::from_rgb(200, 70, 60)
    } else if frac > 0.85 {
        Color32::from_rgb(210, 150, 50)
    } else {
        Color32::from_rgb(70, 140, 200)
    };
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, ui.visuals().extreme_bg_color);
    let mut bar = rect;
    bar.set_width(rect.width() * frac.clamp(0.0, 1.0));
    painter.rect_filled(bar, 3.0, fill);
    painter.rect_stroke(
        rect,
        3.0,
        Stroke::new(1.0, ui.visuals().widgets.noninteractive.bg_stroke.color),
        StrokeKind::Inside,
    );
    painter.text(
        rect.left_center() + Vec2::new(6.0, 0.0),
        egui::Align2::LEFT_CENTER,
        text,
        egui::FontId::proportional(12.0),
        ui.visuals().strong_text_color(),
    );
    response
}

/// A two-column key/value grid row.
pub fn kv_ui(ui: &mut egui::Ui, key: &str, value: impl Into<egui::WidgetText>) {
    ui.label(RichText::new(key).color(ui.visuals().weak_text_color()));
    ui.label(value);
    ui.end_row();
}
