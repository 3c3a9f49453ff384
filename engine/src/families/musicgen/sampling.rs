//! Choosing a token from logits as transformers' sampling warpers filter them — temperature, then
//! top-k (ties with the k-th kept), then top-p (the smallest set of likeliest tokens whose
//! probability reaches `top_p`, at least one) — and drawing from the filtered softmax with the
//! engine's seeded generator ([`TorchCpuRng::rand_f64`], one uniform per token by inverse CDF).
//! Greedy (`top_k = 1` or temperature 0) is the first largest logit, as `argmax`.

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

    /// The distribution tokens are drawn from: the softmax of the filtered logits (0 for tokens
    /// filtered out), in f64.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f64> {
        if self.is_greedy() {
            let mut p = vec![0.0; logits.len()];
            if let Some(i) = argmax(logits) {
                p[i] = 1.0;
            }
            return p;
        }
        let scaled: Vec<f32> = logits.iter().map(|l| l / self.temperature).collect();
        let mut keep: Vec<bool> = scaled.iter().map(|l| !l.is_nan()).collect();
        if self.top_k > 0 && self.top_k < scaled.len() {
            let mut sorted: Vec<f32> = scaled.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[self.top_k - 1];
            for (k, l) in keep.iter_mut().zip(&scaled) {
                *k &= *l >= kth;
            }
        }
        let mut probs = softmax(&scaled, &keep);
        if self.top_p < 1.0 {
            // ascending, as transformers sorts: drop while the running sum stays ≤ 1 − top_p,
            // never the likeliest
            let mut order: Vec<usize> = (0..scaled.len()).filter(|&i| keep[i]).collect();
            order.sort_by(|&a, &b| scaled[a].total_cmp(&scaled[b]));
            let mut cum = 0.0;
            for &i in &order[..order.len().saturating_sub(1)] {
                cum += probs[i];
                if cum <= 1.0 - self.top_p as f64 {
                    keep[i] = false;
                }
            }
            probs = softmax(&scaled, &keep);
        }
        probs
    }

    /// The next token for `logits`, drawing one uniform from `rng` unless greedy.
    pub fn pick(&self, logits: &[f32], rng: &mut TorchCpuRng) -> usize {
        if self.is_greedy() {
            return argmax(logits).unwrap_or(0);
        }
        let probs = self.probabilities(logits);
        let u = rng.rand_f64();
        let mut cum = 0.0;
        let mut last = 0;
        for (i, p) in probs.iter().enumerate() {
            if *p > 0.0 {
                cum += p;
                last = i;
                if u < cum {
                    return i;
                }
            }
        }
        last
    }
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

/// Softmax over the kept entries, 0 elsewhere.
fn softmax(logits: &[f32], keep: &[bool]) -> Vec<f64> {
    let max = logits.iter().zip(keep).filter(|(_, k)| **k).map(|(l, _)| *l as f64).fold(f64::NEG_INFINITY, f64::max);
    let mut out: Vec<f64> = logits.iter().zip(keep).map(|(l, k)| if *k { (*l as f64 - max).exp() } else { 0.0 }).collect();
    let sum: f64 = out.iter().sum();
    if sum > 0.0 {
        out.iter_mut().for_each(|p| *p /= sum);
    }
    out
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
