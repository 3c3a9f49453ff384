//! The memory knobs — device, precision per component, offload, slicing — and the noise source.
//!
//! The same words are used by the GUI, the CLI and the profile. Every knob can be set by its
//! profile name with [`Knobs::set`] (`precision.unet = q4k`, `slicing.attention_slice = 16`), which
//! is the one mechanism behind the CLI flags, `ab`'s `--a/--b` lists and the GUI.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the computation runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceKind {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// NVIDIA GPU number N (needs the `cuda` feature).
    Cuda(u32),
    /// Apple GPU (needs the `metal` feature).
    Metal,
}

impl DeviceKind {
    /// True for any GPU.
    pub fn is_gpu(self) -> bool {
        !matches!(self, DeviceKind::Cpu)
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceKind::Metal => f.write_str("metal"),
        }
    }
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda(0)),
            "metal" | "mps" => Ok(DeviceKind::Metal),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceKind::Cuda)
                    .map_err(|_| Error::invalid(format!("device '{s}': expected cuda:N with N a number"))),
                None => Err(Error::invalid(format!("device '{s}': expected cpu, cuda:N or metal"))),
            },
        }
    }
}

impl TryFrom<String> for DeviceKind {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceKind> for String {
    fn from(d: DeviceKind) -> String {
        d.to_string()
    }
}

/// Storage precision of a component's weights.
///
/// The quantized types are GGML's: weights are stored in blocks with a scale, linear layers run
/// quantized matmuls and convolution weights are dequantized per layer at use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    /// f16 on a GPU, f32 on the CPU.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
    Q8_0,
    Q6K,
    Q5K,
    Q4K,
    Q4_0,
}

impl Precision {
    /// Every concrete precision, widest first (the order quality is expected to fall in).
    pub const CONCRETE: [Precision; 8] = [
        Precision::F32,
        Precision::F16,
        Precision::Bf16,
        Precision::Q8_0,
        Precision::Q6K,
        Precision::Q5K,
        Precision::Q4K,
        Precision::Q4_0,
    ];

    /// The profile/CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Q8_0 => "q8_0",
            Precision::Q6K => "q6k",
            Precision::Q5K => "q5k",
            Precision::Q4K => "q4k",
            Precision::Q4_0 => "q4_0",
        }
    }

    /// `auto` made concrete for a device: f16 on a GPU, f32 on the CPU.
    pub fn resolve(self, device: DeviceKind) -> Precision {
        match self {
            Precision::Auto if device.is_gpu() => Precision::F16,
            Precision::Auto => Precision::F32,
            p => p,
        }
    }

    /// True for the GGML block-quantized types.
    pub fn is_quantized(self) -> bool {
        matches!(
            self,
            Precision::Q8_0 | Precision::Q6K | Precision::Q5K | Precision::Q4K | Precision::Q4_0
        )
    }

    /// The GGML type this precision stores weights as (`Auto` as f32, the widest it can resolve
    /// to): its entry in the one type table, [`crate::formats::ggml::GGML_TYPES`].
    pub fn ggml(self) -> crate::formats::ggml::GgmlType {
        let name = match self {
            Precision::Auto | Precision::F32 => "F32",
            Precision::F16 => "F16",
            Precision::Bf16 => "BF16",
            Precision::Q8_0 => "Q8_0",
            Precision::Q6K => "Q6_K",
            Precision::Q5K => "Q5_K",
            Precision::Q4K => "Q4_K",
            Precision::Q4_0 => "Q4_0",
        };
        crate::formats::ggml::GgmlType::from_name(name).expect("every precision is in the GGML type table")
    }

    /// (elements per block, bytes per block), from the GGML type table; plain floats are blocks
    /// of one element.
    pub fn block(self) -> (u64, u64) {
        let t = self.ggml();
        (t.block_elements, t.block_bytes)
    }

    /// Real bits per weight of the storage format (block scales included).
    pub fn bits_per_weight(self) -> f64 {
        let (n, b) = self.block();
        b as f64 * 8.0 / n as f64
    }

    /// Bytes to store `elements` weights whose rows are `row_len` long at precision `self`, after
    /// the per-row fallback of [`Precision::for_row`].
    pub fn bytes_for(self, elements: u64, row_len: u64) -> u64 {
        let (n, b) = self.for_row(row_len).block();
        elements.div_ceil(n).saturating_mul(b)
    }

    /// The type a weight matrix with rows of `row_len` elements is really stored in when its
    /// component asks for `self`. Quantized types need rows that are whole blocks (256 for the
    /// k-quants, 32 for q8_0/q4_0); as llama.cpp does, a row that does not fit falls back to a
    /// type of similar bits that fits (q4k → q4_0, q5k and q6k → q8_0), and to f16 when not even
    /// a 32-element block fits. Float precisions are returned unchanged.
    pub fn for_row(self, row_len: u64) -> Precision {
        let chain: &[Precision] = match self {
            Precision::Q4K => &[Precision::Q4K, Precision::Q4_0],
            Precision::Q5K => &[Precision::Q5K, Precision::Q8_0],
            Precision::Q6K => &[Precision::Q6K, Precision::Q8_0],
            Precision::Q8_0 => &[Precision::Q8_0],
            Precision::Q4_0 => &[Precision::Q4_0],
            float => return float,
        };
        chain.iter().copied().find(|p| row_len > 0 && row_len % p.block().0 == 0).unwrap_or(Precision::F16)
    }

    /// The type one float tensor named `name` of `shape` is stored in when its component asks for
    /// `self`: the one rule the loaders (`nn::Weights`) and the planner
    /// (`formats::tensor_bytes_at`) share. Under a quantized type, 1-D tensors (biases, norms)
    /// stay f32, embedding tables (`…embeddings.…`) stay f16 (they are looked up, never
    /// multiplied), and matrices follow [`Precision::for_row`] with a row being everything after
    /// the first dimension (`in` of a linear, `in × kh × kw` of a convolution).
    pub fn for_tensor(self, name: &str, shape: &[u64]) -> Precision {
        if !self.is_quantized() {
            return self;
        }
        if shape.len() <= 1 {
            return Precision::F32;
        }
        if name.starts_with("embeddings.") || name.contains(".embeddings.") {
            return Precision::F16;
        }
        // Saturating: a hostile header's shape may multiply past u64 (such a row fits no block).
        self.for_row(shape[1..].iter().fold(1u64, |a, &d| a.saturating_mul(d)))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let p = match norm.as_str() {
            "auto" => Precision::Auto,
            "f32" | "fp32" | "float32" => Precision::F32,
            "f16" | "fp16" | "float16" | "half" => Precision::F16,
            "bf16" | "bfloat16" => Precision::Bf16,
            "q8_0" | "q8" => Precision::Q8_0,
            "q6k" | "q6_k" => Precision::Q6K,
            "q5k" | "q5_k" => Precision::Q5K,
            "q4k" | "q4_k" => Precision::Q4K,
            "q4_0" => Precision::Q4_0,
            _ => {
                return Err(Error::invalid(format!(
                    "precision '{s}': expected one of auto, f32, f16, bf16, q8_0, q6k, q5k, q4k, q4_0"
                )));
            }
        };
        Ok(p)
    }
}

impl TryFrom<String> for Precision {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Precision> for String {
    fn from(p: Precision) -> String {
        p.name().to_string()
    }
}

/// A separately placed part of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The text encoder (CLIP).
    Text,
    /// The denoiser (UNet).
    Unet,
    /// The autoencoder (VAE).
    Vae,
}

impl Component {
    /// All components, in pipeline order.
    pub const ALL: [Component; 3] = [Component::Text, Component::Unet, Component::Vae];

    /// The profile/CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Component::Text => "text",
            Component::Unet => "unet",
            Component::Vae => "vae",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Component {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "text_encoder" | "clip" => Ok(Component::Text),
            "unet" | "denoiser" => Ok(Component::Unet),
            "vae" | "autoencoder" => Ok(Component::Vae),
            _ => Err(Error::invalid(format!("component '{s}': expected text, unet or vae"))),
        }
    }
}

/// Precision per component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct PrecisionKnobs {
    pub text: Precision,
    pub unet: Precision,
    pub vae: Precision,
}

impl PrecisionKnobs {
    /// The same precision for every component.
    pub fn all(p: Precision) -> Self {
        Self { text: p, unet: p, vae: p }
    }

    /// The precision of one component.
    pub fn get(&self, c: Component) -> Precision {
        match c {
            Component::Text => self.text,
            Component::Unet => self.unet,
            Component::Vae => self.vae,
        }
    }

    /// Sets the precision of one component.
    pub fn set(&mut self, c: Component, p: Precision) {
        match c {
            Component::Text => self.text = p,
            Component::Unet => self.unet = p,
            Component::Vae => self.vae = p,
        }
    }
}

/// What happens to the denoiser blocks that are not resident on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadMode {
    /// Computed on the CPU.
    #[default]
    Split,
    /// Held in RAM (or the memory-mapped file) and copied to the compute device just before use.
    Stream,
}

impl FromStr for OffloadMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "split" => Ok(OffloadMode::Split),
            "stream" => Ok(OffloadMode::Stream),
            _ => Err(Error::invalid(format!("offload mode '{s}': expected split or stream"))),
        }
    }
}

impl fmt::Display for OffloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OffloadMode::Split => "split",
            OffloadMode::Stream => "stream",
        })
    }
}

/// Where a whole component lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// On the run's device.
    #[default]
    Auto,
    /// On the CPU, whatever the run's device.
    Cpu,
    /// On the run's GPU.
    Gpu,
}

impl Placement {
    /// The device a component with this placement lives on, for a run on `device`.
    pub fn resolve(self, device: DeviceKind) -> DeviceKind {
        match self {
            Placement::Cpu => DeviceKind::Cpu,
            Placement::Auto | Placement::Gpu => device,
        }
    }
}

impl FromStr for Placement {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Placement::Auto),
            "cpu" => Ok(Placement::Cpu),
            "gpu" | "cuda" | "metal" => Ok(Placement::Gpu),
            _ => Err(Error::invalid(format!("placement '{s}': expected auto, cpu or gpu"))),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Auto => "auto",
            Placement::Cpu => "cpu",
            Placement::Gpu => "gpu",
        })
    }
}

/// Offload knobs: component placement and the denoiser's resident blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Offload {
    /// How many denoiser blocks stay on the GPU; `None` means all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_blocks: Option<u32>,
    /// What happens to the other blocks.
    pub mode: OffloadMode,
    /// Where the text encoder lives.
    pub text: Placement,
    /// Where the autoencoder lives.
    pub vae: Placement,
}

/// Slicing knobs; 0 means off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Slicing {
    /// Attention computed in chunks of this many query rows.
    pub attention_slice: u32,
    /// VAE decode in tiles of this many latent pixels, exact (`vae_tiling`); 0 = not set.
    pub vae_tile: u32,
}

/// Where every random number of a run comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RngKind {
    /// Reproduces `torch.randn(.., generator=torch.Generator().manual_seed(seed))` on the CPU.
    #[default]
    #[serde(rename = "torch-cpu")]
    TorchCpu,
}

impl FromStr for RngKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "torch-cpu" | "torch" => Ok(RngKind::TorchCpu),
            _ => Err(Error::invalid(format!("rng '{s}': expected torch-cpu"))),
        }
    }
}

impl fmt::Display for RngKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("torch-cpu")
    }
}

/// All knobs of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Knobs {
    pub device: DeviceKind,
    pub rng: RngKind,
    pub precision: PrecisionKnobs,
    pub offload: Offload,
    pub slicing: Slicing,
}

impl Knobs {
    /// What a model loaded with `self` must read again to hold its weights as `other` says:
    /// `None` when the whole model must be loaded again (another device or rng), else the
    /// components whose precision or placement differ (empty: only slicing changed, which a
    /// loaded family takes in place, [`crate::families::Family::retune`]).
    pub fn components_to_reread(&self, other: &Knobs) -> Option<Vec<Component>> {
        if (self.device, self.rng) != (other.device, other.rng) {
            return None;
        }
        let d = self.device;
        let (a, b) = (&self.offload, &other.offload);
        let placed_alike = |c: Component| match c {
            Component::Text => a.text.resolve(d) == b.text.resolve(d),
            Component::Unet => (a.gpu_blocks, a.mode) == (b.gpu_blocks, b.mode),
            Component::Vae => a.vae.resolve(d) == b.vae.resolve(d),
        };
        // `auto` is the precision it resolves to, except where that is f16: a family's config may
        // keep an `auto` component in f32 there (SD's VAE, `force_upcast`), so only the same
        // name counts as alike
        let stored_alike = |c: Component| {
            let (pa, pb) = (self.precision.get(c), other.precision.get(c));
            pa == pb || (pa.resolve(d) == pb.resolve(d) && pa.resolve(d) != Precision::F16)
        };
        Some(Component::ALL.into_iter().filter(|&c| !placed_alike(c) || !stored_alike(c)).collect())
    }

    /// The full-precision reference a quantized or sliced run is compared with: every component in
    /// f32, everything resident, no slicing; the same device and rng.
    pub fn reference(&self) -> Knobs {
        Knobs {
            device: self.device,
            rng: self.rng,
            precision: PrecisionKnobs::all(Precision::F32),
            offload: Offload::default(),
            slicing: Slicing::default(),
        }
    }

    /// Sets one knob by its profile name: `device`, `rng`, `precision` (all components),
    /// `precision.text|unet|vae`, `offload.gpu_blocks` (a number or `all`), `offload.mode`,
    /// `offload.text`, `offload.vae`, `slicing.attention_slice`, `slicing.vae_tile`.
    /// Dashes and underscores are interchangeable, and `text_encoder` means `text`.
    ///
    /// # Errors
    /// An unknown key or a value that does not parse.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.trim().to_ascii_lowercase().replace('-', "_");
        let value = value.trim();
        let (section, field) = match key.split_once('.') {
            Some((s, f)) => (s, Some(f)),
            None => (key.as_str(), None),
        };
        match (section, field) {
            ("device", None) => self.device = value.parse()?,
            ("rng", None) => self.rng = value.parse()?,
            ("precision", None) => self.precision = PrecisionKnobs::all(value.parse()?),
            ("precision", Some(c)) => self.precision.set(c.parse()?, value.parse()?),
            ("offload", Some("gpu_blocks")) | ("gpu_blocks", None) => {
                self.offload.gpu_blocks = if value.eq_ignore_ascii_case("all") {
                    None
                } else {
                    Some(parse_count(&key, value)?)
                }
            }
            ("offload", Some("mode")) | ("mode", None) => self.offload.mode = value.parse()?,
            ("offload", Some(c)) => match c.parse::<Component>()? {
                Component::Text => self.offload.text = value.parse()?,
                Component::Vae => self.offload.vae = value.parse()?,
                Component::Unet => {
                    return Err(Error::invalid(
                        "offload.unet: place the denoiser with offload.gpu_blocks and offload.mode",
                    ));
                }
            },
            ("slicing", Some("attention_slice")) | ("attention_slice", None) => {
                self.slicing.attention_slice = parse_count(&key, value)?
            }
            ("slicing", Some("vae_tile")) | ("vae_tile", None) => {
                self.slicing.vae_tile = parse_count(&key, value)?
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown knob '{key}': expected device, rng, precision[.text|.unet|.vae], \
                     offload.gpu_blocks|mode|text|vae, slicing.attention_slice|vae_tile"
                )));
            }
        }
        Ok(())
    }

    /// Applies a comma-separated list of `key=value` pairs with [`Knobs::set`], in order.
    /// `prefix` is put before keys that have no section (`precision` for `--precision
    /// unet=q4k`); a bare value without `=` sets the prefix itself (`--precision q4k`).
    ///
    /// # Errors
    /// As [`Knobs::set`], or a pair with no `=` and no prefix.
    pub fn apply_list(&mut self, prefix: Option<&str>, list: &str) -> Result<()> {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match (item.split_once('='), prefix) {
                (Some((k, v)), Some(p)) if !k.contains('.') => self.set(&format!("{p}.{k}"), v)?,
                (Some((k, v)), _) => self.set(k, v)?,
                (None, Some(p)) => self.set(p, item)?,
                (None, None) => {
                    return Err(Error::invalid(format!("'{item}': expected key=value")));
                }
            }
        }
        Ok(())
    }

    /// The knobs as `key=value` pairs with profile names, the inverse of [`Knobs::set`].
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut v = vec![("device".into(), self.device.to_string()), ("rng".into(), self.rng.to_string())];
        for c in Component::ALL {
            v.push((format!("precision.{c}"), self.precision.get(c).to_string()));
        }
        v.push((
            "offload.gpu_blocks".into(),
            self.offload.gpu_blocks.map_or("all".into(), |n| n.to_string()),
        ));
        v.push(("offload.mode".into(), self.offload.mode.to_string()));
        v.push(("offload.text".into(), self.offload.text.to_string()));
        v.push(("offload.vae".into(), self.offload.vae.to_string()));
        v.push(("slicing.attention_slice".into(), self.slicing.attention_slice.to_string()));
        v.push(("slicing.vae_tile".into(), self.slicing.vae_tile.to_string()));
        v
    }

    /// The keys whose values differ between two sets of knobs, by profile name.
    pub fn diff(&self, other: &Knobs) -> Vec<String> {
        self.to_pairs()
            .into_iter()
            .zip(other.to_pairs())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }
}

fn parse_count(key: &str, value: &str) -> Result<u32> {
    value
        .parse()
        .map_err(|_| Error::invalid(format!("{key} = '{value}': expected a whole number ≥ 0")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each knob set by name reads back through `to_pairs`, so set/to_pairs are inverses.
    #[test]
    fn set_and_pairs_round_trip() {
        let mut k = Knobs::default();
        k.apply_list(None, "device=cuda:1,precision=q4k,precision.vae=f32,offload.gpu_blocks=4").unwrap();
        k.apply_list(Some("offload"), "mode=stream,text=cpu").unwrap();
        k.apply_list(Some("slicing"), "attention_slice=16,vae-tile=32").unwrap();
        let mut back = Knobs::default();
        for (key, value) in k.to_pairs() {
            back.set(&key, &value).unwrap();
        }
        assert_eq!(k, back);
        assert_eq!(k.device, DeviceKind::Cuda(1));
        assert_eq!(k.precision.unet, Precision::Q4K);
        assert_eq!(k.precision.vae, Precision::F32);
        assert_eq!(k.offload.gpu_blocks, Some(4));
        assert_eq!(k.offload.mode, OffloadMode::Stream);
        assert_eq!(k.slicing.vae_tile, 32);
        assert_eq!(Knobs::default().diff(&k).len(), 9);
    }

    /// The per-tensor storage rule: block fallbacks, f32 vectors, f16 embedding tables.
    #[test]
    fn per_tensor_storage_rule() {
        use Precision as P;
        assert_eq!(P::Q4K.for_tensor("a.weight", &[320, 1280]), P::Q4K);
        assert_eq!(P::Q4K.for_tensor("a.weight", &[320, 320, 3, 3]), P::Q4_0); // 2880 = 32 × 90
        assert_eq!(P::Q5K.for_tensor("a.weight", &[8, 288]), P::Q8_0);
        assert_eq!(P::Q6K.for_tensor("a.weight", &[8, 64]), P::Q8_0);
        assert_eq!(P::Q8_0.for_tensor("a.weight", &[8, 4, 3, 3]), P::F16); // 36
        assert_eq!(P::Q4_0.for_tensor("a.weight", &[8, 4, 1, 1]), P::F16);
        assert_eq!(P::Q4K.for_tensor("a.bias", &[320]), P::F32);
        assert_eq!(P::Q4K.for_tensor("text_model.embeddings.token_embedding.weight", &[49408, 768]), P::F16);
        assert_eq!(P::Q4K.for_tensor("time_embedding.linear_1.weight", &[1280, 256]), P::Q4K);
        assert_eq!(P::F16.for_tensor("a.weight", &[8, 36]), P::F16);
        assert_eq!(P::Q4K.bytes_for(512, 256), 2 * 144);
        assert_eq!(P::Q4K.bytes_for(64, 32), 2 * 18);
    }

    /// A bare value after a prefix sets every component (`--precision q4k`).
    #[test]
    fn bare_precision_sets_all() {
        let mut k = Knobs::default();
        k.apply_list(Some("precision"), "q8_0").unwrap();
        assert_eq!(k.precision, PrecisionKnobs::all(Precision::Q8_0));
    }

    /// Unknown keys and bad values are errors that name them.
    #[test]
    fn bad_knobs_are_named() {
        let mut k = Knobs::default();
        assert!(k.set("precision.unet", "q3").unwrap_err().to_string().contains("q3"));
        assert!(k.set("slicing.foo", "1").unwrap_err().to_string().contains("slicing.foo"));
        assert!(k.set("device", "tpu").unwrap_err().to_string().contains("tpu"));
    }

    /// Bits per weight are the GGML formats' real ones, scales included.
    #[test]
    fn bits_per_weight_match_ggml() {
        assert_eq!(Precision::Q8_0.bits_per_weight(), 8.5);
        assert_eq!(Precision::Q4K.bits_per_weight(), 4.5);
        assert_eq!(Precision::Q6K.bits_per_weight(), 6.5625);
        assert_eq!(Precision::Q5K.bits_per_weight(), 5.5);
        assert_eq!(Precision::Q4K.bytes_for(512, 256), 288);
        // rows that are not whole k-quant blocks fall back to q4_0; not even 32-element ones, f16
        assert_eq!(Precision::Q4K.bytes_for(320, 320), 320 / 32 * 18);
        assert_eq!(Precision::Q4K.bytes_for(36, 36), 72);
    }

    /// Knobs survive a TOML round trip with the profile's section names.
    #[test]
    fn toml_round_trip() {
        let mut k = Knobs::default();
        k.apply_list(None, "precision.unet=q4k,offload.text=cpu,slicing.attention_slice=8").unwrap();
        let s = toml::to_string(&k).unwrap();
        assert!(s.contains("[precision]") && s.contains("unet = \"q4k\""), "{s}");
        let back: Knobs = toml::from_str(&s).unwrap();
        assert_eq!(back, k);
    }

    /// What a knob change makes a loaded model read again: nothing for slicing, or for `auto`
    /// against the f32 it means on the CPU; the component whose precision or placement changed;
    /// everything for another device. On a GPU, `auto` (f16, which a family's config may upcast)
    /// and an explicit f16 differ.
    #[test]
    fn what_a_knob_change_reads_again() {
        let with = |base: Knobs, changes: &str| {
            let mut k = base;
            k.apply_list(None, changes).unwrap();
            k
        };
        let cpu = Knobs::default();
        let again = |a: &Knobs, b: &Knobs| a.components_to_reread(b).map(|c| c.iter().map(|c| c.name()).collect::<Vec<_>>());
        assert_eq!(again(&cpu, &with(cpu, "slicing.vae_tile=32,slicing.attention_slice=64")), Some(vec![]));
        assert_eq!(again(&cpu, &with(cpu, "precision=f32,offload.vae=gpu")), Some(vec![]));
        assert_eq!(again(&cpu, &with(cpu, "precision.unet=q8_0")), Some(vec!["unet"]));
        assert_eq!(again(&cpu, &with(cpu, "offload.text=cpu,offload.gpu_blocks=3")), Some(vec!["unet"]));
        assert_eq!(again(&cpu, &with(cpu, "precision.vae=f16,precision.text=q4k")), Some(vec!["text", "vae"]));
        assert_eq!(again(&cpu, &with(cpu, "device=cuda:0")), None);
        let gpu = with(cpu, "device=cuda:0");
        assert_eq!(again(&gpu, &with(gpu, "offload.text=cpu")), Some(vec!["text"]));
        assert_eq!(again(&gpu, &with(gpu, "precision.vae=f16")), Some(vec!["vae"]));
        assert_eq!(again(&gpu, &with(gpu, "precision=f32")), Some(vec!["text", "unet", "vae"]));
    }
}
