//! Weights stored narrower than f32 — f16, bf16 or GGML blocks — widened to f32 for one layer's
//! product on the CPU, into a buffer the calling thread keeps from one layer to the next.
//!
//! The products run in f32 (the fast kernels for a diffusion model's many rows), so a narrow
//! weight is expanded for each call. Doing that into a fresh allocation cost more than the
//! expansion itself: every call mapped new pages that the kernel had to zero (measured: a q4k
//! SD 1.5 step faulted in 3.4 GB of pages). Here the expansion is split across rayon's pool and
//! written into one grow-only buffer per thread, sized by the largest layer; [`release`] hands it
//! back when a stage ends (the worker calls it at every stage change and after a run). The
//! planner counts this buffer: the stage's own largest layer in f32.

use std::cell::RefCell;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8K,
    GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, Result, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Elements each task expands (256 KiB of f32: whole blocks of every GGML type).
const CHUNK: usize = 1 << 16;

thread_local! {
    static BUFFER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A layer's weight as it is held: a dense CPU tensor (f32, f16 or bf16, contiguous) or GGML
/// blocks.
#[derive(Clone, Copy)]
pub enum Stored<'a> {
    Dense(&'a Tensor),
    Blocks(&'a QTensor),
}

/// Calls `f` with the weight's values in f32, in its stored element order: an f32 tensor's own
/// memory, anything narrower expanded into the calling thread's buffer.
///
/// # Errors
/// A weight not on the CPU, strided, or of a type with no f32 expansion.
pub fn with_f32<R>(weight: Stored<'_>, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    match weight {
        Stored::Dense(t) => {
            let (storage, layout) = t.storage_and_layout();
            let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) else {
                candle_core::bail!("expected a contiguous CPU weight, got {:?} on {:?}", layout.dims(), t.device());
            };
            match cpu {
                CpuStorage::F32(v) => Ok(f(&v[a..b])),
                CpuStorage::F16(v) => with_buffer(b - a, |out| { widen(&v[a..b], out); Ok(()) }, f),
                CpuStorage::BF16(v) => with_buffer(b - a, |out| { widen(&v[a..b], out); Ok(()) }, f),
                _ => candle_core::bail!("a {:?} weight has no f32 expansion", t.dtype()),
            }
        }
        Stored::Blocks(q) => {
            let n = q.shape().elem_count();
            let bytes = q.data()?;
            with_buffer(n, |out| dequantize(q.dtype(), &bytes, out), f)
        }
    }
}

/// Frees the calling thread's expansion buffer (a stage's or a run's end: it is as large as the
/// largest layer widened since the last release, in f32).
pub fn release() {
    BUFFER.with(|b| *b.borrow_mut() = Vec::new());
}

/// Bytes the calling thread's buffer holds now.
pub fn held_bytes() -> usize {
    BUFFER.with(|b| b.borrow().capacity() * 4)
}

/// Runs `fill` then, when it succeeded, `f` on the first `n` elements of the thread's buffer,
/// grown when short. A nested call (none today) would find the buffer taken and use a fresh one.
fn with_buffer<R>(n: usize, fill: impl FnOnce(&mut [f32]) -> Result<()>, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let mut buf = BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < n {
        // exactly the layer: growing by doubling would hold up to twice the largest layer
        buf.reserve_exact(n - buf.len());
        buf.resize(n, 0.0);
    }
    let r = fill(&mut buf[..n]).map(|()| f(&buf[..n]));
    BUFFER.with(|b| {
        let mut held = b.borrow_mut();
        if held.capacity() < buf.capacity() {
            *held = buf;
        }
    });
    r
}

/// f16 or bf16 values to f32, split across the pool.
fn widen<T: Sync>(src: &[T], out: &mut [f32])
where
    [T]: HalfFloatSliceExt,
{
    out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, s)| s.convert_to_f32_slice(o));
}

/// GGML blocks of type `dtype` (a quantized tensor's storage) to their f32 values.
///
/// # Errors
/// A type with no dequantization (`Q8_1`), or bytes that are not whole blocks for `out`.
pub fn dequantize(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    match dtype {
        GgmlDType::F32 => blocks::<f32>(bytes, out),
        GgmlDType::F16 => blocks::<half::f16>(bytes, out),
        GgmlDType::BF16 => blocks::<half::bf16>(bytes, out),
        GgmlDType::Q4_0 => blocks::<BlockQ4_0>(bytes, out),
        GgmlDType::Q4_1 => blocks::<BlockQ4_1>(bytes, out),
        GgmlDType::Q5_0 => blocks::<BlockQ5_0>(bytes, out),
        GgmlDType::Q5_1 => blocks::<BlockQ5_1>(bytes, out),
        GgmlDType::Q8_0 => blocks::<BlockQ8_0>(bytes, out),
        GgmlDType::Q2K => blocks::<BlockQ2K>(bytes, out),
        GgmlDType::Q3K => blocks::<BlockQ3K>(bytes, out),
        GgmlDType::Q4K => blocks::<BlockQ4K>(bytes, out),
        GgmlDType::Q5K => blocks::<BlockQ5K>(bytes, out),
        GgmlDType::Q6K => blocks::<BlockQ6K>(bytes, out),
        GgmlDType::Q8K => blocks::<BlockQ8K>(bytes, out),
        GgmlDType::Q8_1 => candle_core::bail!("GGML type Q8_1 has no f32 expansion"),
    }
}

/// [`dequantize`] for one block type: whole chunks of blocks per task.
fn blocks<T: GgmlType + Sync>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let size = std::mem::size_of::<T>();
    let n_blocks = out.len() / T::BLCK_SIZE;
    if !out.len().is_multiple_of(T::BLCK_SIZE) || bytes.len() != n_blocks * size {
        candle_core::bail!(
            "{:?}: {} bytes are not the {n_blocks} blocks of {} values",
            T::DTYPE,
            bytes.len(),
            out.len()
        );
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        candle_core::bail!("{:?}: block storage is not aligned", T::DTYPE);
    }
    // SAFETY: size and alignment are checked above, and every GGML block type is plain data
    // (integers and halves) for which any bit pattern is a value
    let xs = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n_blocks) };
    let per_task = (CHUNK / T::BLCK_SIZE).max(1);
    out.par_chunks_mut(per_task * T::BLCK_SIZE)
        .zip(xs.par_chunks(per_task))
        .for_each(|(o, x)| T::to_float(x, o));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Every block type candle quantizes to expands exactly as candle's own dequantization does,
    /// over more blocks than one task takes.
    #[test]
    fn blocks_match_candle() {
        let dev = Device::Cpu;
        let t = Tensor::randn(0f32, 1., (6, 3 * CHUNK / 4), &dev).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::F16,
        ] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let want = q.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = with_f32(Stored::Blocks(&q), <[f32]>::to_vec).unwrap();
            assert_eq!(got.len(), want.len());
            assert_eq!(max_diff(&got, &want), 0.0, "{dtype:?}");
        }
    }

    /// f16 and bf16 tensors widen exactly; an f32 one is lent as it is; the buffer is kept for
    /// the next call and freed by `release`.
    #[test]
    fn dense_widens_and_buffer_is_reused() {
        let dev = Device::Cpu;
        let t = Tensor::randn(0f32, 3., (3, 70_000), &dev).unwrap();
        let want = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let lent = with_f32(Stored::Dense(&t), |w| w.as_ptr()).unwrap();
        let own = match &*t.storage_and_layout().0 {
            Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr(),
            _ => unreachable!("randn gives f32 on the CPU"),
        };
        assert_eq!(lent, own);
        for dt in [DType::F16, DType::BF16] {
            let h = t.to_dtype(dt).unwrap();
            let cast = h.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = with_f32(Stored::Dense(&h), <[f32]>::to_vec).unwrap();
            assert_eq!(got, cast, "{dt:?}");
            // and is the original within the narrow type's rounding: bf16 keeps 8 bits, and an
            // f16 subnormal is off by up to half its step, 2^-25, however small the value
            let close = |g: f32, w: f32| (g - w).abs() <= w.abs() / 128.0 + 2f32.powi(-25);
            assert!(got.iter().zip(&want).all(|(&g, &w)| close(g, w)), "{dt:?}");
        }
        assert_eq!(held_bytes(), 3 * 70_000 * 4);
        // a smaller weight reuses the buffer
        let small = t.narrow(0, 0, 1).unwrap().to_dtype(DType::F16).unwrap();
        with_f32(Stored::Dense(&small), |w| assert_eq!(w.len(), 70_000)).unwrap();
        assert_eq!(held_bytes(), 3 * 70_000 * 4);
        release();
        assert_eq!(held_bytes(), 0);
    }

    /// Strided weights and types with no expansion are errors, not wrong values.
    #[test]
    fn unsupported_weights_are_errors() {
        let t = Tensor::randn(0f32, 1., (4, 6), &Device::Cpu).unwrap();
        let e = with_f32(Stored::Dense(&t.t().unwrap()), |_| ()).unwrap_err().to_string();
        assert!(e.contains("contiguous"), "{e}");
        let u = Tensor::zeros((4, 6), DType::U8, &Device::Cpu).unwrap();
        let e = with_f32(Stored::Dense(&u), |_| ()).unwrap_err().to_string();
        assert!(e.contains("U8"), "{e}");
        let mut out = vec![0f32; 32];
        assert!(dequantize(GgmlDType::Q8_0, &[0u8; 33], &mut out).is_err());
    }

    /// Prints each type's expansion rate on this machine (`cargo test --release -p
    /// headroom-engine --lib time_expansion -- --ignored --nocapture`): an SD 1.5 step expands
    /// about 0.86 G weights.
    #[test]
    #[ignore]
    fn time_expansion() {
        let t = Tensor::randn(0f32, 1., (1280, 11_520), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q6K, GgmlDType::Q5K, GgmlDType::Q4K, GgmlDType::Q4_0, GgmlDType::F16] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            with_f32(Stored::Blocks(&q), |_| ()).unwrap();
            let start = std::time::Instant::now();
            for _ in 0..10 {
                with_f32(Stored::Blocks(&q), |w| std::hint::black_box(w[0])).unwrap();
            }
            let rate = 10.0 * t.elem_count() as f64 / start.elapsed().as_secs_f64() / 1e9;
            println!("{dtype:?}: {rate:.2} G weights/s on {} threads", super::super::threads());
        }
        release();
    }
}
