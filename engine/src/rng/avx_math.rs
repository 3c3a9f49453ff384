//! One lane of torch's 16-wide Box-Muller (`NormalFill16<float>` for AVX2 in
//! `ATen/native/cpu/DistributionTemplates.h`), with the Cephes-style float `log` and `sincos`
//! polynomials of `ATen/native/cpu/avx_mathfun.h`.
//!
//! Every operation is done in the same order and with the same fused multiply-adds as the
//! machine code in torch 2.15's `libtorch_cpu.so` (read from its disassembly: GCC contracted
//! most `mul` + `add` pairs into `vfmadd`, but not all of them), so the results are bit-exact.
//! Where a comment says "separate", the product is rounded before the addition.

// The constants as torch's binary holds them (float bit patterns), with avx_mathfun.h's literals.
const SQRTHF: f32 = f32::from_bits(0x3f35_04f3); // 0.707106781186547524
const LOG_P: [f32; 9] = [
    f32::from_bits(0x3d90_21bb), // 7.0376836292E-2
    f32::from_bits(0xbdeb_d1b8), // -1.1514610310E-1
    f32::from_bits(0x3def_251a), // 1.1676998740E-1
    f32::from_bits(0xbdfe_5d4f), // -1.2420140846E-1
    f32::from_bits(0x3e11_e9bf), // 1.4249322787E-1
    f32::from_bits(0xbe2a_ae50), // -1.6668057665E-1
    f32::from_bits(0x3e4c_ceac), // 2.0000714765E-1
    f32::from_bits(0xbe7f_fffc), // -2.4999993993E-1
    f32::from_bits(0x3eaa_aaaa), // 3.3333331174E-1
];
const LOG_Q1: f32 = f32::from_bits(0xb95e_8083); // -2.12194440e-4
const LOG_Q2: f32 = f32::from_bits(0x3f31_8000); // 0.693359375
const MIN_NORM_POS: f32 = f32::MIN_POSITIVE; // 0x00800000

const FOPI: f32 = f32::from_bits(0x3fa2_f983); // 1.27323954473516 (4 / pi)
const DP1: f32 = f32::from_bits(0xbf49_0000); // -0.78515625
const DP2: f32 = f32::from_bits(0xb97d_a000); // -2.4187564849853515625e-4
const DP3: f32 = f32::from_bits(0xb322_2169); // -3.77489497744594108e-8
const SINCOF: [f32; 3] = [
    f32::from_bits(0xb94c_a1f9), // -1.9515295891E-4
    f32::from_bits(0x3c08_839e), // 8.3321608736E-3
    f32::from_bits(0xbe2a_aaa3), // -1.6666654611E-1
];
const COSCOF: [f32; 3] = [
    f32::from_bits(0x37cc_f5ce), // 2.443315711809948E-005
    f32::from_bits(0xbab6_061a), // -1.388731625493765E-003
    f32::from_bits(0x3d2a_aaa5), // 4.166664568298827E-002
];

/// `2.0f * c10::pi<double>` as torch's `two_pi_` holds it (0x40c90fdb).
const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;

/// `log256_ps` for one lane. `x` is in (0, 1] here; NaN for `x <= 0` as in torch.
#[inline]
pub(crate) fn log_ps(x: f32) -> f32 {
    let invalid = x <= 0.0;
    let x = if x > MIN_NORM_POS { x } else { MIN_NORM_POS }; // _mm256_max_ps(x, min_norm_pos)
    let bits = x.to_bits();
    let exponent = ((bits >> 23) as i32).wrapping_sub(0x7f);
    // Keep the mantissa, force the exponent of 0.5: x in [0.5, 1).
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x += -1.0; // torch adds the constant -1.0
    if below {
        e -= 1.0;
    }
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x; // separate
    y = y.mul_add(z, e * LOG_Q1); // e * q1 separate, then fused
    y = (-z).mul_add(0.5, y); // vfnmadd: y - z * 0.5
    x += y;
    x = e.mul_add(LOG_Q2, x);
    if invalid { f32::NAN } else { x }
}

/// `sincos256_ps` for one lane: `(sin(x), cos(x))`.
#[inline]
pub(crate) fn sincos_ps(x: f32) -> (f32, f32) {
    let sign_in = x.to_bits() & 0x8000_0000;
    let mut ax = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let scaled = ax * FOPI;
    let mut j = (scaled as i32).wrapping_add(1) & !1; // cvttps2dq, then (j + 1) & ~1
    let y = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let poly_is_cos = (j & 2) == 0; // poly_mask: lanes that take the cosine polynomial for sin
    let sign_sin = sign_in ^ swap_sign_sin;
    // Extended precision modular arithmetic, all three steps fused.
    ax = y.mul_add(DP1, ax);
    ax = y.mul_add(DP2, ax);
    ax = y.mul_add(DP3, ax);
    j = j.wrapping_sub(2);
    let sign_cos = ((!j & 4) as u32) << 29;

    let z = ax * ax;
    let half_z = z * 0.5;
    // Cosine polynomial (0 <= x <= pi/4).
    let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z; // separate
    yc = yc.mul_add(z, -half_z); // vfmsub: yc * z - z * 0.5
    yc += 1.0;
    // Sine polynomial.
    let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z; // separate
    ys = ys.mul_add(ax, ax);

    // Select with masks exactly as torch does (the sums below add an exact 0.0 to one side,
    // which matters only for the sign of zero).
    let ysin2 = if poly_is_cos { ys } else { 0.0 };
    let ysin1 = if poly_is_cos { 0.0 } else { yc };
    let ys_rest = ys - ysin2;
    let yc_rest = yc - ysin1;
    let sin = ysin1 + ysin2;
    let cos = ys_rest + yc_rest;
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

/// Box-Muller on one block of 16 uniforms in place, like torch's `NormalFill16<float>` (AVX2):
/// lanes `j` and `j + 8` form a pair for `j` in `0..8`.
pub(crate) fn normal_fill_16(data: &mut [f32], mean: f32, std: f32) {
    debug_assert_eq!(data.len(), 16);
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * log_ps(u1)).sqrt();
        let theta = TWO_PI * u2;
        let (sin, cos) = sincos_ps(theta);
        let n1 = radius * cos;
        let n2 = radius * sin;
        data[j] = n1.mul_add(std, mean);
        data[j + 8] = n2.mul_add(std, mean);
    }
}

#[cfg(test)]
mod tests {
    use super::{TWO_PI, log_ps, sincos_ps};

    /// `2 * pi` rounds to the float torch's binary holds (0x40c90fdb).
    #[test]
    fn two_pi_matches_torch_constant() {
        assert_eq!(TWO_PI.to_bits(), 0x40c9_0fdb);
    }

    /// The float log polynomial stays within a few ulp of the true log over (0, 1].
    #[test]
    fn log_is_accurate() {
        for i in 1..=1000 {
            let x = i as f32 / 1000.0;
            let got = log_ps(x) as f64;
            let want = (x as f64).ln();
            assert!(
                (got - want).abs() <= 4e-7 * want.abs().max(1e-3),
                "x={x} got={got} want={want}"
            );
        }
        assert!(log_ps(0.0).is_nan());
    }

    /// sincos agrees with f64 sin/cos to about 1e-7 over [0, 2*pi).
    #[test]
    fn sincos_is_accurate() {
        for i in 0..1000 {
            let x = i as f32 * (std::f32::consts::TAU / 1000.0);
            let (s, c) = sincos_ps(x);
            assert!((s as f64 - (x as f64).sin()).abs() < 3e-7, "sin({x})");
            assert!((c as f64 - (x as f64).cos()).abs() < 3e-7, "cos({x})");
        }
    }
}
