//! Profiles: a run written down as versioned TOML so it can be run again.
//!
//! A [`Profile`] is the typed view of the file (model, request, knobs, build, result). Fields this
//! build does not know — keys added by a newer Headroom or by hand, in any section, and whole
//! unknown sections — are kept aside and written back on save, so a read → write round trip loses
//! nothing. The TOML side lives in `doc.rs`; this file holds the types, loading, saving and drift.

mod doc;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::knobs::Knobs;
use crate::request::Request;

pub use crate::fsutil::{sha256_file, write_atomic};

/// The profile format version this build writes and the newest it reads. Version 2 keys the
/// knobs by the family's component names (`[knobs.precision]` may hold `all` and any component,
/// `[knobs.offload]` places any component) and lists the components in `[model]`; version 1's
/// `text`/`unet`/`vae` keys read with the same meaning.
pub const PROFILE_VERSION: u32 = 2;

/// Which model a run used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelInfo {
    /// `builtin:shapes`, `builtin:melodies`, or a path to a file or diffusers folder.
    pub source: String,
    /// SHA-256 of the model (hex), the model's identity.
    pub sha256: String,
    /// The family that ran it, e.g. `latent-diffusion`.
    pub family: String,
    /// A name for people (file stem or the builtin's name).
    pub name: String,
    /// The model's components as its family names them (`text`, `unet`, `vae`), in pipeline
    /// order: the keys of `[knobs.precision]`, which lists each (version 2; empty in version 1).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// The request fields its family declares (`steps`, `seconds`, `top_k`, …): `[request]`
    /// holds these besides the prompt, seed, batch and noise every run has (version 2; empty in
    /// version 1, whose `[request]` holds every field).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// Which build of Headroom made a run, and the machine facts bit-exact output depends on (the
/// device is a knob, `knobs.device`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildInfo {
    /// The engine's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The git commit the engine was built from, or `unknown`.
    pub commit: String,
    /// candle-core's version (its kernels compute the run), or `unknown`.
    pub candle: String,
    /// Compute threads (CPU matmuls and reductions split their sums by thread); 0 = unknown.
    pub threads: u32,
    /// CPU SIMD features present (kernels pick code paths by them), e.g. `avx,avx2,f16c,fma`;
    /// `unknown` in profiles that predate this field.
    pub cpu_features: String,
    /// The build's target, `x86_64-linux`.
    pub target: String,
}

impl BuildInfo {
    /// This build and this machine: the crate version, the git commit recorded by
    /// `engine/build.rs`, candle's version, the compute threads, CPU features and target.
    pub fn current() -> Self {
        Self {
            version: crate::VERSION.to_string(),
            commit: option_env!("HEADROOM_GIT_COMMIT").unwrap_or("unknown").to_string(),
            candle: option_env!("HEADROOM_CANDLE_VERSION").unwrap_or("unknown").to_string(),
            threads: u32::try_from(candle_core::utils::get_num_threads()).unwrap_or(u32::MAX),
            cpu_features: cpu_features(),
            target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        }
    }
}

impl Default for BuildInfo {
    /// Unknown everything (what a profile without `[build]`, or an older one, records).
    fn default() -> Self {
        Self {
            version: "unknown".into(),
            commit: "unknown".into(),
            candle: "unknown".into(),
            threads: 0,
            cpu_features: "unknown".into(),
            target: "unknown".into(),
        }
    }
}

/// The SIMD features of this CPU that numeric kernels choose code paths by.
fn cpu_features() -> String {
    let mut found: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
        ] {
            if on {
                found.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            found.push("neon");
        }
    }
    if found.is_empty() { "none".into() } else { found.join(",") }
}

/// Whether a run that differs from its recording in `field` was expected to give identical
/// output, and why, for a person (`reproduce` prints it beside each difference).
pub fn drift_expectation(field: &str) -> &'static str {
    match field {
        "model.sha256" => "identical output not expected: the model's files differ",
        "request.noise" => {
            "identical output not expected past the first image: the batch's noise is drawn another way (a batch of one is the same either way)"
        }
        f if f.starts_with("request.") => "identical output not expected: a different request",
        "knobs.slicing.attention_slice" | "knobs.offload.gpu_blocks" | "knobs.offload.mode" | "knobs.offload.text" | "knobs.offload.vae" => {
            "identical output expected on the CPU (the same sums, split or placed differently); on a GPU placement can change kernels"
        }
        f if f.starts_with("knobs.") => "identical output not expected: a different knob changes the arithmetic",
        "build.version" | "build.commit" => "identical output not guaranteed: a different Headroom build",
        "build.candle" => "identical output not guaranteed: a different candle version (other kernels)",
        "build.threads" => "identical output not guaranteed: another thread count splits CPU sums differently",
        "build.cpu_features" => "identical output not guaranteed: other SIMD features pick other kernels",
        "build.target" => "identical output not guaranteed: another platform",
        _ => "identical output not guaranteed",
    }
}

/// What a run produced and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResult {
    /// The (first) output file, as written.
    pub output: String,
    /// SHA-256 (hex) of the first output's content (see [`crate::media::content_sha256`]).
    pub sha256: String,
    /// The content SHA-256 of every output of the batch, in order (empty in older profiles,
    /// which recorded only the first).
    pub outputs_sha256: Vec<String>,
    /// Peak resident memory of the process during the run.
    pub peak_ram_bytes: u64,
    /// Peak GPU memory during the run (0 on the CPU).
    pub peak_vram_bytes: u64,
    /// Peak heap bytes during the run, where the binary counts its allocations (0 otherwise, and
    /// in older profiles): unlike the RSS, memory freed earlier in the process is not in it.
    pub peak_heap_bytes: u64,
    /// Milliseconds per stage: `load`, `text`, `denoise`, `decode`, …
    pub timings_ms: BTreeMap<String, u64>,
    /// Things a person should know about the run (e.g. compute widened for a missing kernel).
    pub notes: Vec<String>,
}

/// A run written down: model + request + knobs (+ build and result), plus any fields this build
/// does not know, kept for writing back.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Format version; [`PROFILE_VERSION`] for profiles made by this build.
    pub version: u32,
    /// `[model]`: which model ran (required in the file).
    pub model: ModelInfo,
    /// `[request]`: what to make (required in the file).
    pub request: Request,
    /// `[knobs]`: device, precision, offload, slicing, rng (defaults when absent).
    pub knobs: Knobs,
    /// `[build]`: which Headroom made it (`unknown` when absent).
    pub build: BuildInfo,
    /// Present once the run has happened.
    pub result: Option<RunResult>,
    /// Unknown keys and sections from the file this was read from, in their places.
    extra: toml::Table,
}

/// One recorded field that differs between two profiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// Section-qualified name: `knobs.precision.unet`, `request.seed`, `model.sha256`, `build.commit`.
    pub field: String,
    /// The value in `self`.
    pub ours: String,
    /// The value in the other profile.
    pub theirs: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} → {}", self.field, self.ours, self.theirs)
    }
}

impl Profile {
    /// A profile for a run about to happen, stamped with this build.
    pub fn new(model: ModelInfo, request: Request, knobs: Knobs) -> Self {
        Self {
            version: PROFILE_VERSION,
            model,
            request,
            knobs,
            build: BuildInfo::current(),
            result: None,
            extra: toml::Table::new(),
        }
    }

    /// Parses a profile from TOML text; `origin` is the file it came from, named in errors.
    ///
    /// # Errors
    /// Invalid TOML (with its line), no or a newer `version`, a missing `[model]` or `[request]`
    /// section, or a field of the wrong type (e.g. a seed that is not a whole number).
    pub fn from_toml_str(s: &str, origin: &Path) -> Result<Self> {
        doc::parse(s, origin)
    }

    /// The profile as TOML: known sections in a fixed order, unknown fields where they were.
    pub fn to_toml_string(&self) -> String {
        doc::write(self)
    }

    /// Reads a profile from a `.toml` file, or the one embedded in a Headroom `.png` or `.wav`
    /// (recognized by content, not by name).
    ///
    /// # Errors
    /// The file cannot be read, is not a profile, or is an image/audio file with none embedded.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// [`Profile::load`] of a file's bytes (read from `path`, which errors name).
    ///
    /// # Errors
    /// As [`Profile::load`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        if crate::media::png::is_png(bytes) {
            let text = crate::media::png::read_png_text_bytes(bytes, path)?;
            let toml = text.get(crate::media::png::PROFILE_KEYWORD).ok_or_else(|| {
                Error::file(path, "this PNG carries no Headroom profile (drop it into the app to restore its settings)")
            })?;
            return Self::from_toml_str(toml, path);
        }
        if crate::media::wav::is_wav(bytes) {
            return crate::media::wav::read_profile_bytes(bytes, path)?.ok_or_else(|| {
                Error::file(path, "this WAV carries no Headroom profile")
            });
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::file(path, "not a profile: neither TOML text nor a PNG or WAV file"))?;
        Self::from_toml_str(text, path)
    }

    /// Writes the profile as TOML, atomically (see [`write_atomic`]).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_toml_string().as_bytes())
    }

    /// Which recorded fields differ from `other`, by section-qualified name (see [`Drift`]):
    /// every knob (`knobs.device`, `knobs.rng`, `knobs.precision.unet`, … via [`Knobs::diff`]),
    /// every request field (`request.seed`, …), `model.sha256`, `build.version`, `build.commit`,
    /// and where both profiles recorded them `build.candle`, `build.threads`,
    /// `build.cpu_features` and `build.target`. Results, names and paths are not compared.
    pub fn drift(&self, other: &Profile) -> Vec<String> {
        self.drift_detail(other).into_iter().map(|d| d.field).collect()
    }

    /// As [`Profile::drift`], with both values of each differing field.
    pub fn drift_detail(&self, other: &Profile) -> Vec<Drift> {
        let mut out = Vec::new();
        let mut push = |field: String, ours: String, theirs: String| {
            if ours != theirs {
                out.push(Drift { field, ours, theirs });
            }
        };
        push("model.sha256".into(), self.model.sha256.clone(), other.model.sha256.clone());
        let ours = doc::request_table(&self.request);
        let theirs = doc::request_table(&other.request);
        let mut keys: Vec<&String> = ours.keys().collect();
        keys.extend(theirs.keys().filter(|k| !ours.contains_key(*k)));
        for k in keys {
            let show = |t: &toml::Table| t.get(k).map_or_else(|| "(none)".to_string(), |v| v.to_string());
            push(format!("request.{k}"), show(&ours), show(&theirs));
        }
        let (a, b) = (self.knobs.to_pairs(), other.knobs.to_pairs());
        for name in self.knobs.diff(&other.knobs) {
            let find = |pairs: &[(String, String)]| {
                pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).unwrap_or_default()
            };
            push(format!("knobs.{name}"), find(&a), find(&b));
        }
        push("build.version".into(), self.build.version.clone(), other.build.version.clone());
        push("build.commit".into(), self.build.commit.clone(), other.build.commit.clone());
        // What older profiles did not record is not a difference.
        let known = |a: &str, b: &str| (a != "unknown" && b != "unknown").then(|| (a.to_string(), b.to_string()));
        let (a, b) = (&self.build, &other.build);
        for (field, pair) in [
            ("build.candle", known(&a.candle, &b.candle)),
            ("build.cpu_features", known(&a.cpu_features, &b.cpu_features)),
            ("build.target", known(&a.target, &b.target)),
            ("build.threads", (a.threads != 0 && b.threads != 0).then(|| (a.threads.to_string(), b.threads.to_string()))),
        ] {
            if let Some((ours, theirs)) = pair {
                push(field.into(), ours, theirs);
            }
        }
        out
    }

    /// Each recorded field that differs from `other`, for a person: `field: ours → theirs
    /// (whether identical output was expected, and why)` — see [`drift_expectation`].
    pub fn drift_explained(&self, other: &Profile) -> Vec<String> {
        self.drift_detail(other).into_iter().map(|d| format!("{d} ({})", drift_expectation(&d.field))).collect()
    }
}
