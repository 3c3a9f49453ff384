//! Where a run's noise comes from: a stream per seed ([`NoiseSource`], made by a
//! [`NoiseFactory`]), and [`BatchNoise`], which draws each batch-wide tensor (the initial latents,
//! then every ancestral step's noise) from one stream for the whole batch or one per image, as
//! the request's [`NoiseMode`] says.

use crate::request::NoiseMode;

/// A stream of standard-normal f32 noise: its initial latents first, then whatever an ancestral
/// sampler draws, step by step.
pub trait NoiseSource {
    /// The next `numel` values.
    fn randn(&mut self, numel: usize) -> Vec<f32>;
}

/// Makes the noise stream for a seed.
pub type NoiseFactory = Box<dyn Fn(u64) -> Box<dyn NoiseSource> + Send>;

impl NoiseSource for crate::rng::TorchCpuRng {
    fn randn(&mut self, numel: usize) -> Vec<f32> {
        crate::rng::TorchCpuRng::randn(self, numel)
    }
}

/// The noise every run uses unless [`super::LatentDiffusion::set_noise`] replaced it: the
/// engine's torch-compatible CPU generator, so seed `s` gives `torch.randn(shape,
/// generator=torch.Generator().manual_seed(s))` for the initial latents, and an ancestral
/// sampler's per-step noise continues that same stream, as diffusers does with one generator.
pub fn default_noise() -> NoiseFactory {
    Box::new(|seed| Box::new(crate::rng::TorchCpuRng::new(seed)))
}

/// The noise of one run's batch.
///
/// [`NoiseMode::Batch`]: one stream seeded with `seed`, each draw taken for the whole batch at
/// once — `torch.randn((batch, c, h, w), generator=g)`, as diffusers' `prepare_latents` and its
/// ancestral schedulers draw with one generator. [`NoiseMode::PerImage`]: image `i` has its own
/// stream seeded with `seed + i` (wrapping), as AUTOMATIC1111 does and diffusers with a list of
/// generators.
pub struct BatchNoise {
    streams: Vec<Box<dyn NoiseSource>>,
    batch: usize,
}

impl BatchNoise {
    /// The streams for a batch of `batch` images from `seed` in `mode`.
    pub fn new(factory: &NoiseFactory, seed: u64, batch: usize, mode: NoiseMode) -> Self {
        let streams = match mode {
            NoiseMode::Batch => vec![factory(seed)],
            NoiseMode::PerImage => (0..batch).map(|i| factory(seed.wrapping_add(i as u64))).collect(),
        };
        Self { streams, batch }
    }

    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The next draw for the whole batch, `per_image` values per image, image after image (the
    /// flat `(batch, …)` tensor).
    pub fn next(&mut self, per_image: usize) -> Vec<f32> {
        if let [one] = self.streams.as_mut_slice() {
            return one.randn(self.batch * per_image);
        }
        let mut all = Vec::with_capacity(self.batch * per_image);
        for s in &mut self.streams {
            all.extend(s.randn(per_image));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    //! Against torch itself: `tests/fixtures/noise/batch.safetensors`, written by
    //! `tools/make_noise_fixtures.py`.

    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;
    use crate::rng::TorchCpuRng;

    /// The tensors of the batch fixture, flat.
    fn batch_fixture() -> HashMap<String, Vec<f32>> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/noise/batch.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture parses");
        st.tensors()
            .into_iter()
            .map(|(k, v)| (k, v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Batch mode draws a batch of two as torch's `randn((2, 4, h, w))` from one generator, bit
    /// for bit, and its next draw (an ancestral step's noise) continues that generator; at a
    /// size that is not a multiple of 16 this differs from two per-image draws in a row.
    #[test]
    fn batch_mode_is_one_torch_generator() {
        let f = batch_fixture();
        let mut noise = BatchNoise::new(&default_noise(), 42, 2, NoiseMode::Batch);
        assert_eq!(bits(&noise.next(4 * 16 * 16)), bits(&f["b2_4x16x16_call0"]));
        assert_eq!(bits(&noise.next(4 * 16 * 16)), bits(&f["b2_4x16x16_call1"]));
        let mut odd = BatchNoise::new(&default_noise(), 42, 2, NoiseMode::Batch);
        let drawn = odd.next(4 * 3 * 5);
        assert_eq!(bits(&drawn), bits(&f["b2_4x3x5"]));
        let mut g = TorchCpuRng::new(42);
        let consecutive: Vec<f32> = [g.randn(60), g.randn(60)].concat();
        assert_ne!(bits(&drawn), bits(&consecutive), "the size chosen should tell the two apart");
    }

    /// Per-image mode gives image i the noise of seed + i (torch's `randn((1, 4, h, w))` from
    /// `manual_seed(42 + i)`), its later draws included, whatever the batch size.
    #[test]
    fn per_image_mode_gives_image_i_seed_plus_i() {
        let f = batch_fixture();
        let n = 4 * 16 * 16;
        let mut noise = BatchNoise::new(&default_noise(), 42, 2, NoiseMode::PerImage);
        for call in 0..2 {
            let drawn = noise.next(n);
            assert_eq!(bits(&drawn[..n]), bits(&f[&format!("s42_4x16x16_call{call}")]), "image 0, draw {call}");
            assert_eq!(bits(&drawn[n..]), bits(&f[&format!("s43_4x16x16_call{call}")]), "image 1, draw {call}");
        }
        let odd = BatchNoise::new(&default_noise(), 42, 3, NoiseMode::PerImage).next(60);
        assert_eq!(bits(&odd[60..120]), bits(&f["s43_4x3x5"]));
        assert_eq!(bits(&odd[120..]), bits(&TorchCpuRng::new(44).randn(60)));
        // seeds wrap at 2^64 as seed + i does
        let top = BatchNoise::new(&default_noise(), u64::MAX, 2, NoiseMode::PerImage).next(16);
        assert_eq!(bits(&top[16..]), bits(&TorchCpuRng::new(0).randn(16)));
    }

    /// A batch of one draws the same noise in both modes.
    #[test]
    fn batch_of_one_is_the_same_in_both_modes() {
        let mut a = BatchNoise::new(&default_noise(), 7, 1, NoiseMode::Batch);
        let mut b = BatchNoise::new(&default_noise(), 7, 1, NoiseMode::PerImage);
        for n in [1024, 60, 5] {
            assert_eq!(bits(&a.next(n)), bits(&b.next(n)));
        }
    }
}
