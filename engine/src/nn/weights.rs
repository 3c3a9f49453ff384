//! [`Weights`]: where a model constructor reads its tensors, and how it should store them.
//!
//! Every model constructor takes a `Weights` instead of a bare `candle_nn::VarBuilder`, so that
//! the knobs that decide how a component's weights are held (precision, later placement) reach
//! every layer through one explicit value rather than a global. Each tensor is read from the
//! memory-mapped file, converted or quantized, and the source dropped, one tensor at a time; a
//! [`Ledger`] shared by all prefixes of one component counts what was really kept.
//!
//! A source that can hand tensors over as its file stores them (a GGUF, [`StoredSource`]) is
//! read as stored instead ([`Weights::as_stored`]): GGML blocks become quantized weights from the
//! file's own bytes, f16/bf16/f32 stay in their stored dtype; only a tensor a layer cannot use
//! as stored (a quantized norm or embedding table) is widened, and the ledger lists it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::cancel::CancelCheck;
use crate::knobs::Precision;

/// What one component's loader kept: resident bytes and tensors per storage type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Bytes held by the loaded tensors (quantized storage as stored, dense as elements × size).
    pub bytes: u64,
    /// Number of tensors per storage type name (`q4k`, `q4_0`, `f16`, `f32` …).
    pub tensors: BTreeMap<&'static str, usize>,
    /// Full names of tensors holding NaN or infinite values.
    pub non_finite: Vec<String>,
    /// Tensors read as stored ([`Weights::as_stored`]) that had to be held in another type.
    pub widened: Vec<Widened>,
}

/// A tensor a layer could not use as its file stores it, held in another type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Widened {
    /// The component's full name of the tensor.
    pub name: String,
    /// Its stored type (`q8_0`, `f16` …) and the type it is held in.
    pub from: &'static str,
    pub to: &'static str,
    /// Bytes in the file and bytes held.
    pub stored_bytes: u64,
    pub held_bytes: u64,
}

impl Ledger {
    fn add(&mut self, kind: Precision, bytes: u64) {
        self.add_named(kind.name(), bytes);
    }

    fn add_named(&mut self, kind: &'static str, bytes: u64) {
        self.bytes += bytes;
        *self.tensors.entry(kind).or_insert(0) += 1;
    }

    /// Bytes held beyond what the file stores for the widened tensors (negative when narrowed).
    pub fn widened_extra_bytes(&self) -> i64 {
        self.widened.iter().map(|w| w.held_bytes as i64 - w.stored_bytes as i64).sum()
    }

    /// "3 tensors (norms, biases, embedding tables) held wider than stored: q8_0 → f32 on 2,
    /// f16 → f32 on 1 (+1.2 KiB; first: …)", or `None` when nothing was.
    pub fn widened_summary(&self) -> Option<String> {
        let first = self.widened.first()?;
        let mut by: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for w in &self.widened {
            *by.entry((w.from, w.to)).or_insert(0) += 1;
        }
        let kinds: Vec<String> = by.iter().map(|((f, t), n)| format!("{f} → {t} on {n}")).collect();
        let extra = self.widened_extra_bytes();
        let sign = if extra < 0 { "-" } else { "+" };
        Some(format!(
            "{} tensor(s) a layer cannot use as stored (norms, biases, embedding tables) held wider: {} \
             ({sign}{}; first: {})",
            self.widened.len(),
            kinds.join(", "),
            crate::formats::human_bytes(extra.unsigned_abs()),
            first.name
        ))
    }

    /// "q4k on 112 tensors, q4_0 on 30, f16 on 6, f32 on 200": quantized types first, each group
    /// most-used first.
    pub fn summary(&self) -> String {
        let mut parts: Vec<(&str, usize)> = self.tensors.iter().map(|(k, v)| (*k, *v)).collect();
        parts.sort_by_key(|&(k, n)| (matches!(k, "f32" | "f16" | "bf16"), std::cmp::Reverse(n), k));
        parts
            .iter()
            .enumerate()
            .map(|(i, (k, n))| if i == 0 { format!("{k} on {n} tensors") } else { format!("{k} on {n}") })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A weight matrix as [`Weights::matrix`] hands it to a layer.
#[derive(Debug)]
pub enum StoredWeight {
    /// Dense, in the storage dtype (which may be narrower than the compute dtype: the layer
    /// converts it at use).
    Dense(Tensor),
    /// Quantized row by row, rows being everything after the first dimension; shaped
    /// `(out, row)`, the layer restores its own shape when it dequantizes.
    Quantized(QTensor),
}

/// A source that hands tensors over as its file stores them (a GGUF's tensors): dense in their
/// stored float dtype, or GGML blocks.
pub trait StoredSource: Send + Sync {
    /// Tensor `name` (the component's full name, as the `VarBuilder` would be asked for it) as
    /// stored, on `device`: a dense f32/f16/bf16 tensor, or blocks shaped `(first dimension,
    /// the rest)`.
    ///
    /// # Errors
    /// A name the source does not hold, or a type it cannot hand over.
    fn stored(&self, name: &str, device: &Device) -> Result<StoredWeight>;
}

/// A component's tensor source (a prefixed `VarBuilder` whose dtype is the compute dtype), its
/// precision, and the ledger of what its layers hold.
#[derive(Clone)]
pub struct Weights<'a> {
    vb: VarBuilder<'a>,
    precision: Precision,
    ledger: Arc<Mutex<Ledger>>,
    /// Asked before each tensor is read: a cancelled load stops within one tensor.
    cancel: Option<CancelCheck>,
    /// When set, tensors are read from here as stored ([`Weights::as_stored`]).
    stored: Option<Arc<dyn StoredSource>>,
}

impl<'a> Weights<'a> {
    /// Weights stored as [`crate::families::holding`] decided: `F32` meaning "as computed"
    /// (`vb`'s dtype, [`Weights::new`]), anything else [`Weights::with_precision`].
    pub fn stored_as(vb: VarBuilder<'a>, storage: Precision) -> Self {
        if storage == Precision::F32 { Self::new(vb) } else { Self::with_precision(vb, storage) }
    }

    /// Dense weights stored in `vb`'s dtype.
    pub fn new(vb: VarBuilder<'a>) -> Self {
        let precision = precision_of(vb.dtype());
        Self::with_precision(vb, precision)
    }

    /// Weights stored per [`Precision::for_tensor`] at `precision` (a concrete one; `auto` is
    /// taken as f32) and computed in `vb`'s dtype.
    pub fn with_precision(vb: VarBuilder<'a>, precision: Precision) -> Self {
        let precision = if precision == Precision::Auto { Precision::F32 } else { precision };
        Self { vb, precision, ledger: Arc::default(), cancel: None, stored: None }
    }

    /// Weights kept as `source` stores them, computed in `vb`'s dtype (precision `auto` on a
    /// GGUF): a block-quantized matrix becomes a quantized layer weight from the stored bytes (never
    /// dequantized and quantized again), a dense one stays in its stored dtype (the layers widen it
    /// per call). A tensor read with [`Weights::get`] or [`Weights::get_compute`] that a layer
    /// cannot use as stored is converted and listed in [`Ledger::widened`]. `vb` must serve the
    /// same names (it answers [`Weights::contains_tensor`]).
    pub fn as_stored(vb: VarBuilder<'a>, source: Arc<dyn StoredSource>) -> Self {
        Self { vb, precision: Precision::F32, ledger: Arc::default(), cancel: None, stored: Some(source) }
    }

    /// Whether tensors are kept as their source stores them ([`Weights::as_stored`]).
    pub fn is_as_stored(&self) -> bool {
        self.stored.is_some()
    }

    /// These weights, refusing to read another tensor once `cancel` says so (the error says
    /// "cancelled"; the loader turns it into [`crate::Error::Cancelled`]).
    pub fn with_cancel(self, cancel: CancelCheck) -> Self {
        Self { cancel: Some(cancel), ..self }
    }

    /// These weights without a cancel check: for a source kept past its load (a streamed block
    /// read at each run), which the load's cancel must not stop.
    pub fn without_cancel(self) -> Self {
        Self { cancel: None, ..self }
    }

    /// The same source and rules over `vb` (e.g. the same file on another device or dtype), with
    /// a ledger of its own: for weights held elsewhere (split blocks) or built and dropped again
    /// (streamed blocks), which must not count as this component's resident bytes.
    pub fn detached(&self, vb: VarBuilder<'a>) -> Self {
        Self { vb, precision: self.precision, ledger: Arc::default(), cancel: self.cancel.clone(), stored: self.stored.clone() }
    }

    /// The same source and rules under the prefix `name` (`vb.pp`), sharing the ledger.
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        Self {
            vb: self.vb.pp(name),
            precision: self.precision,
            ledger: self.ledger.clone(),
            cancel: self.cancel.clone(),
            stored: self.stored.clone(),
        }
    }

    /// The underlying builder (no storage rule, nothing counted).
    pub fn vb(&self) -> &VarBuilder<'a> {
        &self.vb
    }

    /// What has been loaded through this component's `Weights` so far.
    pub fn ledger(&self) -> Ledger {
        self.ledger.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The precision the component asked for.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn full_name(&self, name: &str) -> String {
        let prefix = self.vb.prefix();
        if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
    }

    /// Notes `t` in the ledger when it holds a NaN or an infinity, so a broken checkpoint is named
    /// at load instead of failing later. On the CPU it scans the values in place; elsewhere
    /// `t − t` sums to a finite value only when every value is.
    #[allow(clippy::eq_op)] // `t - t` is the point: it is NaN exactly where `t` is not finite
    fn check_finite(&self, t: &Tensor, name: &str) -> Result<()> {
        let finite = match cpu_all_finite(t) {
            Some(f) => f,
            None => (t - t)?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?.is_finite(),
        };
        if !finite
            && let Ok(mut l) = self.ledger.lock()
        {
            l.non_finite.push(self.full_name(name));
        }
        Ok(())
    }

    /// Fails once the load is cancelled; asked before each tensor is read.
    fn go_on(&self) -> Result<()> {
        if self.cancel.as_ref().is_some_and(CancelCheck::is_cancelled) {
            candle_core::bail!("cancelled");
        }
        Ok(())
    }

    fn record(&self, kind: Precision, bytes: usize) {
        if let Ok(mut l) = self.ledger.lock() {
            l.add(kind, bytes as u64);
        }
    }

    /// The type `name` of `shape` is stored in under this component's precision.
    fn storage(&self, shape: &Shape, name: &str) -> Precision {
        let dims: Vec<u64> = shape.dims().iter().map(|&d| d as u64).collect();
        self.precision.for_tensor(&self.full_name(name), &dims)
    }

    fn dense_dtype(&self, p: Precision) -> DType {
        match p {
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
            Precision::F32 => DType::F32,
            _ => self.vb.dtype(),
        }
    }

    /// A tensor that is never quantized (bias, norm, embedding table), in the dense type the
    /// storage rule gives it: the compute dtype, or f16 for embedding tables under a quantized
    /// precision. Callers convert it to the compute dtype where they use it.
    ///
    /// # Errors
    /// A missing tensor or one of the wrong shape.
    pub fn get<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        self.go_on()?;
        let shape = shape.into();
        if let Some(src) = &self.stored {
            // dense as stored where the compute dtype is f32 (the CPU: every use widens), else
            // in the compute dtype; blocks are dequantized (no layer looks blocks up or adds them)
            let keep = |t: &Tensor| self.vb.dtype() == DType::F32 && t.dtype() != DType::F64;
            return self.read_stored(src.as_ref(), &shape, name, keep);
        }
        let p = self.storage(&shape, name);
        // a matrix read here is held dense even if the rule would quantize it: count what is held
        let (dtype, kind) = if p.is_quantized() {
            (self.vb.dtype(), precision_of(self.vb.dtype()))
        } else {
            (self.dense_dtype(p), p)
        };
        let t = self.vb.get_with_hints_dtype(shape, name, Default::default(), dtype)?;
        self.check_finite(&t, name)?;
        self.record(kind, t.elem_count() * dtype.size_in_bytes());
        Ok(t)
    }

    /// A tensor read in the compute dtype whatever the storage rule says, for layers whose
    /// kernels need it there (layer norms); counted as held.
    ///
    /// # Errors
    /// A missing tensor or one of the wrong shape.
    pub fn get_compute<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        self.go_on()?;
        let dtype = self.vb.dtype();
        if let Some(src) = &self.stored {
            let shape = shape.into();
            return self.read_stored(src.as_ref(), &shape, name, |t| t.dtype() == dtype);
        }
        let t = self.vb.get_with_hints_dtype(shape, name, Default::default(), dtype)?;
        self.check_finite(&t, name)?;
        self.record(precision_of(dtype), t.elem_count() * dtype.size_in_bytes());
        Ok(t)
    }

    /// A weight matrix of a linear or convolution layer, quantized when the rule says so (read as
    /// f32 from the file, quantized, the f32 copy dropped), otherwise dense in its storage type.
    ///
    /// # Errors
    /// A missing tensor or one of the wrong shape.
    pub fn matrix<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<StoredWeight> {
        self.go_on()?;
        let shape = shape.into();
        if let Some(src) = &self.stored {
            return match src.stored(&self.full_name(name), self.vb.device())? {
                StoredWeight::Dense(t) => {
                    let t = self.shaped(t, &shape, name)?;
                    self.check_finite(&t, name)?;
                    self.record_named(dtype_name(t.dtype()), t.elem_count() * t.dtype().size_in_bytes());
                    Ok(StoredWeight::Dense(t))
                }
                StoredWeight::Quantized(q) => {
                    let (rows, total) = (shape.dims().first().copied().unwrap_or(1), shape.elem_count());
                    let dims = q.shape().dims().to_vec();
                    if dims.first().copied().unwrap_or(1) != rows || q.shape().elem_count() != total {
                        candle_core::bail!(
                            "tensor '{}' is stored {} with shape {dims:?}, the model expects {:?}",
                            self.full_name(name),
                            block_name(q.dtype()),
                            shape.dims()
                        );
                    }
                    self.record_named(block_name(q.dtype()), q.storage_size_in_bytes());
                    Ok(StoredWeight::Quantized(q))
                }
            };
        }
        let p = self.storage(&shape, name);
        let Some(ggml) = ggml_type(p) else {
            let dtype = self.dense_dtype(p);
            let t = self.vb.get_with_hints_dtype(shape, name, Default::default(), dtype)?;
            self.check_finite(&t, name)?;
            self.record(p, t.elem_count() * dtype.size_in_bytes());
            return Ok(StoredWeight::Dense(t));
        };
        let rows = shape.dims().first().copied().unwrap_or(1);
        let f32 = self.vb.get_with_hints_dtype(shape.clone(), name, Default::default(), DType::F32)?;
        self.check_finite(&f32, name)?;
        let f32 = f32.reshape((rows, shape.elem_count() / rows.max(1)))?;
        let q = quantize_rows(&f32, ggml)?;
        drop(f32);
        self.record(p, q.storage_size_in_bytes());
        Ok(StoredWeight::Quantized(q))
    }

    /// Tensor `name` read as `src` stores it, kept so when `keep` says its dense form can be used
    /// as it is, else converted to the compute dtype (blocks dequantized) and listed as widened.
    fn read_stored(
        &self,
        src: &dyn StoredSource,
        shape: &Shape,
        name: &str,
        keep: impl Fn(&Tensor) -> bool,
    ) -> Result<Tensor> {
        let dtype = self.vb.dtype();
        let (t, from, stored_bytes) = match src.stored(&self.full_name(name), self.vb.device())? {
            StoredWeight::Dense(t) => {
                let bytes = t.elem_count() * t.dtype().size_in_bytes();
                if keep(&t) {
                    let t = self.shaped(t, shape, name)?;
                    self.check_finite(&t, name)?;
                    self.record_named(dtype_name(t.dtype()), bytes);
                    return Ok(t);
                }
                let from = dtype_name(t.dtype());
                (t.to_dtype(dtype)?, from, bytes)
            }
            StoredWeight::Quantized(q) => {
                let bytes = q.storage_size_in_bytes();
                (q.dequantize(self.vb.device())?.to_dtype(dtype)?, block_name(q.dtype()), bytes)
            }
        };
        let t = self.shaped(t, shape, name)?;
        self.check_finite(&t, name)?;
        let held = t.elem_count() * dtype.size_in_bytes();
        self.record_named(dtype_name(dtype), held);
        if let Ok(mut l) = self.ledger.lock() {
            l.widened.push(Widened {
                name: self.full_name(name),
                from,
                to: dtype_name(dtype),
                stored_bytes: stored_bytes as u64,
                held_bytes: held as u64,
            });
        }
        Ok(t)
    }

    /// `t` in `shape`, when it has the same elements (a stored tensor may carry unit dimensions
    /// the model drops); an error naming the tensor otherwise.
    fn shaped(&self, t: Tensor, shape: &Shape, name: &str) -> Result<Tensor> {
        if t.shape() == shape {
            return Ok(t);
        }
        if t.elem_count() != shape.elem_count() {
            candle_core::bail!(
                "tensor '{}' has shape {:?}, the model expects {:?}",
                self.full_name(name),
                t.dims(),
                shape.dims()
            );
        }
        t.reshape(shape)
    }

    fn record_named(&self, kind: &'static str, bytes: usize) {
        if let Ok(mut l) = self.ledger.lock() {
            l.add_named(kind, bytes as u64);
        }
    }

    /// Whether the source holds `name` (relative to this prefix).
    pub fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }
}

/// Whether every value of a contiguous CPU float tensor is finite, read in place (no copy);
/// `None` for other devices, dtypes or layouts.
fn cpu_all_finite(t: &Tensor) -> Option<bool> {
    use candle_core::{CpuStorage, Storage};
    let (storage, layout) = t.storage_and_layout();
    let (a, b) = layout.contiguous_offsets()?;
    let Storage::Cpu(cpu) = &*storage else { return None };
    // a value is NaN or infinite exactly when its exponent bits are all ones; OR-ing the test
    // over the slice (no early exit) lets the compiler vectorize it
    Some(match cpu {
        CpuStorage::F32(v) => !v[a..b].iter().fold(false, |acc, x| acc | (x.to_bits() & 0x7f80_0000 == 0x7f80_0000)),
        CpuStorage::F16(v) => !v[a..b].iter().fold(false, |acc, x| acc | (x.to_bits() & 0x7c00 == 0x7c00)),
        CpuStorage::BF16(v) => !v[a..b].iter().fold(false, |acc, x| acc | (x.to_bits() & 0x7f80 == 0x7f80)),
        _ => return None,
    })
}

/// The float precision of a dense dtype (f32 for anything not f16/bf16).
fn precision_of(dtype: DType) -> Precision {
    match dtype {
        DType::F16 => Precision::F16,
        DType::BF16 => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// The ledger's name of a dense dtype (`f32`, `f16`, `bf16`; others by candle's name).
fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        other => other.as_str(),
    }
}

/// The ledger's name of a GGML block type, the precision names where there is one (`q8_0`,
/// `q4k`), else ggml's in lower case (`q4_1`, `q5_0`).
pub fn block_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2k",
        GgmlDType::Q3K => "q3k",
        GgmlDType::Q4K => "q4k",
        GgmlDType::Q5K => "q5k",
        GgmlDType::Q6K => "q6k",
        GgmlDType::Q8K => "q8k",
    }
}

/// `QTensor::quantize` of a `(rows, row)` f32 matrix with the rows split over rayon's pool
/// (candle's own quantizer runs on one thread; k-quants are slow to search), the blocks joined
/// into one tensor.
fn quantize_rows(m: &Tensor, ggml: GgmlDType) -> Result<QTensor> {
    let (rows, row) = m.dims2()?;
    let tasks = crate::nn::cpu::threads().min(rows);
    if tasks < 2 || !m.device().is_cpu() || rows * row < (1 << 16) {
        return QTensor::quantize(m, ggml);
    }
    quantize_in_parts(m, ggml, tasks)
}

/// [`quantize_rows`] in `parts` row ranges quantized side by side.
fn quantize_in_parts(m: &Tensor, ggml: GgmlDType, parts: usize) -> Result<QTensor> {
    use rayon::prelude::*;
    let (rows, row) = m.dims2()?;
    let chunk = rows.div_ceil(parts.max(1));
    let blocks = (0..rows.div_ceil(chunk))
        .into_par_iter()
        .map(|i| {
            // candle's quantizer reads the storage from its start, ignoring a view's offset:
            // hand it a copy of the rows
            let part = m.narrow(0, i * chunk, chunk.min(rows - i * chunk))?.force_contiguous()?;
            let q = QTensor::quantize(&part, ggml)?;
            Ok(q.data()?.into_owned())
        })
        .collect::<Result<Vec<Vec<u8>>>>()?;
    let bytes = blocks.concat();
    drop(blocks);
    candle_core::quantized::ggml_file::qtensor_from_ggml(ggml, &bytes, vec![rows, row], m.device())
}

/// candle's block type for a quantized precision; `None` for float ones. (Block sizes come from
/// the one type table, [`Precision::ggml`]; a test holds candle's layouts to it.)
pub fn ggml_type(p: Precision) -> Option<GgmlDType> {
    match p {
        Precision::Q8_0 => Some(GgmlDType::Q8_0),
        Precision::Q6K => Some(GgmlDType::Q6K),
        Precision::Q5K => Some(GgmlDType::Q5K),
        Precision::Q4K => Some(GgmlDType::Q4K),
        Precision::Q4_0 => Some(GgmlDType::Q4_0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantizing rows in parallel gives exactly the bytes of candle's one-thread quantizer.
    #[test]
    fn parallel_quantize_is_identical() {
        let m = Tensor::randn(0f32, 1., (97, 512), &Device::Cpu).unwrap();
        for t in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let one = QTensor::quantize(&m, t).unwrap();
            // 3 parts of 33, 33 and 31 rows
            let par = quantize_in_parts(&m, t, 3).unwrap();
            assert_eq!(par.shape().dims(), &[97, 512]);
            let a = one.data().unwrap().into_owned();
            let b = par.data().unwrap().into_owned();
            let first = a.iter().zip(&b).position(|(x, y)| x != y);
            assert!(first.is_none(), "{t:?}: {} vs {} bytes, first difference at {first:?}", a.len(), b.len());
        }
    }
}
