//! The 32-bit Mersenne Twister (MT19937) as torch's CPU generator runs it
//! (`ATen/core/MT19937RNGEngine.h`): seeded from the low 32 bits of the 64-bit seed, with the
//! state regenerated lazily when the first number after a refill is asked for.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// MT19937 state: 624 words and the index of the next one to temper.
#[derive(Clone)]
pub(crate) struct Mt19937 {
    state: [u32; N],
    /// Index of the next word to hand out; `N` means the state must be regenerated first.
    next: usize,
}

impl Mt19937 {
    /// Seeds like `at::mt19937(seed)`: only the low 32 bits of `seed` enter the state.
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        // torch starts with `left_ = 1`, so the very first draw regenerates the state.
        Mt19937 { state, next: N }
    }

    /// The next tempered 32-bit output (`CPUGeneratorImpl::random()`).
    #[inline]
    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// Two outputs joined, the first one high (`CPUGeneratorImpl::random64()`).
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32();
        let lo = self.next_u32();
        (u64::from(hi) << 32) | u64::from(lo)
    }

    fn regenerate(&mut self) {
        let twist = |u: u32, v: u32| -> u32 {
            let mixed = (u & UPPER_MASK) | (v & LOWER_MASK);
            (mixed >> 1) ^ if v & 1 != 0 { MATRIX_A } else { 0 }
        };
        for k in 0..N {
            let next = self.state[(k + 1) % N];
            self.state[k] = self.state[(k + M) % N] ^ twist(self.state[k], next);
        }
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Mt19937;

    /// The 10000th output of the reference MT19937 seeded with 5489 is 4123659995 (C++ std).
    #[test]
    fn matches_reference_10000th_output() {
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    /// Seeds that agree in their low 32 bits give the same stream, as in torch.
    #[test]
    fn only_low_32_bits_of_seed_matter() {
        let mut a = Mt19937::new(5);
        let mut b = Mt19937::new((1u64 << 32) + 5);
        let mut c = Mt19937::new(6);
        let (x, y, z) = (a.next_u32(), b.next_u32(), c.next_u32());
        assert_eq!(x, y);
        assert_ne!(x, z);
    }
}
