//! MusicGen (text → music, transformers' `MusicgenForConditionalGeneration` folders): [`config`]
//! (the checkpoint's config and its checks), [`t5`] (the text encoder), [`decoder`] (the
//! codebook LM with its KV cache and the delay pattern), [`sampling`] (temperature, top-k,
//! top-p, greedy), [`encodec`] (codes → audio) and [`pipeline`] (prompt → audio, the
//! [`crate::families::Family`] implementation). Components: `text`, `lm`, `codec`.

pub mod config;
pub mod decoder;
pub mod encodec;
pub mod pipeline;
pub mod sampling;
pub mod t5;

#[cfg(test)]
mod tests;

pub use pipeline::{MusicGen, load};

use crate::families::{ComponentSpec, FamilyEntry, FieldKind, FieldSpec, Recognition};
use crate::formats::Inspection;

/// This family in the registry ([`crate::families::FAMILIES`]).
pub const ENTRY: FamilyEntry = FamilyEntry {
    name: "musicgen",
    recognise,
    load: |path, knobs, cancel| Ok(Box::new(load(path, knobs, cancel)?)),
};

/// MusicGen's components, in pipeline order.
pub const COMPONENTS: [ComponentSpec; 3] = [
    ComponentSpec { name: "text", aliases: &["text_encoder", "t5"], label: "Text encoder", placeable: true, units: None },
    ComponentSpec { name: "lm", aliases: &["decoder"], label: "Codebook LM", placeable: false, units: None },
    ComponentSpec { name: "codec", aliases: &["audio_encoder", "encodec"], label: "Audio codec", placeable: true, units: None },
];

/// What a MusicGen run takes besides the prompt, seed and batch: the length, guidance and the
/// sampling of each token (unset: the model's `generation_config.json`).
pub const FIELDS: [FieldSpec; 5] = [
    FieldSpec { key: "seconds", label: "Seconds", kind: FieldKind::Float { min: 0.0, max: 30.0, step: 0.1, unit: " s" }, help: "0 means the model's default length" },
    FieldSpec { key: "guidance", label: "Guidance", kind: FieldKind::Float { min: 0.0, max: 10.0, step: 0.5, unit: "" }, help: "classifier-free guidance; 1 or less turns it off" },
    FieldSpec { key: "temperature", label: "Temperature", kind: FieldKind::Float { min: 0.0, max: 2.0, step: 0.05, unit: "" }, help: "0 is greedy" },
    FieldSpec { key: "top_k", label: "Top-k", kind: FieldKind::Int { min: 0, max: 500, step: 1 }, help: "sample among the k likeliest tokens; 1 is greedy, 0 turns it off" },
    FieldSpec { key: "top_p", label: "Top-p", kind: FieldKind::Float { min: 0.0, max: 1.0, step: 0.01, unit: "" }, help: "sample among the likeliest tokens whose probabilities sum to p; 1 turns it off" },
];

/// A Hugging Face folder whose `config.json` says `model_type = "musicgen"`: surely.
fn recognise(insp: &Inspection) -> Option<Recognition> {
    let dir = &insp.path;
    if !dir.is_dir() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    if json.get("model_type")?.as_str()? != "musicgen" {
        return None;
    }
    let codebooks = json.pointer("/decoder/num_codebooks").and_then(|v| v.as_u64()).unwrap_or(4);
    Some(Recognition {
        family: ENTRY.name,
        confidence: 1.0,
        reason: format!("a Hugging Face folder whose config.json says model_type = \"musicgen\" ({codebooks} codebooks)"),
        components: COMPONENTS.to_vec(),
        fields: FIELDS.to_vec(),
    })
}
