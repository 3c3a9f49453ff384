//! Branch-free `exp` and `erf` in f32 that the compiler vectorizes inside the kernels' loops
//! (libm's are function calls, one value at a time).

/// `eˣ` with relative error below 5e-7, branch-free so it vectorizes: `eˣ = 2ʳ · eᵍ` with
/// `r = round(x·log₂e)` put into the exponent bits and `g = x − r·ln 2` (in two parts, so it
/// stays exact) in [−0.35, 0.35] through a degree-6 polynomial. Inputs below −87 give 0, above
/// 88 give e⁸⁸ (no infinities).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // round-to-nearest by the 1.5·2²³ trick (no libm call, no SSE4.1 needed)
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let r = (xc * LOG2E + ROUND) - ROUND;
    let g = (xc - r * LN2_HI) - r * LN2_LO;
    let p = 1.0 + g * (1.0 + g * (0.5 + g * (1.0 / 6.0 + g * (1.0 / 24.0 + g * (1.0 / 120.0 + g * (1.0 / 720.0))))));
    let bits = ((r as i32 + 127) as u32) << 23;
    let y = f32::from_bits(bits) * p;
    if x < -87.0 { 0.0 } else { y }
}

/// `erf(x)` with absolute error below 1e-6 (Abramowitz and Stegun 7.1.26 on [`exp`]),
/// branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// GELU with the exact (erf) form: `x · ½ (1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast `exp` is within 5e-7 relative of the standard one over [−87, 87], flushes to zero
    /// below −87 and stays finite above 88.
    #[test]
    fn exp_accuracy() {
        let mut worst = 0f32;
        for i in -200_000..=200_000 {
            let x = 87.0 * i as f32 / 200_000.0;
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "{worst}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(1000.0).is_finite());
    }

    /// The fast `erf` is within 1e-6 of libm's over [−6, 6], odd, and GELU follows it.
    #[test]
    fn erf_accuracy() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max((f64::from(erf(x)) - libm_erf(f64::from(x))).abs());
        }
        assert!(worst < 1e-6, "{worst}");
        assert!(erf(0.0).abs() < 1e-6 && (erf(-2.0) + erf(2.0)).abs() < 1e-7);
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
    }

    /// erf by its series (|x| < 3) or continued fraction, in f64, as the reference.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            // Maclaurin series: 2/√π Σ (−1)ⁿ x²ⁿ⁺¹ / (n! (2n+1))
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), accurate for large |x|
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * (a + f))
        };
        v.copysign(x)
    }
}
