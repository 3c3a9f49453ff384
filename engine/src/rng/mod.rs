//! The engine's own seeded noise: reproduces torch's CPU `randn` bit for bit.
//!
//! [`TorchCpuRng::new(seed)`](TorchCpuRng::new) is `torch.Generator().manual_seed(seed)`, and each
//! [`TorchCpuRng::randn`] call is the next `torch.randn(shape, generator=g)` in float32 on the CPU,
//! including the generator state it leaves behind, so ancestral samplers that draw noise every step
//! get torch's numbers. How torch 2.15 does it (`ATen/native/cpu/DistributionTemplates.h`):
//!
//! - The generator is MT19937 seeded with the low 32 bits of the 64-bit seed ([`mt19937`]).
//! - Tensors of 16 or more elements: one uniform float per element, `(u32 & 0xffffff) / 2^24`,
//!   then Box-Muller on each block of 16 (elements `j` and `j + 8` form a pair) with float
//!   polynomials for `log` and `sincos` ([`avx_math`]). When the size is not a multiple of 16, 16
//!   fresh uniforms are drawn for the last 16 elements, which are transformed again.
//! - Smaller tensors: per element a double-precision Box-Muller sample from two 53-bit uniforms;
//!   the second sample of each pair is cached in the generator and used by the next small-path
//!   element, even one in a later call (the large path neither reads nor clears that cache).
//!
//! This is torch's AVX2 kernel, which torch uses on any x86-64 CPU with AVX2 (its AVX-512 build
//! shares it). torch without AVX2 (`ATEN_CPU_CAPABILITY=default`, ARM) uses scalar `std::log`,
//! `std::sin`, `std::cos` and gives different bits for large tensors.

mod avx_math;
mod mt19937;
#[cfg(test)]
mod tests;

use std::path::Path;

use crate::{Error, Result};
use mt19937::Mt19937;

/// torch's CPU generator (`at::CPUGeneratorImpl`): MT19937 plus the cached second normal sample
/// of the small-tensor path. Cloning snapshots the whole state.
#[derive(Clone)]
pub struct TorchCpuRng {
    seed: u64,
    engine: Mt19937,
    /// `next_double_normal_sample_`: the sine half of the last double Box-Muller pair.
    cached_normal: Option<f64>,
}

impl std::fmt::Debug for TorchCpuRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchCpuRng")
            .field("seed", &self.seed)
            .field("cached_normal", &self.cached_normal)
            .finish_non_exhaustive()
    }
}

impl TorchCpuRng {
    /// A generator in the state of `torch.Generator().manual_seed(seed)`. Every `u64` is accepted,
    /// as torch accepts 0..2^64; only the low 32 bits reach MT19937 (so `2^32 + 5` gives the same
    /// noise as `5`, and `2^63` the same as `0`, exactly as in torch).
    pub fn new(seed: u64) -> Self {
        TorchCpuRng {
            seed,
            engine: Mt19937::new(seed),
            cached_normal: None,
        }
    }

    /// The seed this generator was made with (`g.initial_seed()`).
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// The next `torch.randn(numel-element tensor, generator=g)`, float32, flat. The shape does not
    /// matter to torch, only the element count.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; numel];
        self.fill_normal(&mut out, 0.0, 1.0);
        out
    }

    /// Fills `out` like `out.normal_(mean, std, generator=g)` on a contiguous float32 tensor
    /// (`randn` is `mean = 0`, `std = 1`).
    pub fn fill_normal(&mut self, out: &mut [f32], mean: f32, std: f32) {
        let size = out.len();
        if size >= 16 {
            for v in out.iter_mut() {
                *v = self.uniform_f32();
            }
            for block in out.chunks_exact_mut(16) {
                avx_math::normal_fill_16(block, mean, std);
            }
            if !size.is_multiple_of(16) {
                let tail = &mut out[size - 16..];
                for v in tail.iter_mut() {
                    *v = self.uniform_f32();
                }
                avx_math::normal_fill_16(tail, mean, std);
            }
        } else {
            let (mean, std) = (f64::from(mean), f64::from(std));
            for v in out.iter_mut() {
                *v = (self.normal_f64() * std + mean) as f32;
            }
        }
    }

    /// The next `torch.randn(shape, generator=g)` as an f32 tensor, made on the CPU and then moved
    /// to `device`, so every device sees the same numbers.
    ///
    /// # Errors
    /// If the element count overflows `usize`, or the tensor cannot be made or moved.
    pub fn randn_tensor(
        &mut self,
        shape: &[usize],
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor> {
        let numel = checked_numel(shape)?;
        let data = self.randn(numel);
        let tensor = candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu)?;
        Ok(tensor.to_device(device)?)
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one output over 2^24.
    #[inline]
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// The next `torch.rand((), dtype=torch.float64, generator=g)`: a uniform double in [0, 1)
    /// (what token sampling draws; the same stream as [`TorchCpuRng::randn`]).
    pub fn rand_f64(&mut self) -> f64 {
        self.uniform_f64()
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of `random64()` over 2^53.
    #[inline]
    fn uniform_f64(&mut self) -> f64 {
        (self.engine.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>(0, 1)`: returns the cached sample if there is one,
    /// otherwise draws a Box-Muller pair, caches `r * sin` and returns `r * cos`.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` in float32, flat.
///
/// # Panics
/// If the product of `shape` overflows `usize` (no tensor that size could exist).
pub fn randn(seed: u64, shape: &[usize]) -> Vec<f32> {
    let numel = checked_numel(shape).expect("shape's element count overflows usize");
    TorchCpuRng::new(seed).randn(numel)
}

/// Writes `randn(seed, shape)` to `path` as a safetensors file with one f32 tensor named `"noise"`
/// of that shape. The file appears atomically: it is written to a temporary file in the same
/// folder and then renamed over `path`.
///
/// # Errors
/// If the element count overflows, or the file cannot be written or renamed.
pub fn write_noise_safetensors(path: &Path, seed: u64, shape: &[usize]) -> Result<()> {
    let numel = checked_numel(shape).map_err(|e| Error::file(path, e.to_string()))?;
    let noise = TorchCpuRng::new(seed).randn(numel);
    let bytes: Vec<u8> = noise.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .map_err(|e| Error::file(path, format!("cannot describe the noise tensor: {e}")))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("seed".to_string(), seed.to_string());
    meta.insert("source".to_string(), "torch-cpu".to_string());
    let file_bytes = safetensors::tensor::serialize([("noise", view)], Some(meta))
        .map_err(|e| Error::file(path, format!("cannot serialize the noise tensor: {e}")))?;
    write_atomically(path, &file_bytes)
}

/// Writes `bytes` to a temporary file next to `path`, then renames it onto `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path (no file name)"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The element count of `shape`, or an error if it overflows `usize`.
fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::invalid(format!(
                "noise shape {shape:?} has more elements than fit in memory"
            ))
        })
}
