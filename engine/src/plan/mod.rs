//! The planner: predicted bytes per device for a model + knobs + request, against a budget, with a
//! verdict (fits / fits with knob changes / does not fit) and the cheapest knob changes that make it
//! fit, ranked by expected quality loss.
//!
//! Weights are counted per tensor at the chosen precision ([`shape`]); activations come from the
//! family's formula ([`activations`]); a device's peak is its resident weights plus the largest
//! stage it runs, plus the runtime's own overhead.

pub mod activations;
pub mod shape;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::knobs::{Component, DeviceKind, Knobs, OffloadMode, Precision};
use crate::model::ModelRef;
use crate::request::Request;

pub use shape::ModelShape;

/// Memory the runtime itself needs on a device besides the model's weights and activations: on a
/// GPU the CUDA context; on the CPU the binary and its libraries plus the allocator's free
/// memory not yet returned, which grows with the activations that come and go (RSS over peak
/// heap measured 24-84 MB on the mini model, 80-190 MB at SD 1.5 sizes).
pub fn runtime_overhead_bytes(device: DeviceKind, activation_bytes: u64) -> u64 {
    if device.is_gpu() { 400 << 20 } else { (48 << 20) + activation_bytes / 10 }
}

/// The component entry of the one streamed block a stream plan materializes at a time.
const STREAMED_BLOCK: &str = "unet (streamed block)";

/// The verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Fits as configured.
    Fits,
    /// Does not fit as configured, but does with one of the suggestions.
    FitsWith,
    /// Does not fit even with every knob turned.
    DoesNotFit,
}

impl Verdict {
    /// The verdict as written in JSON and shown to people.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Fits => "fits",
            Verdict::FitsWith => "fits-with",
            Verdict::DoesNotFit => "does-not-fit",
        }
    }
}

/// Memory budget per device; a device with no entry is not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Budgets(pub BTreeMap<DeviceKind, u64>);

impl Budgets {
    /// One budget for one device.
    pub fn single(device: DeviceKind, bytes: u64) -> Self {
        Self(BTreeMap::from([(device, bytes)]))
    }
}

/// Predicted bytes on one device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DevicePlan {
    pub device: String,
    pub weights_bytes: u64,
    pub activation_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
    /// None where no budget is known for the device.
    pub budget_bytes: Option<u64>,
    /// Weight bytes per component (`text`, SDXL's `text_2`, `unet`, `vae`, `unet (streamed block)`, `other`).
    pub components: BTreeMap<String, u64>,
    /// The stage whose activations set the peak.
    pub peak_stage: String,
    /// What each stage run here holds above the resident weights (its activations, scratch and
    /// any block it materializes), by stage name (`text`, `denoise`, `decode`): what the worker
    /// checks can be allocated as each stage begins.
    pub stage_bytes: BTreeMap<String, u64>,
}

impl DevicePlan {
    /// True when there is no budget or the total is within it.
    pub fn fits(&self) -> bool {
        self.budget_bytes.is_none_or(|b| self.total_bytes <= b)
    }
}

/// A set of knob changes that makes the model fit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Suggestion {
    /// `(knob, value)` pairs with profile names.
    pub changes: Vec<(String, String)>,
    /// Predicted peak of the busiest device with the changes.
    pub total_bytes: u64,
    /// What it costs, in words ("lossless, ~5% slower", "small quality loss").
    pub cost: String,
    /// Expected quality loss, 0 = none; suggestions are sorted by it.
    pub quality_loss: f32,
}

impl Suggestion {
    /// The changes as one `key=value,…` list, the form `headroom run --set` and profiles take.
    pub fn changes_text(&self) -> String {
        self.changes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// A memory prediction with its verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub verdict: Verdict,
    /// Sum over devices.
    pub weights_bytes: u64,
    pub activation_bytes: u64,
    pub total_bytes: u64,
    /// The run's main device budget (0 when unknown).
    pub budget_bytes: u64,
    pub per_device: Vec<DevicePlan>,
    pub suggestions: Vec<Suggestion>,
    /// Where a number is an assumption rather than read from the model.
    pub notes: Vec<String>,
    /// The denoiser's offloadable blocks (the most `offload.gpu_blocks` can keep).
    pub unet_blocks: u32,
}

impl Plan {
    /// Why a run with this plan is refused before it starts, in one line: the device that is
    /// short and by how much, and the first knob changes that fit; `None` when it fits.
    pub fn refusal(&self) -> Option<String> {
        if self.verdict == Verdict::Fits {
            return None;
        }
        let human = crate::human_bytes;
        let short = self.per_device.iter().find(|d| !d.fits())?;
        let mut line = format!(
            "it needs {} on {} and {} is free",
            human(short.total_bytes),
            short.device,
            human(short.budget_bytes.unwrap_or(0))
        );
        match self.suggestions.first() {
            Some(s) => line.push_str(&format!("; it fits with {} ({}, {})", s.changes_text(), human(s.total_bytes), s.cost)),
            None => line.push_str("; no knob setting makes it fit"),
        }
        Some(line)
    }
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            verdict: Verdict::Fits,
            weights_bytes: 0,
            activation_bytes: 0,
            total_bytes: 0,
            budget_bytes: 0,
            per_device: vec![],
            suggestions: vec![],
            notes: vec![],
            unet_blocks: 0,
        }
    }
}

/// The budget of each device in use: `given` for the run's device, else the free memory now
/// (NVML for an NVIDIA GPU; for the CPU the available RAM, or less where an address-space or
/// control-group limit leaves less, [`crate::telemetry::limits`]).
pub fn default_budgets(knobs: &Knobs, given: Option<u64>) -> Budgets {
    let sample = crate::telemetry::sample_once();
    let mut b = Budgets::default();
    let ram = sample.ram_total_bytes.saturating_sub(sample.ram_used_bytes);
    // what a limit leaves, less the slack the worker's stage check adds to what it plans
    let limit = crate::telemetry::limits::tightest()
        .map_or(u64::MAX, |l| (l.remaining_bytes as f64 / (1.0 + crate::telemetry::limits::SLACK)) as u64);
    b.0.insert(DeviceKind::Cpu, ram.min(limit));
    if let DeviceKind::Cuda(n) = knobs.device
        && let Some(g) = sample.gpus.iter().find(|g| g.cuda_ordinal == Some(n)) {
            b.0.insert(knobs.device, g.total_bytes.saturating_sub(g.used_bytes));
        }
    if let Some(g) = given {
        b.0.insert(knobs.device, g);
    }
    b
}

/// Inspects a model and plans it against [`default_budgets`] — what the CLI, the app and the
/// worker's `Plan` command all call.
///
/// # Errors
/// The model cannot be found or read, or no family of this build runs it
/// ([`ModelShape::runnable`]).
pub fn plan_model(model: &ModelRef, knobs: &Knobs, request: &Request, budget: Option<u64>) -> crate::Result<Plan> {
    let insp = crate::formats::inspect(&model.resolve()?)?;
    let shape = ModelShape::runnable(&insp)?;
    // the knobs in the family's words: `text_encoder` is `text`, a component it lacks an error
    let knobs = match crate::families::recognise(&insp) {
        Some((r, _)) => knobs.for_family(&r.components, &model.to_string())?,
        None => *knobs,
    };
    Ok(plan(&shape, &knobs, request, &default_budgets(&knobs, budget)))
}

/// Predicts memory per device for `shape` run with `knobs` on `request`, checks it against
/// `budgets` and, when it does not fit, searches for knob changes that make it fit.
pub fn plan(shape: &ModelShape, knobs: &Knobs, request: &Request, budgets: &Budgets) -> Plan {
    let per_device = predict(shape, knobs, request, budgets);
    let fits = per_device.iter().all(DevicePlan::fits);
    let suggestions = if fits { vec![] } else { suggest(shape, knobs, request, budgets) };
    let verdict = match (fits, suggestions.is_empty()) {
        (true, _) => Verdict::Fits,
        (false, false) => Verdict::FitsWith,
        (false, true) => Verdict::DoesNotFit,
    };
    let mut notes = shape.assumptions.clone();
    notes.extend(streamed_note(shape, knobs));
    if budgets.0.is_empty() {
        notes.push("no budget known: nothing was checked".into());
    }
    Plan {
        verdict,
        weights_bytes: per_device.iter().map(|d| d.weights_bytes).sum(),
        activation_bytes: per_device.iter().map(|d| d.activation_bytes).sum(),
        total_bytes: per_device.iter().map(|d| d.total_bytes).sum(),
        budget_bytes: budgets.0.get(&knobs.device).copied().unwrap_or(0),
        per_device,
        suggestions,
        notes,
        unet_blocks: shape.unet_blocks.len() as u32,
    }
}

/// The blocks a stream plan reads from the weight file at every step (not counted as RAM).
fn streamed_note(shape: &ModelShape, knobs: &Knobs) -> Option<String> {
    let n = knobs.offload.gpu_blocks? as usize;
    if knobs.offload.mode != OffloadMode::Stream || n >= shape.unet_blocks.len() {
        return None;
    }
    let p = shape.weight_precision(knobs.precision.get(Component::Unet), knobs.device);
    let bytes: u64 = shape.unet_blocks[n..].iter().map(|(_, t)| shape::bytes_at(t, p)).sum();
    Some(format!(
        "unet: {} blocks ({:.1} MiB) are read from the memory-mapped weight file at each step; \
         that is page cache, not counted against RAM",
        shape.unet_blocks.len() - n,
        bytes as f64 / (1u64 << 20) as f64
    ))
}

/// Bytes per device, without a verdict.
pub fn predict(shape: &ModelShape, knobs: &Knobs, req: &Request, budgets: &Budgets) -> Vec<DevicePlan> {
    let dev = knobs.device;
    // what a component computes in (`auto` resolved), and what its weights are counted at (a
    // GGUF's `auto`: each tensor as stored)
    let prec = |c: Component| knobs.precision.get(c).resolve(dev);
    let wprec = |c: Component| shape.weight_precision(knobs.precision.get(c), dev);
    // per device: weight bytes by component, and activation bytes by stage
    type DeviceBytes = (BTreeMap<String, u64>, Vec<(&'static str, u64)>);
    let mut acc: BTreeMap<DeviceKind, DeviceBytes> = BTreeMap::new();
    let mut add_weights = |d: DeviceKind, name: &str, bytes: u64| {
        if bytes > 0 {
            *acc.entry(d).or_default().0.entry(name.to_string()).or_default() += bytes;
        }
    };

    // Text encoder and autoencoder: whole components.
    let text_dev = knobs.offload.placement.get(Component::Text).resolve(dev);
    let vae_dev = knobs.offload.placement.get(Component::Vae).resolve(dev);
    // SDXL's second text encoder apart, with its own knobs (`text_2`)
    let text_2_dev = knobs.offload.placement.get("text_2").resolve(dev);
    let text_2_prec = shape.weight_precision(knobs.precision.get("text_2"), dev);
    let text_bytes = shape.component_bytes(Component::Text, wprec(Component::Text)) - shape::bytes_at(&shape.text_2, wprec(Component::Text));
    add_weights(text_dev, "text", text_bytes);
    add_weights(text_2_dev, "text_2", shape::bytes_at(&shape.text_2, text_2_prec));
    add_weights(vae_dev, "vae", shape.component_bytes(Component::Vae, wprec(Component::Vae)));
    let other = match wprec(Component::Unet) {
        Precision::Auto => Precision::Auto,
        p => Precision::F16.min_with(p),
    };
    add_weights(dev, "other", shape.other_bytes(other));

    // Denoiser: the stem and the first gpu_blocks blocks on the device; the rest on the CPU,
    // computed there (split) or copied in one at a time (stream).
    let up = wprec(Component::Unet);
    let blocks: Vec<u64> = shape.unet_blocks.iter().map(|(_, t)| shape::bytes_at(t, up)).collect();
    let stem = shape::bytes_at(&shape.unet_stem, up);
    let unet_total = shape.component_bytes(Component::Unet, up);
    let resident = match knobs.offload.gpu_blocks {
        Some(n) if (n as usize) < blocks.len() => n as usize,
        _ => blocks.len(),
    };
    let (on_dev, off_dev): (u64, u64) = (blocks[..resident].iter().sum(), blocks[resident..].iter().sum());
    let largest_off = blocks[resident..].iter().copied().max().unwrap_or(0);
    let mut unet_split_on_cpu = false;
    if blocks.is_empty() {
        add_weights(dev, "unet", unet_total);
    } else if !dev.is_gpu() {
        // On the CPU, split computes where the blocks already are (all resident); stream leaves
        // the non-resident blocks in the mapped file and materializes one at a time on the heap.
        add_weights(dev, "unet", stem + on_dev);
        match knobs.offload.mode {
            OffloadMode::Stream => add_weights(dev, STREAMED_BLOCK, largest_off),
            OffloadMode::Split => add_weights(dev, "unet", off_dev),
        }
    } else {
        add_weights(dev, "unet", stem + on_dev);
        if off_dev > 0 {
            match knobs.offload.mode {
                OffloadMode::Split => {
                    add_weights(DeviceKind::Cpu, "unet", off_dev);
                    unet_split_on_cpu = true;
                }
                // Streamed blocks stay in the memory-mapped weight file (page cache the kernel
                // can drop, not RAM the run holds): only the block being copied in counts.
                OffloadMode::Stream => add_weights(dev, STREAMED_BLOCK, largest_off),
            }
        }
    }

    // Stage activations on the devices that run them.
    let slice = knobs.slicing.attention_slice;
    let text_act = activations::text_bytes(shape, req, activations::activation_elem_bytes(prec(Component::Text), text_dev));
    let unet_act =
        activations::unet_bytes(shape, req, slice, dev, activations::activation_elem_bytes(prec(Component::Unet), dev));
    let vae_act = activations::vae_bytes(
        shape,
        req,
        (slice, knobs.slicing.vae_tile),
        vae_dev,
        activations::activation_elem_bytes(prec(Component::Vae), vae_dev),
    );
    // what a stage holds besides its feature maps: the CPU kernels' per-thread scratch, and the
    // f32 copy of a narrow layer weight (quantized anywhere, half-precision on the CPU) that a
    // call widens: on a GPU for one call, on the CPU in a buffer the worker thread keeps until the
    // stage ends (`nn::cpu::expand`); either way the stage's largest layer
    let extra = |c: Component, d: DeviceKind| {
        let widens = match wprec(c) {
            Precision::Auto => shape.stores_narrow(c, d),
            p => p.is_quantized() || (!d.is_gpu() && matches!(p, Precision::F16 | Precision::Bf16)),
        };
        let layer = if widens { 4 * shape.largest_tensor_elements(c) } else { 0 };
        activations::kernel_scratch_bytes(d) + layer
    };
    // in the order a run goes through them
    let mut stages: Vec<(DeviceKind, &'static str, u64)> = vec![
        (text_dev, "text", text_act + extra(Component::Text, text_dev)),
        (dev, "denoise", unet_act + extra(Component::Unet, dev)),
        (vae_dev, "decode", vae_act + extra(Component::Vae, vae_dev)),
    ];
    if unet_split_on_cpu {
        stages.push((DeviceKind::Cpu, "denoise", unet_act));
    }
    for (d, name, bytes) in stages {
        acc.entry(d).or_default().1.push((name, bytes));
    }

    acc.into_iter()
        .map(|(d, (components, stages))| {
            // a streamed block is materialized only while the denoiser runs: it counts at the
            // peak only when that stage (with it) is the peak
            let streamed = components.get(STREAMED_BLOCK).copied().unwrap_or(0);
            let resident: u64 = components.values().sum::<u64>() - streamed;
            let mut stage_bytes = BTreeMap::new();
            for (name, act) in stages {
                let held: &mut u64 = stage_bytes.entry(name.to_string()).or_default();
                *held = (*held).max(act + if name == "denoise" { streamed } else { 0 });
            }
            let (peak_stage, held) =
                stage_bytes.iter().max_by_key(|s| *s.1).map_or(("none", 0), |(name, &b)| (name.as_str(), b));
            let peak_stage = peak_stage.to_string();
            let streamed_at_peak = if peak_stage == "denoise" { streamed } else { 0 };
            let weights_bytes = resident + streamed_at_peak;
            let activation_bytes = held - streamed_at_peak;
            let overhead_bytes = runtime_overhead_bytes(d, activation_bytes);
            DevicePlan {
                device: d.to_string(),
                weights_bytes,
                activation_bytes,
                overhead_bytes,
                total_bytes: weights_bytes + activation_bytes + overhead_bytes,
                budget_bytes: budgets.0.get(&d).copied(),
                components,
                peak_stage,
                stage_bytes,
            }
        })
        .collect()
}

impl Precision {
    /// The narrower of two float precisions (used for tensors of no known component).
    fn min_with(self, other: Precision) -> Precision {
        if other.bits_per_weight() < self.bits_per_weight() && !other.is_quantized() { other } else { self }
    }
}

/// A knob move the search may make, with its expected quality loss and its cost in words.
struct Move {
    /// Knob settings made together (the first names the suggestion).
    changes: Vec<(&'static str, String)>,
    quality_loss: f32,
    cost: &'static str,
}

fn moves(knobs: &Knobs, req: &Request) -> Vec<Move> {
    let mut m = Vec::new();
    let mv = |key, value: String, quality_loss, cost| Move { changes: vec![(key, value)], quality_loss, cost };
    let latent = (req.width as u64 / 8) * (req.height as u64 / 8);
    // on the CPU attention never holds more than its kernels' scratch: slicing cannot help there
    for slice in [1024u32, 256, 64] {
        if knobs.device.is_gpu()
            && (slice as u64) < latent
            && (knobs.slicing.attention_slice == 0 || knobs.slicing.attention_slice > slice)
        {
            m.push(mv("slicing.attention_slice", slice.to_string(), 0.0, "lossless, a few % slower"));
        }
    }
    for tile in [64u32, 32] {
        let side = req.width.max(req.height) / 8;
        if tile < side && (knobs.slicing.vae_tile == 0 || knobs.slicing.vae_tile > tile) {
            m.push(mv("slicing.vae_tile", tile.to_string(), 0.0, "lossless (exact tiles), slower decode"));
        }
    }
    if knobs.device.is_gpu() {
        m.push(mv("offload.text", "cpu".into(), 0.0, "lossless, prompt encoding on the CPU"));
        m.push(mv("offload.vae", "cpu".into(), 0.0, "lossless, decode on the CPU (slower)"));
        m.push(mv("offload.mode", "stream".into(), 0.0, "lossless, slower (blocks copied in each step)"));
        for n in [6u32, 3, 0] {
            m.push(mv("offload.gpu_blocks", n.to_string(), 0.0, "lossless, slower as fewer blocks stay on the GPU"));
        }
    } else if knobs.offload.gpu_blocks != Some(0) || knobs.offload.mode != OffloadMode::Stream {
        m.push(Move {
            changes: vec![("offload.mode", "stream".into()), ("offload.gpu_blocks", "0".into())],
            quality_loss: 0.0,
            cost: "lossless, weights read from the file per block each step",
        });
    }
    let unet = knobs.precision.get(Component::Unet).resolve(knobs.device);
    for (p, loss) in [
        (Precision::F16, 0.5),
        (Precision::Q8_0, 1.0),
        (Precision::Q6K, 2.0),
        (Precision::Q5K, 3.0),
        (Precision::Q4K, 4.0),
    ] {
        if p.bits_per_weight() < unet.bits_per_weight() {
            m.push(mv("precision.unet", p.to_string(), loss, "smaller weights, some quality loss (check with A/B)"));
        }
    }
    for c in ["precision.text", "precision.vae"] {
        let cur = knobs.precision.get(c.trim_start_matches("precision."));
        if Precision::F16.bits_per_weight() < cur.resolve(knobs.device).bits_per_weight() {
            m.push(mv(c, "f16".into(), 0.3, "half-size weights, tiny quality loss"));
        }
    }
    m
}

fn busiest(devs: &[DevicePlan]) -> u64 {
    devs.iter().map(|d| d.total_bytes).max().unwrap_or(0)
}

/// Up to three ways to fit: single moves that fit alone (least quality loss first), else the
/// cumulative ladder of moves in that order, stopped at the first point that fits.
fn suggest(shape: &ModelShape, knobs: &Knobs, req: &Request, budgets: &Budgets) -> Vec<Suggestion> {
    let mut all = moves(knobs, req);
    all.sort_by(|a, b| a.quality_loss.total_cmp(&b.quality_loss));
    let try_knobs = |k: &Knobs| {
        let devs = predict(shape, k, req, budgets);
        (devs.iter().all(DevicePlan::fits), busiest(&devs))
    };
    let mut out: Vec<Suggestion> = Vec::new();
    let apply = |k: &mut Knobs, m: &Move| m.changes.iter().all(|(key, value)| k.set(key, value).is_ok());
    let owned = |m: &Move| m.changes.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<Vec<_>>();
    for m in &all {
        let mut k = *knobs;
        if !apply(&mut k, m) {
            continue;
        }
        let (fits, total) = try_knobs(&k);
        // One suggestion per knob: the mildest value that fits.
        if fits && !out.iter().any(|s| s.changes[0].0 == m.changes[0].0) {
            out.push(Suggestion {
                changes: owned(m),
                total_bytes: total,
                cost: m.cost.to_string(),
                quality_loss: m.quality_loss,
            });
        }
    }
    if out.is_empty() {
        let mut k = *knobs;
        let mut changes: Vec<(String, String)> = Vec::new();
        let mut loss: f32 = 0.0;
        for m in &all {
            if !apply(&mut k, m) {
                continue;
            }
            for (key, value) in owned(m) {
                changes.retain(|c| c.0 != key);
                changes.push((key, value));
            }
            loss = loss.max(m.quality_loss);
            let (fits, total) = try_knobs(&k);
            if fits {
                out.push(Suggestion {
                    changes,
                    total_bytes: total,
                    cost: "several knobs together".into(),
                    quality_loss: loss,
                });
                break;
            }
        }
    }
    out.truncate(3);
    out
}

#[cfg(test)]
mod tests;
