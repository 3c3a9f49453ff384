//! CPU kernels the model code's hot paths run on when computing in f32: convolution as im2col
//! tiles fed to a matrix product ([`conv`]) and attention in blocks of query rows that never hold
//! a full score matrix ([`attention`]).
//!
//! One thread pool does the work: rayon's. candle also keeps a second, spinning pool for its
//! element-wise and quantized kernels; two busy pools on the same cores make each wait for the
//! other's threads (measured: 40% of a quantized run's CPU time spent spinning), so
//! [`use_one_pool`] turns candle's off (its remaining element-wise ops run on the calling thread;
//! the heavy ones are here).
//!
//! Both sit on the `gemm` crate (candle's own CPU matrix product) built with its AVX-512 kernels
//! (`x86-v4`, chosen at run time by CPU detection, so older CPUs take the AVX2 or SSE path), and
//! split work over rayon's pool: many independent tiles each run a single-threaded product; when
//! there are fewer tiles than threads the product itself is split instead.


use gemm::Parallelism;

/// Threads in rayon's global pool (candle's too; `RAYON_NUM_THREADS` sets it).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Turns candle's own CPU worker pool off (`CANDLE_NUM_THREADS=1`, unless the user set it), so
/// every parallel kernel runs on rayon's pool alone.
///
/// # Safety
/// Changes the process environment: call it first thing in `main`, before any other thread
/// exists.
pub unsafe fn use_one_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread is running yet
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Sizes the CPU kernels' pool (rayon's global one, which candle uses too) to `n` threads; call
/// it before any model runs.
///
/// # Errors
/// `n` is 0, or the pool has already started (then `RAYON_NUM_THREADS` is the way).
pub fn set_threads(n: usize) -> Result<(), String> {
    if n == 0 {
        return Err("threads must be at least 1".into());
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|_| "the CPU thread pool has already started; set RAYON_NUM_THREADS instead".to_string())
}

/// `n` zeroed f32 values, or an out-of-memory error naming `what` and the bytes when the
/// allocator refuses them (under an address-space limit) instead of aborting the process, as an
/// infallible allocation would. Zeroed pages come from the kernel untouched, as `vec![0.0; n]`.
///
/// # Errors
/// The allocation failed.
pub fn zeroed(n: usize, what: &str) -> candle_core::Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let fail = || candle_core::Error::Msg(format!("out of memory: {} for {what} could not be allocated", crate::human_bytes((n as u64).saturating_mul(4))));
    let layout = std::alloc::Layout::array::<f32>(n).map_err(|_| fail())?;
    // SAFETY: the layout has a non-zero size (n > 0)
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<f32>();
    if ptr.is_null() {
        return Err(fail());
    }
    // SAFETY: allocated just above by the global allocator with the layout of `n` f32 values, all
    // bits zero (0.0), so the Vec owns `n` initialized values and frees them with that layout
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// Bytes of scratch each CPU thread may hold inside a kernel at once: an attention score block
/// or a convolution's im2col tile (the larger), in f32. The planner counts this per thread.
pub fn scratch_bytes_per_thread() -> u64 {
    (attention::BLOCK_SCORES.max(conv::TILE_ELEMENTS) * 4) as u64
}

/// How to run one product when `tasks` of them run side by side: alone on the pool when the tasks
/// cannot fill it, single-threaded inside an already parallel loop otherwise.
pub(crate) fn inner_parallelism(tasks: usize) -> Parallelism {
    let t = threads();
    if tasks >= t || t == 1 { Parallelism::None } else { Parallelism::Rayon(t) }
}

/// Defines a function whose body is compiled three times, for AVX-512, for AVX2 with FMA and for
/// the build's baseline, and run in the widest this CPU has (chosen at run time, so one binary
/// serves every x86-64 CPU): the loops inside vectorize that wide.
macro_rules! wide_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_fn;

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod expand;
pub mod linear;
pub mod math;

/// A row-major matrix view for [`matmul`]: base pointer, row stride and column stride (elements).
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`; `accumulate` keeps what `dst` holds (a bias
/// written there first) and adds the product to it.
///
/// # Safety
/// Every view must address `m×k`, `k×n` and `m×n` valid elements with its strides, and `dst`
/// must not overlap the inputs nor be written by another thread during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    parallelism: Parallelism,
) {
    // gemm's convention: dst = alpha·dst + beta·lhs·rhs (alpha read only when read_dst)
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, dst_rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs, 1.0, 1.0, false,
            false, false, parallelism,
        );
    }
}

/// A raw output pointer that parallel tasks write through, each to its own disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub *mut f32);

// SAFETY: every user hands each task a disjoint region of the buffer and joins before reading it.
unsafe impl Send for SharedOut {}
// SAFETY: as above; the pointer itself is only copied.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    /// An allocation the system refuses is an error naming what it was for, not an abort; one it
    /// grants is all zeros.
    #[test]
    fn refused_allocation_is_an_error() {
        let e = super::zeroed(1 << 58, "a test's output").unwrap_err().to_string();
        assert!(e.contains("out of memory") && e.contains("a test's output") && e.contains("1048576.00 TiB"), "{e}");
        assert!(super::zeroed(usize::MAX / 2, "a huge output").is_err());
        let v = super::zeroed(1000, "a small output").unwrap();
        assert!(v.len() == 1000 && v.iter().all(|&x| x == 0.0));
    }
}
