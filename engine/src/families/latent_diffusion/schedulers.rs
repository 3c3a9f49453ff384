//! Samplers matching diffusers' schedulers for SD: DDIM (eta 0), Euler, Euler ancestral and
//! DPM-Solver++ 2M (optionally on Karras sigmas), configured from the folder's
//! `scheduler/scheduler_config.json` the way diffusers' `from_config` does: a field present in the
//! file applies to every sampler, an absent one takes that sampler's own default (so an SD 1.5
//! folder gives DDIM "leading" spacing and Euler "linspace").

use candle_core::{Result, Tensor};
use serde::Deserialize;

use crate::request::Scheduler;

/// `scheduler_config.json`: the fields the samplers read. `None` means "absent from the file".
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: String,
    pub steps_offset: usize,
    pub timestep_spacing: Option<String>,
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: clamp the x₀ prediction to ±`clip_sample_range` (DDIM's default is on, so a file
    /// without the key, such as a PNDM config, gets clipping).
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    pub thresholding: bool,
    pub use_karras_sigmas: Option<bool>,
    pub final_sigmas_type: Option<String>,
    pub rescale_betas_zero_snr: bool,
}

impl Default for SchedulerConfig {
    /// diffusers' defaults for its schedulers (not SD's values, which the folder's file carries).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            prediction_type: "epsilon".into(),
            steps_offset: 0,
            timestep_spacing: None,
            set_alpha_to_one: None,
            clip_sample: None,
            clip_sample_range: 1.0,
            thresholding: false,
            use_karras_sigmas: None,
            final_sigmas_type: None,
            rescale_betas_zero_snr: false,
        }
    }
}

/// What the denoiser predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise ε.
    Epsilon,
    /// v = α·ε − σ·x₀ (SD 2.x 768-v models).
    V,
}

impl SchedulerConfig {
    /// The prediction type.
    ///
    /// # Errors
    /// A prediction type other than `epsilon` and `v_prediction`.
    pub fn prediction(&self) -> std::result::Result<Prediction, String> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::V),
            other => Err(format!("prediction_type '{other}' is not supported (epsilon or v_prediction)")),
        }
    }

    /// ᾱ_t for every training step, computed in f32 as diffusers does (torch linspace in f32,
    /// cumulative product accumulated in double).
    ///
    /// # Errors
    /// An unknown beta schedule, or trained betas of the wrong length.
    pub fn alphas_cumprod(&self) -> std::result::Result<Vec<f32>, String> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = if let Some(b) = &self.trained_betas {
            if b.len() != n {
                return Err(format!("trained_betas has {} values, num_train_timesteps is {n}", b.len()));
            }
            b.iter().map(|&x| x as f32).collect()
        } else {
            match self.beta_schedule.as_str() {
                "linear" => linspace_f32(self.beta_start as f32, self.beta_end as f32, n),
                "scaled_linear" => linspace_f32((self.beta_start as f32).sqrt(), (self.beta_end as f32).sqrt(), n)
                    .into_iter()
                    .map(|x| x * x)
                    .collect(),
                other => return Err(format!("beta_schedule '{other}' is not supported (linear, scaled_linear)")),
            }
        };
        if self.thresholding {
            return Err("thresholding (dynamic thresholding) is not supported".into());
        }
        if self.rescale_betas_zero_snr {
            return Err("rescale_betas_zero_snr is not supported".into());
        }
        let mut acc = 1f64;
        Ok(betas
            .iter()
            .map(|&b| {
                acc *= (1.0 - b) as f64;
                acc = acc as f32 as f64;
                acc as f32
            })
            .collect())
    }
}

/// torch.linspace in f32: the first half counts up from `start`, the second down from `end`.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| if i < half { start + step * i as f32 } else { end - step * (n - i - 1) as f32 })
        .collect()
}

/// numpy.linspace in f64.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { end } else { start + step * i as f64 }).collect()
}

/// numpy.interp of `x` over the points (i, ys[i]).
fn interp(x: f64, ys: &[f64]) -> f64 {
    if x <= 0.0 {
        return ys[0];
    }
    let last = ys.len() - 1;
    if x >= last as f64 {
        return ys[last];
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    ys[i] + (ys[i + 1] - ys[i]) * w
}

/// Karras et al.'s sigma schedule (ρ = 7) between the ends of `sigmas` (descending).
fn karras_sigmas(max: f64, min: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (lo, hi) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    linspace(0.0, 1.0, n).into_iter().map(|r| (hi + r * (lo - hi)).powf(rho)).collect()
}

/// diffusers' `_sigma_to_t`: the fractional training step whose sigma is `sigma`.
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let ls = sigma.max(1e-10).ln();
    let count = log_sigmas.iter().filter(|&&l| ls - l >= 0.0).count();
    // argmax of the cumulative count is the last index where it grows, i.e. count − 1
    let low = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let (l, h) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((l - ls) / (l - h)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// One sampling run: the timesteps, the noise levels, and the state between steps.
#[derive(Debug)]
pub struct Sampler {
    kind: Scheduler,
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// σ per step plus a final one (Euler-family and DPM++); empty for DDIM.
    sigmas: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f64,
    step_ratio: usize,
    init_noise_sigma: f64,
    /// DDIM's x₀ clamp, when on.
    clip_sample: Option<f64>,
    /// DPM++ 2M: the previous step's x₀ prediction.
    previous_x0: Option<Tensor>,
    /// Things the run's telemetry should say (a knob the sampler ignored).
    pub notes: Vec<String>,
}

impl Sampler {
    /// Sets up `kind` for `steps` steps from the folder's config; `karras` asks for Karras sigmas
    /// (honoured by Euler and DPM++ 2M; also on when the config says `use_karras_sigmas`).
    ///
    /// # Errors
    /// Unsupported config values (named), zero steps, or more steps than training timesteps.
    pub fn new(kind: Scheduler, cfg: &SchedulerConfig, steps: usize, karras: bool) -> std::result::Result<Self, String> {
        let n_train = cfg.num_train_timesteps;
        if steps == 0 || steps > n_train {
            return Err(format!("steps = {steps}: expected 1 to {n_train}"));
        }
        let prediction = cfg.prediction()?;
        let ac = cfg.alphas_cumprod()?;
        let default_spacing = if kind == Scheduler::Ddim { "leading" } else { "linspace" };
        let spacing = cfg.timestep_spacing.as_deref().unwrap_or(default_spacing);
        let wants_karras = karras || cfg.use_karras_sigmas.unwrap_or(false);
        let mut notes = Vec::new();
        if wants_karras && matches!(kind, Scheduler::Ddim | Scheduler::EulerAncestral) {
            notes.push(format!("{}: Karras sigmas do not apply to this sampler and were not used", kind.name()));
        }
        let karras = wants_karras && matches!(kind, Scheduler::Euler | Scheduler::DpmPp2M);
        if let Some(f) = cfg.final_sigmas_type.as_deref().filter(|f| *f != "zero") {
            return Err(format!("final_sigmas_type '{f}' is not supported (zero)"));
        }
        let offset = cfg.steps_offset as f64;
        // σ for every training step, as f32 like diffusers' tensors
        let full: Vec<f64> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt() as f64).collect();
        let log_sigmas: Vec<f64> = full.iter().map(|s| s.ln()).collect();
        let f32r = |x: f64| x as f32 as f64;

        let mut s = Self {
            kind,
            prediction,
            timesteps: vec![],
            sigmas: vec![],
            final_alpha_cumprod: if cfg.set_alpha_to_one.unwrap_or(true) { 1.0 } else { ac[0] as f64 },
            alphas_cumprod: ac,
            step_ratio: n_train / steps,
            clip_sample: cfg.clip_sample.unwrap_or(true).then_some(cfg.clip_sample_range),
            init_noise_sigma: 1.0,
            previous_x0: None,
            notes,
        };
        match kind {
            Scheduler::Ddim => {
                s.timesteps = match spacing {
                    "leading" => (0..steps).rev().map(|i| (i * (n_train / steps)) as f64 + offset).collect(),
                    "linspace" => linspace(0.0, (n_train - 1) as f64, steps).into_iter().rev().map(|t| t.round_ties_even()).collect(),
                    "trailing" => trailing(n_train, steps),
                    other => return Err(bad_spacing(other)),
                };
            }
            Scheduler::Euler | Scheduler::EulerAncestral => {
                let ts: Vec<f64> = match spacing {
                    "linspace" => linspace(0.0, (n_train - 1) as f64, steps).into_iter().rev().map(f32r).collect(),
                    "leading" => (0..steps).rev().map(|i| (i * (n_train / steps)) as f64 + offset).collect(),
                    "trailing" => trailing(n_train, steps),
                    other => return Err(bad_spacing(other)),
                };
                let mut sig: Vec<f64> = ts.iter().map(|&t| interp(t, &full)).collect();
                s.timesteps = ts;
                if karras {
                    sig = karras_sigmas(sig[0], sig[sig.len() - 1], steps);
                    s.timesteps = sig.iter().map(|&x| f32r(sigma_to_t(x, &log_sigmas))).collect();
                }
                sig.push(0.0);
                s.sigmas = sig.into_iter().map(f32r).collect();
                let max = s.sigmas.iter().cloned().fold(0.0, f64::max);
                s.init_noise_sigma = if matches!(spacing, "linspace" | "trailing") { max } else { (max * max + 1.0).sqrt() };
            }
            Scheduler::DpmPp2M => {
                let ts: Vec<f64> = match spacing {
                    "linspace" => linspace(0.0, (n_train - 1) as f64, steps + 1)
                        .into_iter()
                        .rev()
                        .take(steps)
                        .map(|t| t.round_ties_even())
                        .collect(),
                    "leading" => (0..=steps).rev().take(steps).map(|i| (i * (n_train / (steps + 1))) as f64 + offset).collect(),
                    "trailing" => trailing(n_train, steps),
                    other => return Err(bad_spacing(other)),
                };
                let mut sig: Vec<f64>;
                if karras {
                    sig = karras_sigmas(full[n_train - 1], full[0], steps);
                    s.timesteps = sig.iter().map(|&x| sigma_to_t(x, &log_sigmas).round_ties_even()).collect();
                } else {
                    sig = ts.iter().map(|&t| interp(t, &full)).collect();
                    s.timesteps = ts;
                }
                sig.push(0.0);
                s.sigmas = sig.into_iter().map(f32r).collect();
            }
        }
        Ok(s)
    }

    /// The timesteps to run the denoiser at, in order.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The σ schedule (empty for DDIM).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// What the initial unit-variance noise is multiplied by.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// True where [`Sampler::step`] needs fresh noise (ancestral samplers).
    pub fn needs_noise(&self) -> bool {
        self.kind == Scheduler::EulerAncestral
    }

    /// The denoiser's input at step `i`: the Euler family divides by √(σ² + 1).
    ///
    /// # Errors
    /// Tensor errors.
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        match self.kind {
            Scheduler::Euler | Scheduler::EulerAncestral => {
                let s = self.sigmas[i];
                sample / (s * s + 1.0).sqrt()
            }
            _ => Ok(sample.clone()),
        }
    }

    /// x₀ predicted from `out` at noise level σ (Euler family, `sample` in σ-space).
    fn x0_sigma(&self, out: &Tensor, sample: &Tensor, sigma: f64) -> Result<Tensor> {
        match self.prediction {
            Prediction::Epsilon => sample - (out * sigma)?,
            Prediction::V => {
                let c = sigma * sigma + 1.0;
                (out * (-sigma / c.sqrt()))? + (sample / c)?
            }
        }
    }

    /// Advances `sample` from step `i` to step `i + 1` given the (guided) denoiser output.
    /// `noise` (same shape as `sample`) is used only when [`Sampler::needs_noise`].
    ///
    /// # Errors
    /// A missing noise tensor for an ancestral sampler, tensor errors.
    pub fn step(&mut self, out: &Tensor, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        match self.kind {
            Scheduler::Ddim => self.ddim(out, i, sample),
            Scheduler::Euler => {
                let (s, next) = (self.sigmas[i], self.sigmas[i + 1]);
                let x0 = self.x0_sigma(out, sample, s)?;
                let d = ((sample - x0)? / s)?;
                sample + (d * (next - s))?
            }
            Scheduler::EulerAncestral => {
                let (from, to) = (self.sigmas[i], self.sigmas[i + 1]);
                let x0 = self.x0_sigma(out, sample, from)?;
                let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
                let down = (to * to - up * up).sqrt();
                let d = ((sample - x0)? / from)?;
                let prev = (sample + (d * (down - from))?)?;
                let noise = noise.ok_or_else(|| candle_core::Error::Msg("euler_a: step needs noise".into()))?;
                prev + (noise * up)?
            }
            Scheduler::DpmPp2M => self.dpmpp_2m(out, i, sample),
        }
    }

    fn ddim(&self, out: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
        let t = self.timesteps[i] as usize;
        let a_t = self.alphas_cumprod[t.min(self.alphas_cumprod.len() - 1)] as f64;
        let a_prev = match t.checked_sub(self.step_ratio) {
            Some(p) => self.alphas_cumprod[p] as f64,
            None => self.final_alpha_cumprod,
        };
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => (((sample - (out * sb)?)? / sa)?, out.clone()),
            Prediction::V => (((sample * sa)? - (out * sb)?)?, ((out * sa)? + (sample * sb)?)?),
        };
        let x0 = match self.clip_sample {
            Some(r) => x0.clamp(-r as f32, r as f32)?,
            None => x0,
        };
        (x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?
    }

    fn dpmpp_2m(&mut self, out: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
        // VP-space α and σ for a Karras-style σ
        let ab = |s: f64| {
            let a = 1.0 / (s * s + 1.0).sqrt();
            (a, s * a)
        };
        let (a_s0, s_s0) = ab(self.sigmas[i]);
        let (a_t, s_t) = ab(self.sigmas[i + 1]);
        let x0 = match self.prediction {
            Prediction::Epsilon => ((sample - (out * s_s0)?)? / a_s0)?,
            Prediction::V => ((sample * a_s0)? - (out * s_s0)?)?,
        };
        let lambda = |a: f64, s: f64| a.ln() - s.ln();
        let h = lambda(a_t, s_t) - lambda(a_s0, s_s0);
        let last = i + 1 == self.timesteps.len();
        // first order at the start and (final σ = 0) at the end, second order between
        let d = match (&self.previous_x0, last) {
            (Some(prev), false) => {
                let (a_s1, s_s1) = ab(self.sigmas[i - 1]);
                let r0 = (lambda(a_s0, s_s0) - lambda(a_s1, s_s1)) / h;
                let d1 = ((&x0 - prev)? / r0)?;
                (&x0 + (d1 * 0.5)?)?
            }
            _ => x0.clone(),
        };
        let prev_sample = ((sample * (s_t / s_s0))? - (d * (a_t * ((-h).exp() - 1.0)))?)?;
        self.previous_x0 = Some(x0);
        Ok(prev_sample)
    }
}

fn trailing(n_train: usize, steps: usize) -> Vec<f64> {
    let ratio = n_train as f64 / steps as f64;
    (0..steps).map(|i| (n_train as f64 - i as f64 * ratio).round_ties_even() - 1.0).collect()
}

fn bad_spacing(s: &str) -> String {
    format!("timestep_spacing '{s}' is not supported (linspace, leading, trailing)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::latent_diffusion::folder::read_json;
    use crate::families::latent_diffusion::parity_tests::{fixture, refs};

    /// Timesteps equal diffusers' for every sampler on both fixtures' configs (SD1's file has no
    /// timestep_spacing, SD2's says "leading"), Karras included.
    #[test]
    fn timesteps_match_diffusers() {
        for name in ["tiny-sd1", "tiny-sd2"] {
            let cfg: SchedulerConfig = read_json(&fixture(name).join("scheduler/scheduler_config.json")).unwrap();
            let r = refs(name);
            for (key, kind, karras) in [
                ("ddim", Scheduler::Ddim, false),
                ("euler", Scheduler::Euler, false),
                ("euler_a", Scheduler::EulerAncestral, false),
                ("dpmpp_2m", Scheduler::DpmPp2M, false),
                ("dpmpp_2m_karras", Scheduler::DpmPp2M, true),
            ] {
                let s = Sampler::new(kind, &cfg, 4, karras).unwrap();
                let want: Vec<f64> = r[&format!("timesteps_{key}")].to_vec1::<f32>().unwrap().iter().map(|&x| x as f64).collect();
                assert_eq!(s.timesteps(), want.as_slice(), "{name} {key}");
            }
        }
    }

    /// SD's scaled-linear ᾱ matches known values (ᾱ₀ = 1 − 0.00085, ᾱ₉₉₉ ≈ 0.00466).
    #[test]
    fn alphas_cumprod_sd() {
        let cfg = SchedulerConfig { beta_start: 0.00085, beta_end: 0.012, beta_schedule: "scaled_linear".into(), ..Default::default() };
        let ac = cfg.alphas_cumprod().unwrap();
        assert!((ac[0] - 0.99915).abs() < 1e-6);
        assert!((ac[999] - 0.0046).abs() < 1e-4, "{}", ac[999]);
        assert!(Sampler::new(Scheduler::Euler, &cfg, 0, false).is_err());
    }

    /// Unknown schedules and spacings are refused with their names.
    #[test]
    fn unsupported_values_are_named() {
        let cfg = SchedulerConfig { beta_schedule: "squaredcos_cap_v2".into(), ..Default::default() };
        assert!(Sampler::new(Scheduler::Ddim, &cfg, 4, false).unwrap_err().contains("squaredcos_cap_v2"));
        let cfg = SchedulerConfig { timestep_spacing: Some("weird".into()), ..Default::default() };
        assert!(Sampler::new(Scheduler::Euler, &cfg, 4, false).unwrap_err().contains("weird"));
    }
}
