//! ComfyUI outputs read back into a request: the `prompt` chunk (the API graph that ran) or, when
//! only the `workflow` chunk (the editor's graph) is there, that one converted to the same form.
//!
//! From the sampler node (KSampler / KSamplerAdvanced) the links are followed to the text
//! encoders (prompt and negative), the empty latent (size, batch) and the checkpoint loader
//! (model hint); anything on the way that has no equivalent here is listed as unmapped.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::restore::{Restored, Source};
use crate::request::Scheduler;

/// A node of the API graph: its class and its inputs (literals, or `[node id, slot]` links).
struct Node {
    class: String,
    inputs: Map<String, Value>,
}

type Graph = BTreeMap<String, Node>;

/// Parses the `prompt` chunk (API graph JSON).
///
/// # Errors
/// A one-line problem: not JSON, not an object of nodes, or no sampler node.
pub fn parse_prompt(json: &str) -> Result<Restored, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("ComfyUI prompt is not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("ComfyUI prompt is not a JSON object of nodes")?;
    let mut g = Graph::new();
    for (id, node) in obj {
        let class = node.get("class_type").and_then(Value::as_str).unwrap_or_default().to_string();
        let inputs = node.get("inputs").and_then(Value::as_object).cloned().unwrap_or_default();
        g.insert(id.clone(), Node { class, inputs });
    }
    from_graph(&g)
}

/// Widget names, in order, of the node types we read from a `workflow` chunk.
fn widget_names(class: &str) -> Option<&'static [&'static str]> {
    Some(match class {
        "KSampler" => &["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
        "KSamplerAdvanced" => &[
            "add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
            "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise",
        ],
        "CLIPTextEncode" => &["text"],
        "EmptyLatentImage" => &["width", "height", "batch_size"],
        "CheckpointLoaderSimple" => &["ckpt_name"],
        "LoraLoader" => &["lora_name", "strength_model", "strength_clip"],
        _ => return None,
    })
}

/// Parses the `workflow` chunk (the editor's graph) by converting it to the API form.
///
/// # Errors
/// As [`parse_prompt`].
pub fn parse_workflow(json: &str) -> Result<Restored, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("ComfyUI workflow is not valid JSON: {e}"))?;
    let nodes = v.get("nodes").and_then(Value::as_array).ok_or("ComfyUI workflow has no `nodes` list")?;
    // link id → (origin node id, origin slot)
    let mut links = BTreeMap::new();
    for l in v.get("links").and_then(Value::as_array).into_iter().flatten() {
        if let Some([id, from, slot, ..]) = l.as_array().map(Vec::as_slice) {
            links.insert(id.to_string(), Value::Array(vec![Value::String(from.to_string()), slot.clone()]));
        }
    }
    let mut g = Graph::new();
    for n in nodes {
        let id = n.get("id").map(Value::to_string).unwrap_or_default();
        let class = n.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut inputs = Map::new();
        for inp in n.get("inputs").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(name), Some(link)) = (inp.get("name").and_then(Value::as_str), inp.get("link"))
                && let Some(target) = links.get(&link.to_string())
            {
                inputs.insert(name.to_string(), target.clone());
            }
        }
        if let (Some(names), Some(values)) =
            (widget_names(&class), n.get("widgets_values").and_then(Value::as_array))
        {
            let mut names = names.iter().copied().peekable();
            let mut values = values.iter().peekable();
            while let (Some(name), Some(value)) = (names.peek().copied(), values.peek()) {
                // Older workflows have no control_after_generate widget after the seed.
                let is_control = matches!(value.as_str(), Some("fixed" | "increment" | "decrement" | "randomize"));
                if name == "control_after_generate" && !is_control {
                    names.next();
                    continue;
                }
                if !inputs.contains_key(name) {
                    inputs.insert(name.to_string(), (*value).clone());
                }
                names.next();
                values.next();
            }
        }
        g.insert(id, Node { class, inputs });
    }
    from_graph(&g).map(|mut r| {
        r.mapped.push("read from the editor workflow (no API prompt in the file)".into());
        r
    })
}

/// The node a link input points at.
fn follow<'g>(g: &'g Graph, v: Option<&Value>) -> Option<(&'g str, &'g Node)> {
    let id = v?.as_array()?.first()?;
    let id = id.as_str().map(str::to_string).unwrap_or_else(|| id.to_string());
    g.get_key_value(&id).map(|(k, n)| (k.as_str(), n))
}

/// Most links followed from a sampler input (and from a text input to the node holding the text).
const MAX_HOPS: usize = 8;

/// Walks back from `start` through link inputs (breadth first, a few hops) to the first node
/// `want` accepts; the classes passed through are returned too. Each node is visited once, so a
/// graph whose links loop or fan out (a node linking to itself many times) costs one visit per
/// node, not one per path.
fn walk<'g>(g: &'g Graph, start: Option<&Value>, want: impl Fn(&Node) -> bool) -> (Option<&'g Node>, Vec<String>) {
    let mut seen = Vec::new();
    let mut visited = BTreeSet::new();
    let mut frontier: Vec<&Node> = follow(g, start).filter(|(id, _)| visited.insert(*id)).map(|(_, n)| n).into_iter().collect();
    for _ in 0..MAX_HOPS {
        let mut next = Vec::new();
        for n in frontier {
            if want(n) {
                return (Some(n), seen);
            }
            if !seen.contains(&n.class) {
                seen.push(n.class.clone());
            }
            for (id, m) in n.inputs.values().filter_map(|v| follow(g, Some(v))) {
                if visited.insert(id) {
                    next.push(m);
                }
            }
        }
        frontier = next;
    }
    (None, seen)
}

/// The prompt text of a text-encoder node, following its text input through at most
/// [`MAX_HOPS`] links (a primitive or string node); a link loop gives no text.
fn text_of(g: &Graph, n: &Node) -> Option<String> {
    let mut n = n;
    for _ in 0..=MAX_HOPS {
        let mut linked = None;
        for key in ["text", "text_g", "string", "value"] {
            match n.inputs.get(key) {
                Some(Value::String(s)) => return Some(s.clone()),
                Some(v @ Value::Array(_)) => {
                    linked = follow(g, Some(v));
                    if linked.is_some() {
                        break;
                    }
                }
                _ => {}
            }
        }
        n = linked?.1;
    }
    None
}

fn is_sampler(n: &Node) -> bool {
    matches!(n.class.as_str(), "KSampler" | "KSamplerAdvanced")
}

fn from_graph(g: &Graph) -> Result<Restored, String> {
    let mut samplers: Vec<(&String, &Node)> = g.iter().filter(|(_, n)| is_sampler(n)).collect();
    if samplers.is_empty() {
        return Err("ComfyUI graph has no KSampler or KSamplerAdvanced node".into());
    }
    samplers.sort_by_key(|(id, _)| (id.parse::<u64>().unwrap_or(u64::MAX), (*id).clone()));
    // The first pass of a multi-pass graph is the one whose latent starts empty.
    let starts_empty = |n: &Node| follow(g, n.inputs.get("latent_image")).is_some_and(|(_, l)| l.class.starts_with("Empty"));
    let idx = samplers.iter().position(|(_, n)| starts_empty(n)).unwrap_or(0);
    let (_, ks) = samplers[idx];

    let mut out = Restored::empty(Source::ComfyUI);
    if samplers.len() > 1 {
        out.unmapped.push(format!("{} more sampler nodes (e.g. a hires pass) were ignored", samplers.len() - 1));
    }
    let num = |k: &str| ks.inputs.get(k).and_then(Value::as_f64);
    let seed_key = if ks.class == "KSamplerAdvanced" { "noise_seed" } else { "seed" };
    // The seed may come from a primitive/seed node through a link.
    let seed = match ks.inputs.get(seed_key) {
        Some(v @ Value::Array(_)) => follow(g, Some(v)).and_then(|(_, n)| {
            ["seed", "noise_seed", "value", "int"].iter().find_map(|k| n.inputs.get(*k).and_then(Value::as_u64))
        }),
        v => v.and_then(Value::as_u64),
    };
    match seed {
        Some(s) => {
            out.request.seed = s;
            out.mapped.push(format!("seed: {s}"));
        }
        None => out.unmapped.push("seed is not a fixed number in the graph".into()),
    }
    if let Some(s) = num("steps").filter(|s| *s >= 1.0) {
        out.request.steps = s as u32;
        out.mapped.push(format!("steps: {s}"));
    }
    if let Some(c) = num("cfg") {
        out.request.guidance = c as f32;
        out.mapped.push(format!("cfg: {c}"));
    }
    if let Some(name) = ks.inputs.get("sampler_name").and_then(Value::as_str) {
        match name.parse::<Scheduler>() {
            Ok(s) => {
                out.request.scheduler = s;
                out.mapped.push(format!("sampler: {name}"));
            }
            Err(_) => out.unmapped.push(format!("sampler '{name}' has no equivalent (kept {})", out.request.scheduler)),
        }
    }
    match ks.inputs.get("scheduler").and_then(Value::as_str) {
        Some("karras") => {
            out.request.karras = true;
            out.mapped.push("scheduler: karras".into());
        }
        Some("normal") => out.mapped.push("scheduler: normal".into()),
        Some(other) => out.unmapped.push(format!("schedule '{other}' has no equivalent (kept normal)")),
        None => {}
    }
    if let Some(d) = num("denoise").filter(|d| (*d - 1.0).abs() > 1e-6) {
        out.unmapped.push(format!("denoise {d} (image to image) has no equivalent"));
    }

    for (input, negative) in [("positive", false), ("negative", true)] {
        let (node, via) = walk(g, ks.inputs.get(input), |n| n.class.starts_with("CLIPTextEncode"));
        match node.and_then(|n| text_of(g, n)) {
            Some(t) => {
                if negative { out.request.negative = t } else { out.request.prompt = t }
                out.mapped.push(format!("{input} prompt"));
                if !via.is_empty() {
                    out.unmapped.push(format!("{input} conditioning passes through {}; only its text was restored", via.join(", ")));
                }
            }
            None => out.unmapped.push(format!("{input} prompt text could not be found in the graph")),
        }
    }

    let (latent, via) = walk(g, ks.inputs.get("latent_image"), |n| n.inputs.contains_key("width") && n.inputs.contains_key("height"));
    match latent {
        Some(l) if via.is_empty() => {
            let get = |k: &str| l.inputs.get(k).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
            if let (Some(w), Some(h)) = (get("width"), get("height")) {
                (out.request.width, out.request.height) = (w, h);
                out.mapped.push(format!("size: {w}x{h}"));
            }
            if let Some(b) = get("batch_size").filter(|b| *b >= 1) {
                out.request.batch = b;
                out.mapped.push(format!("batch: {b}"));
            }
        }
        _ => {
            let from = follow(g, ks.inputs.get("latent_image")).map_or("nothing".to_string(), |(_, n)| n.class.clone());
            out.unmapped.push(format!("the latent comes from {from}, which has no equivalent; size not restored"));
        }
    }

    let (loader, via) = walk(g, ks.inputs.get("model"), |n| n.inputs.contains_key("ckpt_name") || n.inputs.contains_key("unet_name"));
    if let Some(l) = loader {
        let name = l.inputs.get("ckpt_name").or_else(|| l.inputs.get("unet_name")).and_then(Value::as_str);
        if let Some(name) = name {
            out.model_hint = Some(name.to_string());
            out.mapped.push(format!("model: {name}"));
        }
    }
    for class in via {
        out.unmapped.push(format!("model passes through {class}, which has no equivalent"));
    }
    Ok(out)
}
