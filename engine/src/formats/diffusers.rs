//! Diffusers folders: `model_index.json` names the components; each component folder (`unet/`,
//! `vae/`, `text_encoder/` …) holds a `config.json` and weights as `.safetensors`, a PyTorch zip
//! `.bin`, or shards with an index, possibly in variants (`diffusion_pytorch_model.fp16.safetensors`).
//! The non-variant weights are preferred when both exist, safetensors over `.bin`, and the choice
//! is reported in the metadata (`unet.weights`, `unet.variant`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::components::{component, component_of, split};
use super::{ComponentInfo, Format, Inspection, Loaded, file_name, guess, safetensors};
use crate::error::{Error, Result};

/// File stems that hold a component's weights (diffusers and transformers names).
const STEMS: &[&str] = &["diffusion_pytorch_model", "model", "pytorch_model"];
/// `config.json` keys copied into the metadata as `<component>.<key>` (they help the family guess).
const CONFIG_KEYS: &[&str] = &["_class_name", "cross_attention_dim", "hidden_act", "hidden_size", "addition_embed_type", "model_type"];

/// The weights chosen for one component folder.
pub(crate) struct Chosen {
    /// The file read first: a weight file or an index JSON.
    pub file: PathBuf,
    /// True when `file` is a `*.index.json` naming shards.
    pub index: bool,
    /// The variant (`fp16`, `ema` …) if the chosen file is one.
    pub variant: Option<String>,
    /// The other weight files found and not read.
    pub skipped: Vec<String>,
}

/// One candidate weight file: (variant, is .bin, is index, path).
type Candidate = (Option<String>, bool, bool, PathBuf);

/// Recognises a weight file name of a component folder.
fn candidate(path: &Path) -> Option<Candidate> {
    let name = file_name(path);
    let owned = |s: &str| (!s.is_empty()).then(|| s.to_string());
    for (ext, bin) in [(".safetensors", false), (".bin", true)] {
        // Index files: `<stem><ext>.index.json` or `<stem><ext>.index.<variant>.json`.
        if let Some((stem, rest)) = name.split_once(&format!("{ext}.index.")) {
            let variant = rest.strip_suffix("json")?.trim_end_matches('.');
            return STEMS.contains(&stem).then(|| (owned(variant), bin, true, path.to_path_buf()));
        }
        if let Some(stem) = name.strip_suffix(ext) {
            if safetensors::shard_pattern(&name).is_some() || stem.contains("-of-") {
                return None; // a shard: read through its index
            }
            let (base, variant) = match stem.split_once('.') {
                Some((b, v)) => (b, owned(v)),
                None => (stem, None),
            };
            return STEMS.contains(&base).then(|| (variant, bin, false, path.to_path_buf()));
        }
    }
    None
}

/// Picks the weights of a component folder that has a `config.json`; `None` if it has none.
pub(crate) fn component_weights(dir: &Path) -> Result<Option<Chosen>> {
    if !dir.join("config.json").is_file() {
        return Ok(None);
    }
    let mut cands: Vec<Candidate> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        if let Some(c) = candidate(&entry.path()) {
            cands.push(c);
        }
    }
    // Non-variant first, then safetensors before .bin, then by name.
    cands.sort_by(|a, b| (a.0.is_some(), a.1, &a.0, &a.3).cmp(&(b.0.is_some(), b.1, &b.0, &b.3)));
    let mut it = cands.into_iter();
    let Some((variant, _, index, file)) = it.next() else { return Ok(None) };
    let skipped = it.map(|c| file_name(&c.3)).collect();
    Ok(Some(Chosen { file, index, variant, skipped }))
}

/// Reads the chosen weights of one component.
fn read_chosen(c: &Chosen) -> Result<Loaded> {
    if c.index { safetensors::read_index(&c.file) } else { super::read_weight_file(&c.file, false) }
}

/// A JSON value as metadata text: strings bare, `["diffusers", "UNet2DConditionModel"]` joined by `.`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| x.is_string() || x.is_null()) => {
            a.iter().map(|x| x.as_str().unwrap_or("none")).collect::<Vec<_>>().join(".")
        }
        other => other.to_string(),
    }
}

/// Reads a JSON object file.
fn read_object(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::file(path, "is not a JSON object")),
        Err(e) => Err(Error::file(path, format!("not valid JSON: {e}"))),
    }
}

/// Reads one component folder into `out`, recording its choice and config in the metadata.
fn read_component(
    name: &str,
    dir: &Path,
    chosen: Chosen,
    metadata: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
    files: &mut Vec<PathBuf>,
) -> Result<ComponentInfo> {
    let loaded = read_chosen(&chosen)?;
    metadata.insert(format!("{name}.weights"), file_name(&chosen.file));
    if let Some(v) = &chosen.variant {
        metadata.insert(format!("{name}.variant"), v.clone());
    }
    if !chosen.skipped.is_empty() {
        warnings.push(format!(
            "{name}: read {}, not {}",
            file_name(&chosen.file),
            chosen.skipped.join(", ")
        ));
    }
    if let Ok(cfg) = read_object(&dir.join("config.json")) {
        for k in CONFIG_KEYS {
            if let Some(v) = cfg.get(*k) {
                metadata.insert(format!("{name}.{k}"), text(v));
            }
        }
    }
    warnings.extend(loaded.warnings);
    files.extend(loaded.files);
    for (k, v) in loaded.metadata {
        metadata.insert(format!("{name}.{k}"), v);
    }
    Ok(component(name, component_of(name), loaded.tensors))
}

/// Inspects a diffusers folder (`dir` holds `model_index.json`); `path` is what the user named.
pub(crate) fn inspect_folder(path: &Path, dir: &Path) -> Result<Inspection> {
    let index_path = dir.join("model_index.json");
    let index = read_object(&index_path)?;
    let mut metadata = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut files = Vec::new();
    let mut components = Vec::new();
    for (k, v) in &index {
        metadata.insert(k.clone(), text(v));
    }
    for (name, v) in &index {
        // Components are entries like "unet": ["diffusers", "UNet2DConditionModel"].
        let is_component = matches!(v, Value::Array(a) if a.len() == 2 && a[1].is_string());
        if name.starts_with('_') || !is_component {
            continue;
        }
        let sub = dir.join(name);
        if !sub.is_dir() {
            warnings.push(format!("{name}: listed in model_index.json but folder {name}/ is missing"));
            continue;
        }
        match component_weights(&sub)? {
            Some(chosen) => {
                components.push(read_component(name, &sub, chosen, &mut metadata, &mut warnings, &mut files)?);
            }
            None if sub.join("config.json").is_file() => {
                warnings.push(format!("{name}: has a config.json but no weight file"));
            }
            None => {} // tokenizer, scheduler, feature extractor: no weights
        }
    }
    if components.is_empty() {
        return Err(Error::file(&index_path, "no component folder with weights (unet/, vae/, text_encoder/ …)"));
    }
    let family = guess::family(Format::Diffusers, &components, &metadata);
    Ok(Inspection { path: path.to_path_buf(), format: Format::Diffusers, family, components, metadata, warnings, files })
}

/// Inspects a single diffusers component folder (`config.json` + weights, e.g. `unet/`).
pub(crate) fn inspect_component_folder(dir: &Path, chosen: Chosen) -> Result<Inspection> {
    let folder = file_name(dir);
    let mut metadata = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut files = Vec::new();
    let name = if component_of(&folder).is_some() { folder } else { "model".to_string() };
    let mut comp = read_component(&name, dir, chosen, &mut metadata, &mut warnings, &mut files)?;
    let components = if comp.component.is_some() {
        vec![comp]
    } else {
        let parts = split(std::mem::take(&mut comp.tensors));
        if parts.is_empty() { vec![comp] } else { parts }
    };
    let family = guess::family(Format::Diffusers, &components, &metadata);
    Ok(Inspection { path: dir.to_path_buf(), format: Format::Diffusers, family, components, metadata, warnings, files })
}
