//! Choosing a token from logits as transformers' sampling does: the warpers — temperature, then
//! top-k (ties with the k-th kept), then top-p (ascending cumulative softmax in f32, tokens at
//! or below `1 − top_p` dropped, the likeliest always kept) — leave −∞ where they filter, and the
//! draw is `torch.multinomial(softmax, 1)`'s: one exponential per token from the engine's torch
//! CPU generator (`−log(1 − u)`, u a double uniform, as torch's `exponential_`), the token whose
//! probability over its exponential is largest. So with the seed transformers' generator had,
//! the engine draws transformers' tokens. Greedy (`top_k = 1` or temperature 0) is the first
//! largest logit, as `argmax`, and draws nothing.

use crate::rng::TorchCpuRng;

/// How tokens are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Logits are divided by it; 0 is greedy.
    pub temperature: f32,
    /// Keep the `top_k` likeliest (0: all).
    pub top_k: usize,
    /// Keep the likeliest whose probabilities reach `top_p` (1: all).
    pub top_p: f32,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling { temperature: 1.0, top_k: 1, top_p: 1.0 };

    /// Whether this always takes the likeliest token.
    pub fn is_greedy(&self) -> bool {
        self.top_k == 1 || self.temperature <= 0.0
    }

    /// The logits as transformers' temperature, top-k and top-p warpers leave them: divided by
    /// the temperature, −∞ where filtered out.
    pub fn filtered(&self, logits: &[f32]) -> Vec<f32> {
        let mut scaled: Vec<f32> = logits.iter().map(|l| l / self.temperature).collect();
        if self.top_k > 0 && self.top_k < scaled.len() {
            let mut sorted = scaled.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[self.top_k - 1];
            scaled.iter_mut().filter(|l| **l < kth).for_each(|l| *l = f32::NEG_INFINITY);
        }
        if self.top_p < 1.0 {
            let mut order: Vec<usize> = (0..scaled.len()).collect();
            order.sort_by(|&a, &b| scaled[a].total_cmp(&scaled[b]));
            let sorted: Vec<f32> = order.iter().map(|&i| scaled[i]).collect();
            // transformers compares with `1 - top_p` of the Python float the user wrote
            let top_p: f64 = self.top_p.to_string().parse().unwrap_or(self.top_p as f64);
            let cut = (1.0 - top_p) as f32;
            let mut cum = 0f32;
            let probs = softmax_f32(&sorted);
            for (n, &i) in order.iter().enumerate().take(order.len().saturating_sub(1)) {
                cum += probs[n];
                if cum <= cut {
                    scaled[i] = f32::NEG_INFINITY;
                }
            }
        }
        scaled
    }

    /// The distribution tokens are drawn from: the softmax of [`Sampling::filtered`] (0 where
    /// filtered), in f64; all on the likeliest token when greedy.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f64> {
        if self.is_greedy() {
            let mut p = vec![0.0; logits.len()];
            if let Some(i) = argmax(logits) {
                p[i] = 1.0;
            }
            return p;
        }
        let f = self.filtered(logits);
        let max = f.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
        let e: Vec<f64> = f.iter().map(|&l| if l == f32::NEG_INFINITY { 0.0 } else { (l as f64 - max).exp() }).collect();
        let sum: f64 = e.iter().sum();
        e.into_iter().map(|x| x / sum).collect()
    }

    /// The next token for `logits`: greedy, or `torch.multinomial` of the filtered softmax
    /// drawing one exponential per token from `rng`.
    pub fn pick(&self, logits: &[f32], rng: &mut TorchCpuRng) -> usize {
        if self.is_greedy() {
            return argmax(logits).unwrap_or(0);
        }
        let probs = softmax_f32(&self.filtered(logits));
        let ratios: Vec<f32> = probs.iter().map(|&p| p / (-(-rng.rand_f64()).ln_1p()) as f32).collect();
        argmax(&ratios).unwrap_or(0)
    }
}

/// Softmax in f32 (−∞ entries get 0).
fn softmax_f32(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    let e: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// The first index of the largest value (NaN never wins).
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|b| *v > values[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Top-k keeps the k likeliest, top-p the smallest likeliest set reaching p, temperature
    /// flattens: each against hand-computed distributions.
    #[test]
    fn filters_as_transformers() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, 3.0];
        let s = Sampling { temperature: 1.0, top_k: 2, top_p: 1.0 };
        let p = s.probabilities(&logits);
        let e = (1.0f64).exp();
        assert!((p[4] - e / (e + 1.0)).abs() < 1e-12 && (p[0] - 1.0 / (e + 1.0)).abs() < 1e-12);
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
        // softmax of [2,1,0,-1,3] ≈ [.237,.087,.032,.012,.645]: top_p 0.8 keeps {4, 0}; 0.6 keeps {4}
        let p = Sampling { temperature: 1.0, top_k: 0, top_p: 0.8 }.probabilities(&logits);
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2, "{p:?}");
        assert!(p[4] > 0.0 && p[0] > 0.0);
        let p = Sampling { temperature: 1.0, top_k: 0, top_p: 0.6 }.probabilities(&logits);
        assert_eq!(p, vec![0.0, 0.0, 0.0, 0.0, 1.0]);
        let hot = Sampling { temperature: 100.0, top_k: 0, top_p: 1.0 }.probabilities(&logits);
        assert!(hot.iter().all(|&x| (x - 0.2).abs() < 0.01), "{hot:?}");
        // ties with the k-th are kept, as transformers' `< kth` mask keeps them
        let p = Sampling { temperature: 1.0, top_k: 2, top_p: 1.0 }.probabilities(&[1.0, 1.0, 1.0, 0.0]);
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 3);
        assert_eq!(Sampling::GREEDY.pick(&[0.0, 5.0, 5.0], &mut TorchCpuRng::new(0)), 1);
    }

    /// Token frequencies over 200 000 seeded draws follow the filtered softmax: for every token
    /// the count is within 6 standard deviations of its expectation (a false alarm is below
    /// 1e-8 per token, and the seed is fixed), filtered tokens never drawn; and a sampler that
    /// ignored top-k, or drew from the unfiltered softmax, would be caught.
    #[test]
    fn draws_follow_the_filtered_softmax() {
        let logits: Vec<f32> = (0..12).map(|i| ((i * 7 % 12) as f32) * 0.4 - 2.0).collect();
        let n = 200_000usize;
        for s in [
            Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 },
            Sampling { temperature: 0.7, top_k: 5, top_p: 1.0 },
            Sampling { temperature: 1.3, top_k: 0, top_p: 0.75 },
            Sampling { temperature: 1.0, top_k: 8, top_p: 0.9 },
        ] {
            let want = s.probabilities(&logits);
            let mut rng = TorchCpuRng::new(1234);
            let mut counts = vec![0usize; logits.len()];
            for _ in 0..n {
                counts[s.pick(&logits, &mut rng)] += 1;
            }
            for (i, (&c, &p)) in counts.iter().zip(&want).enumerate() {
                let mean = p * n as f64;
                let sd = (n as f64 * p * (1.0 - p)).sqrt();
                if p == 0.0 {
                    assert_eq!(c, 0, "{s:?}: token {i} is filtered out but was drawn");
                } else {
                    assert!((c as f64 - mean).abs() <= 6.0 * sd + 1.0, "{s:?}: token {i} drawn {c}, expected {mean:.0} ± {sd:.0}");
                }
            }
            // the filters really filter: the unfiltered softmax is far from these counts
            if s.top_k > 0 || s.top_p < 1.0 {
                let plain = Sampling { top_k: 0, top_p: 1.0, ..s }.probabilities(&logits);
                let far = counts.iter().zip(&plain).any(|(&c, &p)| (c as f64 - p * n as f64).abs() > 6.0 * (n as f64 * p * (1.0 - p)).sqrt() + 1.0);
                assert!(far, "{s:?}: counts also fit the unfiltered softmax");
            }
        }
    }

    /// The same seed draws the same tokens; another seed other tokens.
    #[test]
    fn seeded_draws_repeat() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Sampling { temperature: 1.0, top_k: 20, top_p: 0.95 };
        let draw = |seed| {
            let mut rng = TorchCpuRng::new(seed);
            (0..64).map(|_| s.pick(&logits, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
