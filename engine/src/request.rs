//! What to make: prompt, negative prompt, seed, steps, guidance, scheduler, size or seconds, batch,
//! how a batch's noise is drawn from the seed, and for token models how tokens are sampled
//! (temperature, top-k, top-p; unset unless asked).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The sampling algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scheduler {
    /// DDIM with eta = 0.
    Ddim,
    /// Euler (diffusers' EulerDiscreteScheduler).
    #[default]
    Euler,
    /// Euler ancestral.
    EulerAncestral,
    /// DPM-Solver++ 2M.
    DpmPp2M,
}

impl Scheduler {
    /// Every scheduler, in menu order.
    pub const ALL: [Scheduler; 4] =
        [Scheduler::Ddim, Scheduler::Euler, Scheduler::EulerAncestral, Scheduler::DpmPp2M];

    /// The profile/CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Ddim => "ddim",
            Scheduler::Euler => "euler",
            Scheduler::EulerAncestral => "euler_a",
            Scheduler::DpmPp2M => "dpmpp_2m",
        }
    }

    /// True where each step draws fresh noise from the run's generator.
    pub fn is_ancestral(self) -> bool {
        matches!(self, Scheduler::EulerAncestral)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheduler {
    type Err = Error;
    /// Accepts our names and the usual A1111/ComfyUI spellings ("Euler a", "DPM++ 2M", "dpmpp_2m").
    fn from_str(s: &str) -> Result<Self> {
        let norm: String = s
            .trim()
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
            .collect();
        match norm.as_str() {
            "ddim" => Ok(Scheduler::Ddim),
            "euler" => Ok(Scheduler::Euler),
            "eulera" | "eulerancestral" => Ok(Scheduler::EulerAncestral),
            "dpmpp2m" | "dpm++2m" | "dpmsolver++2m" | "dpmsolvermultistep" => Ok(Scheduler::DpmPp2M),
            _ => Err(Error::invalid(format!(
                "scheduler '{s}': expected ddim, euler, euler_a or dpmpp_2m"
            ))),
        }
    }
}

impl TryFrom<String> for Scheduler {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Scheduler> for String {
    fn from(s: Scheduler) -> String {
        s.name().to_string()
    }
}

/// How the noise of a batch comes from its seed.
///
/// A batch of one draws the same noise either way. With an ancestral scheduler in `Batch` mode
/// every step's noise is drawn for the whole batch too, so even the first image depends on the
/// batch size, as it does in diffusers; in `PerImage` mode each image is the image its own seed
/// makes alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NoiseMode {
    /// One generator seeded with `seed` draws the whole batch's noise at once, as diffusers and
    /// ComfyUI do (`torch.randn((batch, 4, h/8, w/8), generator=torch.Generator().manual_seed(seed))`):
    /// every image of the batch matches theirs.
    #[default]
    Batch,
    /// Image `i` has its own generator seeded with `seed + i`, as AUTOMATIC1111 does (and
    /// diffusers given a list of generators): image `i` is what a batch of one with seed `seed + i`
    /// makes. What profiles without a `noise` field and a batch above one were made with.
    PerImage,
}

impl NoiseMode {
    /// Both modes, in menu order.
    pub const ALL: [NoiseMode; 2] = [NoiseMode::Batch, NoiseMode::PerImage];

    /// The profile/CLI name.
    pub fn name(self) -> &'static str {
        match self {
            NoiseMode::Batch => "batch",
            NoiseMode::PerImage => "per-image",
        }
    }
}

impl fmt::Display for NoiseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NoiseMode {
    type Err = Error;
    /// Accepts `batch` and `per-image`, and the tools they follow: `diffusers`, `comfyui` (batch)
    /// and `a1111` (per image).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "batch" | "diffusers" | "comfyui" => Ok(NoiseMode::Batch),
            "per-image" | "a1111" => Ok(NoiseMode::PerImage),
            _ => Err(Error::invalid(format!(
                "noise '{s}': expected batch (one generator for the whole batch, as diffusers) or per-image (seed + i per image, as A1111)"
            ))),
        }
    }
}

impl TryFrom<String> for NoiseMode {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<NoiseMode> for String {
    fn from(m: NoiseMode) -> String {
        m.name().to_string()
    }
}

/// The largest width or height generated: twice SDXL's native 1024, as far as SD 1.x/2.x/SDXL
/// users go in one pass (A1111's own limit); larger images are made by upscaling, not here.
pub const MAX_SIDE: u32 = 2048;
/// The most denoising steps: the 1000 training timesteps SD schedulers are drawn from.
pub const MAX_STEPS: u32 = 1000;
/// The most outputs in one batch.
pub const MAX_BATCH: u32 = 64;
/// The longest audio asked for, in seconds; a model also refuses a length whose spectrogram is
/// wider than [`MAX_SIDE`] frames.
pub const MAX_SECONDS: f32 = 600.0;

/// What to make.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    pub prompt: String,
    pub negative: String,
    /// The seed of the run's generator (image i's is `seed + i` in [`NoiseMode::PerImage`]).
    pub seed: u64,
    pub steps: u32,
    /// Classifier-free guidance scale; 1.0 or less turns guidance off.
    pub guidance: f32,
    pub scheduler: Scheduler,
    /// Use the Karras sigma schedule (for the sigma-based schedulers).
    pub karras: bool,
    /// Output width in pixels (a multiple of 8).
    pub width: u32,
    /// Output height in pixels (a multiple of 8).
    pub height: u32,
    /// For audio models: the length to make; `None` means the model's native length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f32>,
    /// How many outputs.
    pub batch: u32,
    /// How the batch's noise comes from the seed. Profiles always record it; one without it
    /// was written before it existed and reads as [`NoiseMode::PerImage`] when its batch is
    /// above one (see `profile`).
    pub noise: NoiseMode,
    /// For token models (MusicGen): the sampling temperature; 0 is greedy. `None`: the model's
    /// `generation_config.json` decides. Written only when set, so other runs' profiles keep
    /// their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// For token models: sample among the `top_k` likeliest tokens (1 is greedy, 0 turns the
    /// filter off). `None`: the model's `generation_config.json` decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// For token models: sample among the likeliest tokens whose probabilities sum to `top_p`
    /// (nucleus sampling; 1 turns it off). `None`: the model's `generation_config.json` decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative: String::new(),
            seed: 42,
            steps: 20,
            guidance: 7.5,
            scheduler: Scheduler::default(),
            karras: false,
            width: 64,
            height: 64,
            seconds: None,
            batch: 1,
            noise: NoiseMode::default(),
            temperature: None,
            top_k: None,
            top_p: None,
        }
    }
}

/// One request field's value, by kind ([`Request::field`], [`Request::set_field`]).
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Text(String),
    Int(i64),
    Float(f64),
    Flag(bool),
    /// One of a field's named choices.
    Choice(String),
    /// Not set: the model's own default (optional fields such as `temperature`).
    Unset,
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Text(s) | FieldValue::Choice(s) => f.write_str(s),
            FieldValue::Int(n) => write!(f, "{n}"),
            FieldValue::Float(x) => write!(f, "{x}"),
            FieldValue::Flag(b) => write!(f, "{b}"),
            FieldValue::Unset => f.write_str("the model's default"),
        }
    }
}

impl Request {
    /// The value of field `key` by its profile name (`steps`, `guidance`, `scheduler`, …; an
    /// optional field not set — `seconds`, `temperature`, `top_k`, `top_p` — is `Unset`, the
    /// model's own); `None` for a key the request has no field for.
    pub fn field(&self, key: &str) -> Option<FieldValue> {
        use FieldValue::*;
        Some(match key {
            "prompt" => Text(self.prompt.clone()),
            "negative" => Text(self.negative.clone()),
            "seed" => Int(self.seed as i64),
            "steps" => Int(i64::from(self.steps)),
            "guidance" => Float(f64::from(self.guidance)),
            "scheduler" => Choice(self.scheduler.name().into()),
            "karras" => Flag(self.karras),
            "width" => Int(i64::from(self.width)),
            "height" => Int(i64::from(self.height)),
            "seconds" => self.seconds.map_or(Unset, |s| Float(f64::from(s))),
            "batch" => Int(i64::from(self.batch)),
            "noise" => Choice(self.noise.name().into()),
            "temperature" => self.temperature.map_or(Unset, |t| Float(f64::from(t))),
            "top_k" => self.top_k.map_or(Unset, |k| Int(i64::from(k))),
            "top_p" => self.top_p.map_or(Unset, |p| Float(f64::from(p))),
            _ => return None,
        })
    }

    /// Sets field `key` (as [`Request::field`] names it) from a value of its kind, or from text
    /// parsed as the field's kind (what the CLI's `--field key=value` gives), through
    /// [`Request::set`]; `Unset` clears an optional field (the model's own default again).
    ///
    /// # Errors
    /// An unknown key, a value that does not parse as the field's kind, or `Unset` for a field
    /// that always has a value.
    pub fn set_field(&mut self, key: &str, value: FieldValue) -> Result<()> {
        match (key, &value) {
            ("seconds", FieldValue::Unset) => self.seconds = None,
            ("temperature", FieldValue::Unset) => self.temperature = None,
            ("top_k", FieldValue::Unset) => self.top_k = None,
            ("top_p", FieldValue::Unset) => self.top_p = None,
            (_, FieldValue::Unset) => return Err(Error::invalid(format!("request field {key} always has a value"))),
            // 0 seconds is the model's native length
            ("seconds", v) if v.to_string().trim().parse::<f64>().is_ok_and(|x| x <= 0.0) => self.seconds = None,
            (_, v) => self.set(key, &v.to_string())?,
        }
        Ok(())
    }

    /// Checks what can be checked without a model.
    ///
    /// # Errors
    /// Steps of 0, a batch of 0, a size that is zero or not a multiple of 8, a guidance or
    /// length that is not a finite positive number; steps, batch, size or length above
    /// [`MAX_STEPS`], [`MAX_BATCH`], [`MAX_SIDE`] or [`MAX_SECONDS`] (the field, its value and
    /// the bound are named).
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid("steps = 0: at least one denoising step is needed"));
        }
        if self.steps > MAX_STEPS {
            return Err(Error::invalid(format!(
                "steps = {}: at most {MAX_STEPS} (the schedulers' training timesteps)",
                self.steps
            )));
        }
        if self.batch == 0 {
            return Err(Error::invalid("batch = 0: at least one output is needed"));
        }
        if self.batch > MAX_BATCH {
            return Err(Error::invalid(format!("batch = {}: at most {MAX_BATCH} outputs in one run", self.batch)));
        }
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v > MAX_SIDE {
                return Err(Error::invalid(format!(
                    "{name} = {v}: at most {MAX_SIDE} pixels (generate smaller and upscale)"
                )));
            }
            if v == 0 || v % 8 != 0 {
                return Err(Error::invalid(format!(
                    "{name} = {v}: the size must be a positive multiple of 8 (the autoencoder works on 8×8 pixel cells); try {}",
                    (v.max(8) + 4) / 8 * 8
                )));
            }
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(Error::invalid(format!("guidance = {}: expected a number ≥ 0", self.guidance)));
        }
        if let Some(t) = self.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(Error::invalid(format!("temperature = {t}: expected a number ≥ 0 (0 is greedy)")));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::invalid(format!("top_p = {p}: expected a number in (0, 1] (1 turns it off)")));
        }
        if let Some(s) = self.seconds {
            if !s.is_finite() || s <= 0.0 {
                return Err(Error::invalid(format!("seconds = {s}: expected a length > 0")));
            }
            if s > MAX_SECONDS {
                return Err(Error::invalid(format!("seconds = {s}: at most {MAX_SECONDS} seconds in one run")));
            }
        }
        Ok(())
    }

    /// Sets one field by its profile name (`prompt`, `seed`, `steps`, …, `noise`).
    ///
    /// # Errors
    /// An unknown field or a value that does not parse.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        fn num<T: FromStr>(key: &str, v: &str) -> Result<T> {
            v.trim().parse().map_err(|_| Error::invalid(format!("{key} = '{v}': expected a number")))
        }
        match key.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "prompt" => self.prompt = value.to_string(),
            "negative" | "negative_prompt" => self.negative = value.to_string(),
            "seed" => self.seed = num(key, value)?,
            "steps" => self.steps = num(key, value)?,
            "guidance" | "cfg" | "cfg_scale" => self.guidance = num(key, value)?,
            "scheduler" | "sampler" => self.scheduler = value.parse()?,
            "karras" => {
                self.karras = matches!(value.trim(), "true" | "1" | "yes" | "on");
            }
            "width" => self.width = num(key, value)?,
            "height" => self.height = num(key, value)?,
            "seconds" => self.seconds = Some(num(key, value)?),
            "batch" => self.batch = num(key, value)?,
            "noise" => self.noise = value.parse()?,
            "temperature" => self.temperature = Some(num(key, value)?),
            "top_k" => self.top_k = Some(num(key, value)?),
            "top_p" => self.top_p = Some(num(key, value)?),
            other => return Err(Error::invalid(format!("unknown request field '{other}'"))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field reads back by key what was set by key, from text as the CLI gives it or
    /// from a value of its kind; `seconds` 0 is the native length; unknown keys and wrong kinds
    /// are refused naming the field; the family's declared fields are all fields of the request.
    #[test]
    fn fields_by_key() {
        let mut r = Request::default();
        for (key, text, want) in [
            ("prompt", "a cat", FieldValue::Text("a cat".into())),
            ("negative", "blur", FieldValue::Text("blur".into())),
            ("seed", "7", FieldValue::Int(7)),
            ("steps", "30", FieldValue::Int(30)),
            ("guidance", "4.5", FieldValue::Float(4.5)),
            ("scheduler", "DPM++ 2M", FieldValue::Choice("dpmpp_2m".into())),
            ("karras", "true", FieldValue::Flag(true)),
            ("width", "96", FieldValue::Int(96)),
            ("height", "128", FieldValue::Int(128)),
            ("seconds", "2.5", FieldValue::Float(2.5)),
            ("batch", "3", FieldValue::Int(3)),
            ("noise", "a1111", FieldValue::Choice("per-image".into())),
        ] {
            r.set_field(key, FieldValue::Text(text.into())).unwrap();
            assert_eq!(r.field(key), Some(want.clone()), "{key}");
            let mut again = Request::default();
            again.set_field(key, want.clone()).unwrap();
            assert_eq!(again.field(key), Some(want), "{key} by value");
        }
        r.set_field("seconds", FieldValue::Float(0.0)).unwrap();
        assert_eq!(r.seconds, None);
        assert_eq!(r.set_field("temperature_", FieldValue::Int(1)).unwrap_err().to_string(), "unknown request field 'temperature_'");
        assert_eq!(r.set_field("steps", FieldValue::Text("-1".into())).unwrap_err().to_string(), "steps = '-1': expected a number");
        assert!(r.set_field("steps", FieldValue::Unset).is_err());
        r.set_field("top_k", FieldValue::Text("40".into())).unwrap();
        assert_eq!(r.field("top_k"), Some(FieldValue::Int(40)));
        r.set_field("top_k", FieldValue::Unset).unwrap();
        assert_eq!((r.top_k, r.field("top_k")), (None, Some(FieldValue::Unset)));
        let declared = crate::families::latent_diffusion::IMAGE_FIELDS.iter().chain(&crate::families::latent_diffusion::AUDIO_FIELDS);
        for f in declared {
            assert!(r.field(f.key).is_some(), "declared field {} is not a request field", f.key);
        }
    }

    /// Sizes that are not multiples of 8 and zero steps are refused with the field named.
    #[test]
    fn validate_names_the_field() {
        let mut r = Request { width: 100, ..Request::default() };
        assert!(r.validate().unwrap_err().to_string().contains("width = 100"));
        r.width = 64;
        r.steps = 0;
        assert!(r.validate().unwrap_err().to_string().contains("steps = 0"));
        r.steps = 1;
        assert!(r.validate().is_ok());
    }

    /// Sizes, steps, batches and lengths past their bounds are refused in one line naming the
    /// field, the value and the bound; the bounds themselves pass.
    #[test]
    fn validate_upper_bounds() {
        let ok = Request { width: MAX_SIDE, height: MAX_SIDE, steps: MAX_STEPS, batch: MAX_BATCH, seconds: Some(MAX_SECONDS), ..Request::default() };
        assert!(ok.validate().is_ok());
        for (bad, words) in [
            (Request { width: 4096, ..ok.clone() }, "width = 4096: at most 2048"),
            (Request { height: 4096, ..ok.clone() }, "height = 4096: at most 2048"),
            (Request { steps: 1001, ..ok.clone() }, "steps = 1001: at most 1000"),
            (Request { batch: 65, ..ok.clone() }, "batch = 65: at most 64"),
            (Request { seconds: Some(1e11), ..ok.clone() }, "seconds = 100000000000: at most 600"),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.starts_with(words) && !e.contains('\n'), "{e}");
        }
    }

    /// Token sampling fields are absent from a request's TOML until set, parse by name, and
    /// bad values are refused naming the field.
    #[test]
    fn sampling_fields_optional() {
        let plain = toml::to_string(&Request::default()).unwrap();
        assert!(!plain.contains("temperature") && !plain.contains("top_k") && !plain.contains("top_p"), "{plain}");
        let mut r = Request::default();
        r.set("top-k", "5").unwrap();
        r.set("top_p", "0.9").unwrap();
        r.set("temperature", "0.7").unwrap();
        assert_eq!((r.top_k, r.top_p, r.temperature), (Some(5), Some(0.9), Some(0.7)));
        let back: Request = toml::from_str(&toml::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        for (bad, words) in [(Request { top_p: Some(0.0), ..Request::default() }, "top_p = 0"), (Request { temperature: Some(-1.0), ..Request::default() }, "temperature = -1")] {
            assert!(bad.validate().unwrap_err().to_string().starts_with(words));
        }
    }

    /// A1111 and ComfyUI sampler names map onto ours.
    #[test]
    fn scheduler_aliases() {
        assert_eq!("Euler a".parse::<Scheduler>().unwrap(), Scheduler::EulerAncestral);
        assert_eq!("DPM++ 2M".parse::<Scheduler>().unwrap(), Scheduler::DpmPp2M);
        assert_eq!("dpmpp_2m".parse::<Scheduler>().unwrap(), Scheduler::DpmPp2M);
        assert!("plms".parse::<Scheduler>().is_err());
    }

    /// Noise modes parse by their names and the tools they follow, write back by their names,
    /// and a wrong one is refused naming both choices; new requests draw the batch at once.
    #[test]
    fn noise_modes() {
        assert_eq!(Request::default().noise, NoiseMode::Batch);
        for (text, mode) in [("batch", NoiseMode::Batch), ("diffusers", NoiseMode::Batch), ("per-image", NoiseMode::PerImage), ("per_image", NoiseMode::PerImage), ("A1111", NoiseMode::PerImage)] {
            assert_eq!(text.parse::<NoiseMode>().unwrap(), mode, "{text}");
        }
        for m in NoiseMode::ALL {
            assert_eq!(m.name().parse::<NoiseMode>().unwrap(), m);
        }
        let e = "seed+i".parse::<NoiseMode>().unwrap_err().to_string();
        assert!(e.contains("batch") && e.contains("per-image"), "{e}");
        let mut r = Request::default();
        r.set("noise", "per-image").unwrap();
        assert_eq!(r.noise, NoiseMode::PerImage);
    }
}
