//! A pickle reader that never executes code: it interprets only the opcodes `torch.save` writes
//! and only the globals tensor storage needs (`torch._utils._rebuild_tensor_v2`,
//! `collections.OrderedDict`, `torch.FloatStorage` …). Any other global (`os.system`,
//! `builtins.eval` …) is refused with an error naming it, at the moment it is named.
//!
//! Containers live in an arena ([`Heap`]) and values refer to them by index, so a hostile pickle
//! cannot build a structure whose drop recurses deeply, and cycles cost nothing.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use super::bin::Cursor;
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
fn resolve_global(module: &str, name: &str) -> Option<Global> {
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

/// A storage named by a persistent id: `('storage', type, key, location, numel)`.
#[derive(Clone, Debug)]
pub(crate) struct Storage {
    pub dtype: &'static str,
    pub elem_bytes: u64,
    pub key: String,
    pub numel: u64,
}

/// A tensor rebuilt by `_rebuild_tensor_v2`: a view of a storage.
#[derive(Clone, Debug)]
pub(crate) struct Tensor {
    pub storage: usize,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A pickled value; containers are indices into the [`Heap`].
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (kept only as a marker).
    BigInt,
    Float(f64),
    Str(Rc<str>),
    /// Bytes (their content is not kept).
    Bytes,
    Tuple(usize),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(usize),
    Tensor(usize),
}

/// Where containers, storages and tensors live.
#[derive(Default)]
pub(crate) struct Heap {
    pub seqs: Vec<Vec<Value>>,
    pub dicts: Vec<Vec<(Value, Value)>>,
    pub storages: Vec<Storage>,
    pub tensors: Vec<Tensor>,
}

impl Heap {
    fn seq(&mut self, v: Vec<Value>) -> usize {
        self.seqs.push(v);
        self.seqs.len() - 1
    }
    fn dict(&mut self, v: Vec<(Value, Value)>) -> usize {
        self.dicts.push(v);
        self.dicts.len() - 1
    }
}

/// The result of unpickling: the heap and the root value.
pub(crate) struct Unpickled {
    pub heap: Heap,
    pub root: Value,
}

/// The interpreter's state.
struct Machine<'a> {
    cur: Cursor<'a>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Heap,
}

/// Unpickles `buf` (named `path` in errors) without running anything.
///
/// # Errors
/// A global outside the allowed set (named in the message), an opcode torch does not write,
/// or a malformed stream.
pub(crate) fn load(buf: &[u8], path: &Path) -> Result<Unpickled> {
    let mut m =
        Machine { cur: Cursor::new(buf, path), stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), heap: Heap::default() };
    let root = m.run()?;
    Ok(Unpickled { heap: m.heap, root })
}

impl Machine<'_> {
    fn err(&self, problem: impl std::fmt::Display) -> Error {
        Error::file(self.cur.path(), format!("pickle: {problem} (at byte {})", self.cur.pos()))
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Value> {
        self.stack.last().cloned().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK before a sequence opcode"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK above the stack top"));
        }
        Ok(self.stack.split_off(m))
    }

    fn line(&mut self) -> Result<String> {
        let mut out = Vec::new();
        loop {
            let b = self.cur.u8("text line")?;
            if b == b'\n' {
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.push(b);
        }
    }

    fn string(&mut self, n: u64) -> Result<Value> {
        let b = self.cur.take(n, "pickle string")?;
        Ok(Value::Str(String::from_utf8_lossy(b).into()))
    }

    fn long(&mut self, n: u64) -> Result<Value> {
        let b = self.cur.take(n, "pickle long")?;
        if b.len() > 8 {
            return Ok(Value::BigInt);
        }
        let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
        let mut a = [if neg { 0xff } else { 0 }; 8];
        a[..b.len()].copy_from_slice(b);
        Ok(Value::Int(i64::from_le_bytes(a)))
    }

    fn memo_get(&self, k: u32) -> Result<Value> {
        self.memo.get(&k).cloned().ok_or_else(|| self.err(format!("memo key {k} was never stored")))
    }

    fn global(&self, module: &str, name: &str) -> Result<Value> {
        resolve_global(module, name).map(Value::Global).ok_or_else(|| {
            Error::file(
                self.cur.path(),
                format!(
                    "refused global '{module}.{name}' in the checkpoint's pickle: only the globals PyTorch uses to \
                     store tensors are allowed (nothing in the file was run)"
                ),
            )
        })
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.cur.u8("pickle opcode")?;
            match op {
                0x80 => {
                    self.cur.u8("protocol")?;
                }
                0x95 => {
                    self.cur.u64("frame length")?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?;
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'I' => {
                    let l = self.line()?;
                    let v = match l.trim() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| self.err(format!("bad INT '{s}'")))?),
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let l = self.line()?;
                    self.stack.push(l.trim_end_matches('L').parse().map_or(Value::BigInt, Value::Int));
                }
                b'J' => {
                    let v = self.cur.i32("BININT")?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.cur.u8("BININT1")?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = self.cur.u16("BININT2")?;
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = self.cur.u8("LONG1 length")?;
                    let v = self.long(n.into())?;
                    self.stack.push(v);
                }
                0x8b => {
                    let n = self.cur.i32("LONG4 length")?;
                    let n = u64::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let v = self.long(n)?;
                    self.stack.push(v);
                }
                b'G' => {
                    let b = self.cur.take(8, "BINFLOAT")?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'F' => {
                    let l = self.line()?;
                    self.stack.push(Value::Float(l.trim().parse().unwrap_or(f64::NAN)));
                }
                b'X' => {
                    let n = self.cur.u32("BINUNICODE length")?;
                    let v = self.string(n.into())?;
                    self.stack.push(v);
                }
                0x8c | b'U' => {
                    let n = self.cur.u8("string length")?;
                    let v = self.string(n.into())?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.cur.u64("BINUNICODE8 length")?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'T' => {
                    let n = self.cur.i32("BINSTRING length")?;
                    let n = u64::try_from(n).map_err(|_| self.err("negative BINSTRING length"))?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.cur.u32("BINBYTES length")?.into(),
                        b'C' => self.cur.u8("SHORT_BINBYTES length")?.into(),
                        _ => self.cur.u64("BINBYTES8 length")?,
                    };
                    self.cur.take(n, "pickle bytes")?;
                    self.stack.push(Value::Bytes);
                }
                b')' => {
                    let i = self.heap.seq(Vec::new());
                    self.stack.push(Value::Tuple(i));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let i = self.heap.seq(items);
                    self.stack.push(Value::Tuple(i));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let i = self.heap.seq(items);
                    self.stack.push(Value::Tuple(i));
                }
                b']' | 0x8f => {
                    let i = self.heap.seq(Vec::new());
                    self.stack.push(Value::List(i));
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let i = self.heap.seq(items);
                    self.stack.push(Value::List(i));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'}' => {
                    let i = self.heap.dict(Vec::new());
                    self.stack.push(Value::Dict(i));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let i = self.heap.dict(pairs);
                    self.stack.push(Value::Dict(i));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.extend_dict(pairs)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args)?;
                    self.stack.push(v);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // kwargs
                    }
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = match cls {
                        Value::Global(Global::OrderedDict) => Value::Dict(self.heap.dict(Vec::new())),
                        _ => return Err(self.err("NEWOBJ of something other than OrderedDict")),
                    };
                    let _ = args;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD sets state (an OrderedDict's `_metadata`, a tensor's hooks): not needed.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'q' | b'r' | 0x94 | b'p' => {
                    let k = match op {
                        b'q' => self.cur.u8("BINPUT")?.into(),
                        b'r' => self.cur.u32("LONG_BINPUT")?,
                        b'p' => {
                            let l = self.line()?;
                            l.trim().parse().map_err(|_| self.err(format!("bad PUT '{l}'")))?
                        }
                        _ => u32::try_from(self.memo.len()).map_err(|_| self.err("memo too large"))?,
                    };
                    let v = self.top()?;
                    self.memo.insert(k, v);
                }
                b'h' | b'j' | b'g' => {
                    let k = match op {
                        b'h' => self.cur.u8("BINGET")?.into(),
                        b'j' => self.cur.u32("LONG_BINGET")?,
                        _ => {
                            let l = self.line()?;
                            l.trim().parse().map_err(|_| self.err(format!("bad GET '{l}'")))?
                        }
                    };
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                other => {
                    return Err(self.err(format!("opcode 0x{other:02x} is not one torch.save writes")));
                }
            }
        }
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
        if items.len() % 2 != 0 {
            return Err(self.err("odd number of items for a dict"));
        }
        let mut it = items.into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(i) => {
                self.heap.seqs[i].extend(items);
                Ok(())
            }
            _ => Err(self.err("APPEND to something that is not a list")),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(Value, Value)>) -> Result<()> {
        match self.top()? {
            Value::Dict(i) => {
                self.heap.dicts[i].extend(pairs);
                Ok(())
            }
            _ => Err(self.err("SETITEM on something that is not a dict")),
        }
    }

    fn tuple_items(&self, v: &Value) -> Result<Vec<Value>> {
        match v {
            Value::Tuple(i) | Value::List(i) => Ok(self.heap.seqs[*i].clone()),
            _ => Err(self.err("expected a tuple of arguments")),
        }
    }

    fn ints(&self, v: &Value, what: &str) -> Result<Vec<u64>> {
        self.tuple_items(v)?
            .iter()
            .map(|x| match x {
                Value::Int(n) => u64::try_from(*n).map_err(|_| self.err(format!("negative {what}"))),
                _ => Err(self.err(format!("{what} is not a tuple of integers"))),
            })
            .collect()
    }

    /// Applies an allowed callable to its arguments, building data only.
    fn call(&mut self, func: Value, args: Value) -> Result<Value> {
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
                (Some(f), Some(inner)) => self.call(f.clone(), inner.clone())?,
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
    fn persistent(&mut self, pid: Value) -> Result<Value> {
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
