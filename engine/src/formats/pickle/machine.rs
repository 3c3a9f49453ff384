//! The pickle virtual machine: the opcodes `torch.save` writes (protocol 2, and the protocol 4
//! ones a newer writer may use), over a bounds-checked cursor. It never imports or calls anything:
//! GLOBAL resolves through the allowlist in [`super::globals`] and REDUCE builds data.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

use super::{Global, Heap, Unpickled, Value};
use crate::error::{Error, Result};
use crate::formats::bin::Cursor;

/// Values copied per byte of pickle before the stream counts as a bomb (torch's own pickles copy
/// a few values per byte at most).
const WORK_PER_BYTE: u64 = 64;

/// The interpreter's state.
pub(super) struct Machine<'a> {
    pub(super) cur: Cursor<'a>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pub(super) heap: Heap,
    /// Values copied so far, and the most allowed.
    work: Cell<u64>,
    budget: u64,
}

impl<'a> Machine<'a> {
    /// A machine at the start of `buf`.
    pub(super) fn new(buf: &'a [u8], path: &'a Path) -> Self {
        Machine {
            cur: Cursor::new(buf, path),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            heap: Heap::default(),
            work: Cell::new(0),
            budget: (buf.len() as u64).saturating_mul(WORK_PER_BYTE).max(1 << 20),
        }
    }

    /// Runs to STOP and hands back the heap and the root value.
    pub(super) fn run(mut self) -> Result<Unpickled> {
        let root = self.execute()?;
        Ok(Unpickled { heap: self.heap, root })
    }
}

impl Machine<'_> {
    /// Counts `n` values copied; an error once the budget is spent.
    pub(super) fn charge(&self, n: usize) -> Result<()> {
        let w = self.work.get().saturating_add(n as u64);
        self.work.set(w);
        if w > self.budget {
            return Err(self.err("it builds far more data than its size allows (a pickle bomb?)"));
        }
        Ok(())
    }

    /// A `path: pickle: problem (at byte N)` error.
    pub(super) fn err(&self, problem: impl std::fmt::Display) -> Error {
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

    fn execute(&mut self) -> Result<Value> {
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
                    let v = self.call(func, args, 0)?;
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
        if !items.len().is_multiple_of(2) {
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

}
