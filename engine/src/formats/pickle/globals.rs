//! The globals a torch checkpoint may name, and what "calling" each of them builds: data only.
//! Everything else is refused by name.

use super::machine::Machine;
use super::{Storage, Tensor, Value};
use crate::error::{Error, Result};

/// A global the reader accepts, by what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(data, …)` and `_rebuild_parameter_with_state`.
    RebuildParameter,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)`.
    RebuildFromType,
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch.Size`.
    Size,
    /// `torch.device`.
    Device,
    /// `_codecs.encode` (how protocol 2 stores bytes).
    CodecsEncode,
    /// `builtins.set` / `builtins.frozenset`.
    Set,
    /// A storage class: safetensors-style dtype name and bytes per element.
    Storage(&'static str, u64),
    /// A type or constant used only as a marker (`torch.Tensor`, `torch.float16` …).
    Marker,
}

/// Storage classes torch writes, with the dtype names Headroom uses and element sizes.
const STORAGES: &[(&str, &str, u64)] = &[
    ("FloatStorage", "F32", 4),
    ("DoubleStorage", "F64", 8),
    ("HalfStorage", "F16", 2),
    ("BFloat16Storage", "BF16", 2),
    ("LongStorage", "I64", 8),
    ("IntStorage", "I32", 4),
    ("ShortStorage", "I16", 2),
    ("CharStorage", "I8", 1),
    ("ByteStorage", "U8", 1),
    ("BoolStorage", "BOOL", 1),
    ("ComplexFloatStorage", "C64", 8),
    ("ComplexDoubleStorage", "C128", 16),
    ("UntypedStorage", "U8", 1),
];

/// torch dtypes that may appear as constants (`torch.float16`).
const TORCH_DTYPES: &[&str] = &[
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32",
    "int", "int16", "int8", "uint8", "bool", "complex64", "complex128",
];

/// Resolves `module.name` to an allowed global, or refuses it.
pub(super) fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Global::RebuildParameter,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromType,
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch", "Size") => Global::Size,
        ("torch", "device") => Global::Device,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("builtins" | "__builtin__", "set" | "frozenset") => Global::Set,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::Marker,
        ("torch", n) if TORCH_DTYPES.contains(&n) => Global::Marker,
        ("torch", n) => {
            let &(_, dtype, size) = STORAGES.iter().find(|s| s.0 == n)?;
            Global::Storage(dtype, size)
        }
        _ => return None,
    })
}

/// The error for a global outside the allowed set.
pub(super) fn refused(path: &std::path::Path, module: &str, name: &str) -> Error {
    Error::file(
        path,
        format!(
            "refused global '{module}.{name}' in the checkpoint's pickle: only the globals PyTorch uses to \
             store tensors are allowed (nothing in the file was run)"
        ),
    )
}

impl Machine<'_> {
    /// An allowed global as a value, or the refusal naming it.
    pub(super) fn global(&self, module: &str, name: &str) -> Result<Value> {
        resolve_global(module, name).map(Value::Global).ok_or_else(|| refused(self.cur.path(), module, name))
    }

    /// The items of a tuple or list (a copy, charged against the work budget).
    fn tuple_items(&self, v: &Value) -> Result<Vec<Value>> {
        match v {
            Value::Tuple(i) | Value::List(i) => {
                self.charge(self.heap.seqs[*i].len())?;
                Ok(self.heap.seqs[*i].clone())
            }
            _ => Err(self.err("expected a tuple of arguments")),
        }
    }

    /// A tuple of non-negative integers (a size or stride).
    fn ints(&self, v: &Value, what: &str) -> Result<Vec<u64>> {
        self.tuple_items(v)?
            .iter()
            .map(|x| match x {
                Value::Int(n) => u64::try_from(*n).map_err(|_| self.err(format!("negative {what}"))),
                _ => Err(self.err(format!("{what} is not a tuple of integers"))),
            })
            .collect()
    }

    /// Applies an allowed callable to its arguments, building data only. `depth` counts nested
    /// `_rebuild_from_type_v2` calls, which a hostile pickle could make circular.
    pub(super) fn call(&mut self, func: Value, args: Value, depth: u32) -> Result<Value> {
        if depth > 4 {
            return Err(self.err("_rebuild_from_type_v2 nested too deeply"));
        }
        let Value::Global(g) = func else {
            return Err(self.err("REDUCE of something that is not an allowed global"));
        };
        let a = self.tuple_items(&args)?;
        Ok(match g {
            Global::RebuildTensorV2 => {
                let (Some(Value::Storage(s)), Some(Value::Int(off)), Some(size), Some(stride)) =
                    (a.first(), a.get(1), a.get(2), a.get(3))
                else {
                    return Err(self.err("_rebuild_tensor_v2 needs (storage, offset, size, stride, …)"));
                };
                let offset = u64::try_from(*off).map_err(|_| self.err("negative storage offset"))?;
                let shape = self.ints(size, "size")?;
                let stride = self.ints(stride, "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err("size and stride differ in length"));
                }
                self.heap.tensors.push(Tensor { storage: *s, offset, shape, stride });
                Value::Tensor(self.heap.tensors.len() - 1)
            }
            Global::RebuildParameter => match a.first() {
                Some(t @ Value::Tensor(_)) => t.clone(),
                _ => return Err(self.err("_rebuild_parameter of something that is not a tensor")),
            },
            Global::RebuildFromType => match (a.first(), a.get(2)) {
                (Some(f), Some(inner)) => self.call(f.clone(), inner.clone(), depth + 1)?,
                _ => return Err(self.err("_rebuild_from_type_v2 needs (func, type, args, state)")),
            },
            Global::OrderedDict => {
                let pairs = match a.first() {
                    Some(seq @ (Value::List(_) | Value::Tuple(_))) => {
                        let mut out = Vec::new();
                        for item in self.tuple_items(seq)? {
                            let kv = self.tuple_items(&item)?;
                            if let [k, v] = kv.as_slice() {
                                out.push((k.clone(), v.clone()));
                            }
                        }
                        out
                    }
                    _ => Vec::new(),
                };
                Value::Dict(self.heap.dict(pairs))
            }
            Global::Size => match a.first() {
                Some(t) => Value::Tuple(self.heap.seq(self.tuple_items(t)?)),
                None => Value::Tuple(self.heap.seq(Vec::new())),
            },
            Global::Device => a.first().cloned().unwrap_or(Value::None),
            Global::CodecsEncode => Value::Bytes,
            Global::Set => match a.first() {
                Some(seq @ (Value::List(_) | Value::Tuple(_))) => Value::List(self.heap.seq(self.tuple_items(seq)?)),
                _ => Value::List(self.heap.seq(Vec::new())),
            },
            Global::Storage(..) | Global::Marker => {
                return Err(self.err("a storage type or marker was called; torch.save never does that"));
            }
        })
    }

    /// Resolves `('storage', StorageType, key, location, numel)`.
    pub(super) fn persistent(&mut self, pid: Value) -> Result<Value> {
        let items = self.tuple_items(&pid)?;
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(dtype, elem_bytes)), Value::Str(key), _, Value::Int(numel)]
                if &**tag == "storage" =>
            {
                let numel = u64::try_from(*numel).map_err(|_| self.err("negative storage size"))?;
                self.heap.storages.push(Storage { dtype, elem_bytes: *elem_bytes, key: key.to_string(), numel });
                Ok(Value::Storage(self.heap.storages.len() - 1))
            }
            _ => Err(self.err("persistent id is not ('storage', type, key, location, numel)")),
        }
    }
}