//! The memory knobs — device, precision per component, offload, slicing — and the noise source.
//!
//! The same words are used by the GUI, the CLI and the profile. Every knob can be set by its
//! profile name with [`Knobs::set`] (`precision.unet = q4k`, `slicing.attention_slice = 16`), which
//! is the one mechanism behind the CLI flags, `ab`'s `--a/--b` lists and the GUI.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::families::ComponentSpec;

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
        chain.iter().copied().find(|p| row_len > 0 && row_len.is_multiple_of(p.block().0)).unwrap_or(Precision::F16)
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

impl AsRef<str> for Component {
    fn as_ref(&self) -> &str {
        self.name()
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

/// A component's name as knobs key it (`text`, `unet`, `vae`, `text_2`, `lm`, …; each family
/// declares its own): up to [`Name::MAX`] bytes of lowercase ASCII letters, digits and `_`, held
/// inline so that knobs stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name {
    len: u8,
    bytes: [u8; Name::MAX],
}

impl Name {
    /// The longest name.
    pub const MAX: usize = 15;

    /// A name from text (dashes read as underscores, any case).
    ///
    /// # Errors
    /// Empty, too long, or a character other than a letter, digit or `_`.
    pub fn new(s: &str) -> Result<Name> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        let ok = !s.is_empty()
            && s.len() <= Self::MAX
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::invalid(format!(
                "component '{s}': a component name is 1–{} letters, digits or _",
                Self::MAX
            )));
        }
        let mut bytes = [0; Self::MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Name { len: s.len() as u8, bytes })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // only ASCII is ever stored
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// One setting per component, keyed by the family's component names: `all` for every component
/// not named, and the named ones that differ from it. Written in profiles as a table (`all` when
/// it is not the default, then each name), so version-1 profiles' `text`/`unet`/`vae` keys read
/// with their meaning. Up to [`PerComponent::MAX`] names, held inline (knobs stay `Copy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PerComponent<T> {
    all: T,
    /// Sorted by name; only settings that differ from `all`.
    named: [Option<(Name, T)>; PerComponent::<()>::MAX],
}

impl PerComponent<()> {
    /// The most components one set of knobs names.
    pub const MAX: usize = 8;
}

impl<T: Copy + Default + PartialEq> PerComponent<T> {
    /// The same setting for every component.
    pub fn all(v: T) -> Self {
        Self { all: v, named: [None; PerComponent::<()>::MAX] }
    }

    /// The setting of every component not named.
    pub fn fallback(&self) -> T {
        self.all
    }

    /// The setting of component `c`.
    pub fn get(&self, c: impl AsRef<str>) -> T {
        let c = c.as_ref();
        self.named().find(|(n, _)| n.as_str() == c).map_or(self.all, |(_, v)| v)
    }

    /// Sets component `c`'s setting.
    ///
    /// # Errors
    /// A name that is not one ([`Name::new`]), or more than [`PerComponent::MAX`] named.
    pub fn set(&mut self, c: impl AsRef<str>, v: T) -> Result<()> {
        let name = Name::new(c.as_ref())?;
        let mut entries: Vec<(Name, T)> = self.named().filter(|(n, _)| *n != name).collect();
        if v != self.all {
            entries.push((name, v));
        }
        self.store(entries)
    }

    /// The settings in a few words: `q4k`, or `auto · unet q8_0 · text f16`.
    pub fn describe(&self) -> String
    where
        T: fmt::Display,
    {
        let mut s = self.all.to_string();
        for (n, v) in self.named() {
            s.push_str(&format!(" · {n} {v}"));
        }
        s
    }

    /// Sets every component to `v` (naming none).
    pub fn set_all(&mut self, v: T) {
        *self = Self::all(v);
    }

    /// The components named, with their settings, by name.
    pub fn named(&self) -> impl Iterator<Item = (Name, T)> + '_ {
        self.named.iter().flatten().copied()
    }

    /// The names set here that are not in `components`.
    pub fn unknown<'a>(&'a self, components: &'a [&str]) -> impl Iterator<Item = Name> + 'a {
        self.named().map(|(n, _)| n).filter(|n| !components.contains(&n.as_str()))
    }

    /// Renames component `from` to `to` (aliases to a family's own names); `to`'s own setting,
    /// if any, wins.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let Some(v) = self.named().find(|(n, _)| n.as_str() == from).map(|(_, v)| v) else {
            return Ok(());
        };
        let keep = self.named().any(|(n, _)| n.as_str() == to);
        let entries: Vec<(Name, T)> = self.named().filter(|(n, _)| n.as_str() != from).collect();
        self.store(entries)?;
        if !keep { self.set(to, v) } else { Ok(()) }
    }

    /// The same settings written without `all` when every one of `components` is set alike:
    /// `all` then holds that setting, so two ways of saying "q4k everywhere" compare equal.
    pub fn collapsed(&self, components: &[&str]) -> Self {
        let mut values = components.iter().map(|c| self.get(c));
        match values.next() {
            Some(first) if values.all(|v| v == first) && self.unknown(components).next().is_none() => Self::all(first),
            _ => *self,
        }
    }

    fn store(&mut self, mut entries: Vec<(Name, T)>) -> Result<()> {
        if entries.len() > PerComponent::<()>::MAX {
            return Err(Error::invalid(format!(
                "more than {} components named in one knob",
                PerComponent::<()>::MAX
            )));
        }
        entries.sort_by_key(|e| e.0);
        self.named = [None; PerComponent::<()>::MAX];
        for (slot, e) in self.named.iter_mut().zip(entries) {
            *slot = Some(e);
        }
        Ok(())
    }
}

impl<T: Serialize + Copy + Default + PartialEq> Serialize for PerComponent<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let write_all = self.all != T::default();
        let mut m = s.serialize_map(None)?;
        if write_all {
            m.serialize_entry("all", &self.all)?;
        }
        for (n, v) in self.named() {
            m.serialize_entry(n.as_str(), &v)?;
        }
        m.end()
    }
}

impl<'de, T: Deserialize<'de> + Copy + Default + PartialEq> Deserialize<'de> for PerComponent<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, T>::deserialize(d)?;
        let mut out = Self::all(map.get("all").copied().unwrap_or_default());
        for (k, v) in map.iter().filter(|(k, _)| *k != "all") {
            out.set(k, *v).map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

/// Precision per component.
pub type PrecisionKnobs = PerComponent<Precision>;

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

/// Offload knobs: where each component lives, and how many of the family's offloadable units
/// (the UNet's blocks, a language model's layers) stay resident.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Offload {
    /// How many offloadable units stay on the GPU; `None` means all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_blocks: Option<u32>,
    /// What happens to the other units.
    pub mode: OffloadMode,
    /// Where each component lives, by name (in profiles, beside `gpu_blocks` and `mode`).
    #[serde(flatten)]
    pub placement: PerComponent<Placement>,
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
    /// What a model of a family with `components` loaded with `self` must read again to hold
    /// its weights as `other` says: `None` when the whole model must be loaded again (another
    /// device or rng), else the components whose precision or placement differ (empty: only
    /// slicing changed, which a loaded family takes in place, [`crate::families::Family::retune`]).
    pub fn components_to_reread(&self, other: &Knobs, components: &[ComponentSpec]) -> Option<Vec<&'static str>> {
        if (self.device, self.rng) != (other.device, other.rng) {
            return None;
        }
        let d = self.device;
        let (a, b) = (&self.offload, &other.offload);
        let placed_alike = |c: &ComponentSpec| {
            let units_alike = c.units.is_none() || (a.gpu_blocks, a.mode) == (b.gpu_blocks, b.mode);
            units_alike && a.placement.get(c.name).resolve(d) == b.placement.get(c.name).resolve(d)
        };
        // `auto` is the precision it resolves to, except where that is f16: a family's config may
        // keep an `auto` component in f32 there (SD's VAE, `force_upcast`), so only the same
        // name counts as alike
        let stored_alike = |c: &ComponentSpec| {
            let (pa, pb) = (self.precision.get(c.name), other.precision.get(c.name));
            pa == pb || (pa.resolve(d) == pb.resolve(d) && pa.resolve(d) != Precision::F16)
        };
        Some(components.iter().filter(|c| !placed_alike(c) || !stored_alike(c)).map(|c| c.name).collect())
    }

    /// These knobs in the words of a family with `components`: other names for a component
    /// (`text_encoder`) become its own (`text`), and what every component is set to the same
    /// way is written once (`precision = q4k`), so equal settings compare equal.
    ///
    /// # Errors
    /// A component the family does not have, or a placement for one it places by its units;
    /// one line naming the knob, `model` and the components it has.
    pub fn for_family(&self, components: &[ComponentSpec], model: &str) -> Result<Knobs> {
        let mut k = *self;
        for c in components {
            for alias in c.aliases {
                k.precision.rename(alias, c.name)?;
                k.offload.placement.rename(alias, c.name)?;
            }
        }
        let names: Vec<&str> = components.iter().map(|c| c.name).collect();
        let has = names.join(", ");
        if let Some(n) = k.precision.unknown(&names).next() {
            return Err(Error::invalid(format!("precision.{n}: {model} has no component '{n}' (it has {has})")));
        }
        if let Some(n) = k.offload.placement.unknown(&names).next() {
            return Err(Error::invalid(format!("offload.{n}: {model} has no component '{n}' (it has {has})")));
        }
        for c in components.iter().filter(|c| !c.placeable) {
            if k.offload.placement.named().any(|(n, _)| n.as_str() == c.name) {
                let how = match c.units {
                    Some(units) => format!("its {units} are placed with offload.gpu_blocks and offload.mode"),
                    None => "it always lives on the run's device".to_string(),
                };
                return Err(Error::invalid(format!("offload.{}: the {} cannot be placed on its own; {how}", c.name, c.label)));
            }
        }
        k.precision = k.precision.collapsed(&names);
        k.offload.placement = k.offload.placement.collapsed(&names);
        Ok(k)
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

    /// Sets one knob by its profile name: `device`, `rng`, `precision` (every component),
    /// `precision.NAME` (one component, by the family's name: `text`, `unet`, `vae`, …),
    /// `offload.gpu_blocks` (a number or `all`), `offload.mode`, `offload.NAME` (where a component
    /// lives), `slicing.attention_slice`, `slicing.vae_tile`. Dashes and underscores are
    /// interchangeable. Which names a model has is checked when it is loaded or planned
    /// ([`Knobs::for_family`]).
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
            ("precision", None | Some("all")) => self.precision.set_all(value.parse()?),
            ("precision", Some(c)) => self.precision.set(c, value.parse()?)?,
            ("offload", Some("gpu_blocks")) | ("gpu_blocks", None) => {
                self.offload.gpu_blocks = if value.eq_ignore_ascii_case("all") {
                    None
                } else {
                    Some(parse_count(&key, value)?)
                }
            }
            ("offload", Some("mode")) | ("mode", None) => self.offload.mode = value.parse()?,
            ("offload", Some("all")) => self.offload.placement.set_all(value.parse()?),
            ("offload", Some(c)) => self.offload.placement.set(c, value.parse()?)?,
            ("slicing", Some("attention_slice")) | ("attention_slice", None) => {
                self.slicing.attention_slice = parse_count(&key, value)?
            }
            ("slicing", Some("vae_tile")) | ("vae_tile", None) => {
                self.slicing.vae_tile = parse_count(&key, value)?
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown knob '{key}': expected device, rng, precision[.COMPONENT], \
                     offload.gpu_blocks|mode|COMPONENT, slicing.attention_slice|vae_tile"
                )));
            }
        }
        Ok(())
    }

    /// The value of one knob by its profile name, as [`Knobs::set`] takes it; `None` for a key
    /// that is not a knob.
    pub fn get(&self, key: &str) -> Option<String> {
        let key = key.trim().to_ascii_lowercase().replace('-', "_");
        Some(match key.split_once('.').unwrap_or((key.as_str(), "")) {
            ("device", "") => self.device.to_string(),
            ("rng", "") => self.rng.to_string(),
            ("precision", "" | "all") => self.precision.fallback().to_string(),
            ("precision", c) => self.precision.get(c).to_string(),
            ("offload", "gpu_blocks") => self.offload.gpu_blocks.map_or("all".into(), |n| n.to_string()),
            ("offload", "mode") => self.offload.mode.to_string(),
            ("offload", "all") => self.offload.placement.fallback().to_string(),
            ("offload", c) if !c.is_empty() => self.offload.placement.get(c).to_string(),
            ("slicing", "attention_slice") => self.slicing.attention_slice.to_string(),
            ("slicing", "vae_tile") => self.slicing.vae_tile.to_string(),
            _ => return None,
        })
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

    /// The knobs as `key=value` pairs with profile names, the inverse of [`Knobs::set`] (applied
    /// in order): every component's setting first, then the components named apart.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("device".into(), self.device.to_string()),
            ("rng".into(), self.rng.to_string()),
            ("precision".into(), self.precision.fallback().to_string()),
        ];
        for (c, p) in self.precision.named() {
            v.push((format!("precision.{c}"), p.to_string()));
        }
        v.push((
            "offload.gpu_blocks".into(),
            self.offload.gpu_blocks.map_or("all".into(), |n| n.to_string()),
        ));
        v.push(("offload.mode".into(), self.offload.mode.to_string()));
        v.push(("offload.all".into(), self.offload.placement.fallback().to_string()));
        for (c, p) in self.offload.placement.named() {
            v.push((format!("offload.{c}"), p.to_string()));
        }
        v.push(("slicing.attention_slice".into(), self.slicing.attention_slice.to_string()));
        v.push(("slicing.vae_tile".into(), self.slicing.vae_tile.to_string()));
        v
    }

    /// The keys whose values differ between two sets of knobs, by profile name (a component
    /// named in either is compared by its setting in both).
    pub fn diff(&self, other: &Knobs) -> Vec<String> {
        // in `to_pairs` order: a name only one side has goes after the other names of its section
        let mut keys: Vec<String> = self.to_pairs().into_iter().map(|p| p.0).collect();
        for (k, _) in other.to_pairs() {
            if !keys.contains(&k) {
                let section = k.split('.').next().unwrap_or("");
                let at = keys.iter().rposition(|x| x.split('.').next() == Some(section)).map_or(keys.len(), |i| i + 1);
                keys.insert(at, k);
            }
        }
        keys.into_iter().filter(|k| self.get(k) != other.get(k)).collect()
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
        assert_eq!(k.precision.get("unet"), Precision::Q4K);
        assert_eq!(k.precision.get("vae"), Precision::F32);
        assert_eq!(k.offload.gpu_blocks, Some(4));
        assert_eq!(k.offload.mode, OffloadMode::Stream);
        assert_eq!(k.slicing.vae_tile, 32);
        assert_eq!(
            Knobs::default().diff(&k),
            [
                "device",
                "precision",
                "precision.vae",
                "offload.gpu_blocks",
                "offload.mode",
                "offload.text",
                "slicing.attention_slice",
                "slicing.vae_tile"
            ]
        );
    }

    /// Per-component knobs by the family's names: `precision` sets every component and names
    /// none; one set like the rest is not named; TOML writes `all` (when set) and the names, and
    /// reads version 1's `text`/`unet`/`vae` keys with their meaning; aliases and collapsing
    /// follow the family's declaration, and a name it does not have is one line naming it.
    #[test]
    fn per_component_knobs_by_name() {
        let mut k = Knobs::default();
        k.set("precision", "q4k").unwrap();
        k.set("precision.text_encoder", "f16").unwrap();
        k.set("precision.unet", "q4k").unwrap();
        assert_eq!(k.precision.named().map(|(n, p)| (n.to_string(), p)).collect::<Vec<_>>(), [("text_encoder".to_string(), Precision::F16)]);
        let toml = toml::to_string(&k).unwrap();
        assert!(toml.contains("[precision]\nall = \"q4k\"\ntext_encoder = \"f16\""), "{toml}");
        let sd = crate::families::latent_diffusion::COMPONENTS;
        let canonical = k.for_family(&sd, "m").unwrap();
        assert_eq!((canonical.precision.get("text"), canonical.precision.get("vae")), (Precision::F16, Precision::Q4K));
        assert!(canonical.precision.named().all(|(n, _)| n.as_str() == "text"));

        let v1: Knobs = toml::from_str("[precision]\ntext = \"f32\"\nunet = \"f32\"\nvae = \"f32\"\n[offload]\nmode = \"split\"\ntext = \"cpu\"\nvae = \"auto\"\n").unwrap();
        assert_eq!(v1.precision.get("unet"), Precision::F32);
        assert_eq!(v1.offload.placement.get("text"), Placement::Cpu);
        assert_eq!(v1.for_family(&sd, "m").unwrap().precision, Knobs::default().reference().precision, "all three f32 is the reference's f32");

        let mut odd = Knobs::default();
        odd.set("precision.text_3", "f16").unwrap();
        let e = odd.for_family(&sd, "builtin:shapes").unwrap_err().to_string();
        assert_eq!(e, "precision.text_3: builtin:shapes has no component 'text_3' (it has text, unet, vae)");
        let mut placed = Knobs::default();
        placed.set("offload.unet", "cpu").unwrap();
        let e = placed.for_family(&sd, "m").unwrap_err().to_string();
        assert!(e.starts_with("offload.unet: the UNet cannot be placed on its own; its blocks are placed with offload.gpu_blocks"), "{e}");
        assert!(Knobs::default().set("precision.no way", "f16").is_err());
        let mut full = Knobs::default();
        for i in 0..PerComponent::<()>::MAX {
            full.set(&format!("precision.c{i}"), "f16").unwrap();
        }
        assert!(full.set("precision.one_more", "f16").is_err());
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
        let sd = crate::families::latent_diffusion::COMPONENTS;
        let again = |a: &Knobs, b: &Knobs| a.components_to_reread(b, &sd);
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
