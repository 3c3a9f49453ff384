//! A pickle reader that never executes code: it interprets only the opcodes `torch.save` writes
//! ([`machine`]) and only the globals tensor storage needs ([`globals`]:
//! `torch._utils._rebuild_tensor_v2`, `collections.OrderedDict`, `torch.FloatStorage` …). Any
//! other global (`os.system`, `builtins.eval` …) is refused with an error naming it, at the moment
//! it is named, so nothing it names is ever looked up, let alone called.
//!
//! Containers live in an arena ([`Heap`]) and values refer to them by index, so a hostile pickle
//! cannot build a structure whose drop recurses deeply, and cycles cost nothing. The work done
//! copying sequences is budgeted against the pickle's size, so a small pickle cannot make us
//! build a huge one.

mod globals;
mod machine;

use std::path::Path;
use std::rc::Rc;

pub(crate) use globals::Global;

use crate::error::Result;

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
/// Unpickles `buf` (named `path` in errors) without running anything.
///
/// # Errors
/// A global outside the allowed set (named in the message), an opcode torch does not write,
/// or a malformed stream.
pub(crate) fn load(buf: &[u8], path: &Path) -> Result<Unpickled> {
    machine::Machine::new(buf, path).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"w": _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 4), 0, (4,), (1,), False, OrderedDict())}`
    const ONE_TENSOR: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs.";

    /// A hand-written torch pickle gives a dict with one tensor viewing an f32 storage.
    #[test]
    fn reads_a_tensor_pickle() {
        let u = load(ONE_TENSOR, Path::new("t.pkl")).unwrap();
        let Value::Dict(d) = u.root else { panic!("root is not a dict") };
        let (Value::Str(k), Value::Tensor(t)) = &u.heap.dicts[d][0] else { panic!("not a tensor entry") };
        let t = &u.heap.tensors[*t];
        assert_eq!((&**k, t.shape.as_slice(), t.stride.as_slice(), t.offset), ("w", &[4u64][..], &[1u64][..], 0));
        let s = &u.heap.storages[t.storage];
        assert_eq!((s.dtype, s.elem_bytes, s.key.as_str(), s.numel), ("F32", 4, "0", 4));
    }

    /// Every strict prefix of a valid pickle is an error, never a panic.
    #[test]
    fn every_truncation_is_an_error() {
        for cut in 0..ONE_TENSOR.len() {
            assert!(load(&ONE_TENSOR[..cut], Path::new("t.pkl")).is_err(), "cut at {cut} passed");
        }
    }

    /// A list that contains itself, fed to `_rebuild_from_type_v2`, is an error, not endless recursion.
    #[test]
    fn circular_rebuild_is_refused() {
        // L = [rebuild_from_type, None, L]; rebuild_from_type(*L)
        let p = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\nq\x00]q\x01h\x00aNah\x01ah\x00h\x01R.";
        let e = load(p, Path::new("t.pkl")).err().unwrap().to_string();
        assert!(e.contains("nested too deeply"), "{e}");
    }

    /// Copying a big list over and over from a small pickle trips the work budget.
    #[test]
    fn pickle_bomb_is_refused() {
        let mut p = b"\x80\x02cbuiltins\nset\nq\x00](".to_vec();
        p.extend(std::iter::repeat_n(*b"K\x01", 20_000).flatten());
        p.extend_from_slice(b"eq\x01");
        p.extend(std::iter::repeat_n(*b"h\x00h\x01\x85R0", 5_000).flatten());
        p.extend_from_slice(b"N.");
        let e = load(&p, Path::new("t.pkl")).err().unwrap().to_string();
        assert!(e.contains("pickle bomb"), "{e}");
        // The same stream with few repeats is fine, so the budget is not hit by ordinary work.
        let ok = [&p[..p.len() - 2 - 7 * 4_990], b"N."].concat();
        assert!(load(&ok, Path::new("t.pkl")).is_ok());
    }
}
