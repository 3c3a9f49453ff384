//! Flags shared by several subcommands: the request and the knobs, with DESIGN.md's names.

use anyhow::bail;
use clap::Args;
use headroom_engine::plan::plan_model;
use headroom_engine::{Knobs, ModelRef, Request};

/// REQUEST flags.
#[derive(Args, Debug, Default, Clone)]
pub struct RequestArgs {
    /// What to make.
    #[arg(long)]
    pub prompt: Option<String>,
    /// What to steer away from.
    #[arg(long)]
    pub negative: Option<String>,
    /// Seed of the run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Denoising steps.
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// ddim, euler, euler_a or dpmpp_2m.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Use the Karras sigma schedule.
    #[arg(long)]
    pub karras: bool,
    /// Width in pixels (multiple of 8).
    #[arg(long)]
    pub width: Option<u32>,
    /// Height in pixels (multiple of 8).
    #[arg(long)]
    pub height: Option<u32>,
    /// Length of audio to make, in seconds.
    #[arg(long)]
    pub seconds: Option<f32>,
    /// How many outputs.
    #[arg(long)]
    pub batch: Option<u32>,
    /// How a batch's noise comes from the seed: `batch` (one generator draws the whole batch, as
    /// diffusers and ComfyUI; the default) or `per-image` (image i from seed + i, as A1111).
    #[arg(long, value_name = "MODE")]
    pub noise: Option<String>,
    /// Any request field the model's family declares, by its profile key: `KEY=VALUE[,…]`
    /// (repeatable; applied after the flags above), e.g. `--field steps=30,seconds=8`.
    #[arg(long = "field", value_name = "KEY=VALUE")]
    pub fields: Vec<String>,
}

impl RequestArgs {
    /// Applies the flags that were given onto `r`.
    ///
    /// # Errors
    /// A scheduler name or noise mode that is not known; a `--field` with an unknown key or a
    /// value of the wrong kind.
    pub fn apply(&self, r: &mut Request) -> headroom_engine::Result<()> {
        if let Some(v) = &self.prompt {
            r.prompt = v.clone();
        }
        if let Some(v) = &self.negative {
            r.negative = v.clone();
        }
        if let Some(v) = self.seed {
            r.seed = v;
        }
        if let Some(v) = self.steps {
            r.steps = v;
        }
        if let Some(v) = self.guidance {
            r.guidance = v;
        }
        if let Some(v) = &self.scheduler {
            r.scheduler = v.parse()?;
        }
        if self.karras {
            r.karras = true;
        }
        if let Some(v) = self.width {
            r.width = v;
        }
        if let Some(v) = self.height {
            r.height = v;
        }
        if self.seconds.is_some() {
            r.seconds = self.seconds;
        }
        if let Some(v) = self.batch {
            r.batch = v;
        }
        if let Some(v) = &self.noise {
            r.noise = v.parse()?;
        }
        for item in self.fields.iter().flat_map(|f| f.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| headroom_engine::Error::invalid(format!("--field {item}: expected KEY=VALUE")))?;
            r.set_field(key.trim(), headroom_engine::request::FieldValue::Text(value.trim().to_string()))?;
        }
        Ok(())
    }
}

/// KNOBS flags.
#[derive(Args, Debug, Default, Clone)]
pub struct KnobArgs {
    /// cpu, cuda:N or metal.
    #[arg(long)]
    pub device: Option<String>,
    /// One precision for all (`q4k`) or per component (`unet=q4k,text=f16,vae=f32`).
    #[arg(long)]
    pub precision: Option<String>,
    /// Offload: `gpu-blocks=4,mode=stream,text=cpu,vae=cpu`.
    #[arg(long)]
    pub offload: Option<String>,
    /// Compute attention in chunks of N query rows (0 = off).
    #[arg(long)]
    pub attention_slice: Option<u32>,
    /// Decode in tiles of N latent pixels (0 = off).
    #[arg(long)]
    pub vae_tile: Option<u32>,
    /// Any knobs by their profile keys, applied after the flags above:
    /// `precision.unet=q8_0,slicing.vae_tile=64` (what `plan` suggests).
    #[arg(long = "set")]
    pub set: Option<String>,
}

impl KnobArgs {
    /// Applies the flags that were given onto `k`.
    ///
    /// # Errors
    /// A knob value that does not parse.
    pub fn apply(&self, k: &mut Knobs) -> headroom_engine::Result<()> {
        if let Some(v) = &self.device {
            k.set("device", v)?;
        }
        if let Some(v) = &self.precision {
            k.apply_list(Some("precision"), v)?;
        }
        if let Some(v) = &self.offload {
            k.apply_list(Some("offload"), v)?;
        }
        if let Some(v) = self.attention_slice {
            k.slicing.attention_slice = v;
        }
        if let Some(v) = self.vae_tile {
            k.slicing.vae_tile = v;
        }
        if let Some(v) = &self.set {
            k.apply_list(None, v)?;
        }
        Ok(())
    }
}

/// Parses a size such as `8GiB`, `512 MiB`, `6GB` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}': expected a size such as 8GiB or 512MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024f64.powi(4),
        u => return Err(format!("'{s}': unknown unit '{u}' (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    Ok((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes parse with binary and decimal units, and bad units are refused.
    #[test]
    fn sizes() {
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("8 parsecs").is_err());
    }
}

/// The memory check before a run: refused when the plan says it will not fit in the memory
/// free now, with the knobs that would make it fit.
#[derive(Args, Debug, Default, Clone)]
pub struct PreflightArgs {
    /// Run even when the plan says it will not fit in the memory free now.
    #[arg(long)]
    pub force: bool,
    /// Memory to plan the run against on its device (default: what is free now), e.g. 6GiB.
    #[arg(long, value_parser = parse_size)]
    pub budget: Option<u64>,
}

impl PreflightArgs {
    /// Plans `model` with `knobs` and `request` and refuses what does not fit, unless `--force`.
    /// A model that cannot be planned is left to the load, which names the problem.
    ///
    /// # Errors
    /// One line: the device that is short, by how much, and the knobs that fit.
    pub fn check(&self, name: &str, model: &ModelRef, request: &Request, knobs: &Knobs) -> anyhow::Result<()> {
        if self.force {
            return Ok(());
        }
        let Ok(plan) = plan_model(model, knobs, request, self.budget) else {
            return Ok(());
        };
        if let Some(why) = plan.refusal() {
            bail!("{name} does not fit: {why}; pass knobs with --set, or --force to run anyway");
        }
        Ok(())
    }
}
