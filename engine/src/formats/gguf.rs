//! GGUF v1–v3 headers (llama.cpp/ggml): metadata key/values (arrays summarized) and tensor infos
//! (name, shape, GGML type, offset), read through a memory map. Counts and lengths are checked
//! against the bytes left before anything is read, so a hostile header cannot make us allocate or
//! loop for long. A tensor type Headroom does not know is reported as `unknown(N)`, not an error.

use std::collections::BTreeMap;
use std::path::Path;

use super::bin::{Cursor, human_bytes};
use super::ggml::GgmlType;
use super::{Format, Loaded, TensorInfo};
use crate::error::Result;

/// Default data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays accepted.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Most dimensions a tensor may have (ggml has 4; leave room).
const MAX_DIMS: u32 = 8;
/// Longest string value kept in full in the metadata summary.
const MAX_SHOWN_CHARS: usize = 256;

/// What one metadata value turned out to be: a summary for people, and the unsigned number the
/// reader itself needs (for `general.alignment`).
struct Value {
    summary: String,
    uint: Option<u64>,
}

/// The per-version widths: v1 stores counts, lengths and dims as u32, v2+ as u64.
struct Reader<'a> {
    cur: Cursor<'a>,
    wide: bool,
}

impl<'a> Reader<'a> {
    /// A count or length (u32 in v1, u64 after).
    fn len(&mut self, what: &str) -> Result<u64> {
        if self.wide { self.cur.u64(what) } else { self.cur.u32(what).map(u64::from) }
    }

    /// Size of a length field.
    fn len_bytes(&self) -> u64 {
        if self.wide { 8 } else { 4 }
    }

    /// A length-prefixed string; invalid UTF-8 is replaced, not refused.
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let bytes = self.cur.take(n, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// Skips a length-prefixed string.
    fn skip_string(&mut self, what: &str) -> Result<()> {
        let n = self.len(what)?;
        self.cur.take(n, what).map(|_| ())
    }

    /// The fewest bytes a value of type `t` can take (for checking counts).
    fn min_size(&self, t: u32) -> u64 {
        match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => self.len_bytes(),
            9 => 4 + self.len_bytes(),
            _ => 1,
        }
    }

    /// Reads one value of type `t`.
    fn value(&mut self, key: &str, t: u32, depth: u32) -> Result<Value> {
        let what = format!("value of '{key}'");
        let num = |summary: String, uint: Option<u64>| Value { summary, uint };
        Ok(match t {
            0 => {
                let v = self.cur.u8(&what)?;
                num(v.to_string(), Some(v.into()))
            }
            1 => num((self.cur.u8(&what)? as i8).to_string(), None),
            2 => {
                let v = self.cur.u16(&what)?;
                num(v.to_string(), Some(v.into()))
            }
            3 => num((self.cur.u16(&what)? as i16).to_string(), None),
            4 => {
                let v = self.cur.u32(&what)?;
                num(v.to_string(), Some(v.into()))
            }
            5 => num(self.cur.i32(&what)?.to_string(), None),
            6 => num(self.cur.f32(&what)?.to_string(), None),
            7 => num((self.cur.u8(&what)? != 0).to_string(), None),
            8 => {
                let s = self.string(&what)?;
                Value { summary: shorten(&s), uint: None }
            }
            9 => self.array(key, depth)?,
            10 => {
                let v = self.cur.u64(&what)?;
                num(v.to_string(), Some(v))
            }
            11 => num((self.cur.u64(&what)? as i64).to_string(), None),
            12 => num(self.cur.f64(&what)?.to_string(), None),
            other => return Err(self.cur.err(format!("key '{key}': unknown value type {other}"))),
        })
    }

    /// Reads an array (element type, count, elements) and summarizes it as `[N × type: a, b, …]`.
    fn array(&mut self, key: &str, depth: u32) -> Result<Value> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.cur.err(format!("key '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}")));
        }
        let et = self.cur.u32(&format!("array type of '{key}'"))?;
        let n = self.len(&format!("array length of '{key}'"))?;
        let need = n.saturating_mul(self.min_size(et));
        if need > self.cur.remaining() {
            return Err(self.cur.err(format!(
                "key '{key}': array of {n} elements needs at least {} but only {} remain",
                human_bytes(need),
                human_bytes(self.cur.remaining())
            )));
        }
        let mut shown = Vec::new();
        for i in 0..n {
            if i < 4 {
                shown.push(self.value(key, et, depth + 1)?.summary);
            } else if et == 8 {
                self.skip_string(&format!("value of '{key}'"))?;
            } else {
                self.value(key, et, depth + 1)?;
            }
        }
        if n > 4 {
            shown.push("…".into());
        }
        let summary = format!("[{n} × {}: {}]", type_name(et), shown.join(", "));
        Ok(Value { summary, uint: None })
    }
}

/// GGUF metadata value type names, for summaries.
fn type_name(t: u32) -> &'static str {
    match t {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// A long string cut for the metadata summary.
fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_SHOWN_CHARS {
        return s.to_string();
    }
    let cut: String = s.chars().take(MAX_SHOWN_CHARS).collect();
    format!("{cut}… ({} chars)", s.chars().count())
}

/// Parses a whole GGUF buffer.
pub(crate) fn parse(buf: &[u8], path: &Path) -> Result<Loaded> {
    parse_with_data(buf, path).map(|(loaded, _)| loaded)
}

/// Where one tensor's data lies in a GGUF file: its GGML type id and its byte range (checked
/// against the file; `bytes` is `None` for a type whose size is unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorData {
    pub type_id: u32,
    /// Offset of the first byte from the start of the file.
    pub start: u64,
    pub bytes: Option<u64>,
}

/// Parses a whole GGUF buffer, and where each tensor's data lies (in the order of
/// `Loaded::tensors`), for the loaders that read the data as stored.
///
/// # Errors
/// As [`parse`]: a malformed header, or a tensor whose data runs past the end of the file.
pub(crate) fn parse_with_data(buf: &[u8], path: &Path) -> Result<(Loaded, Vec<TensorData>)> {
    let mut cur = Cursor::new(buf, path);
    let magic = cur.take(4, "magic")?;
    match magic {
        b"GGUF" => {}
        b"FUGG" => cur.big_endian = true,
        other => {
            return Err(cur.err(format!("not a GGUF file: magic is {:?}, expected \"GGUF\"", String::from_utf8_lossy(other))));
        }
    }
    let mut version = cur.u32("version")?;
    if !(1..=3).contains(&version) && (1..=3).contains(&version.swap_bytes()) {
        cur.big_endian = !cur.big_endian;
        version = version.swap_bytes();
    }
    if !(1..=3).contains(&version) {
        return Err(cur.err(format!("GGUF version {version} is not supported (versions 1 to 3 are)")));
    }
    let mut r = Reader { cur, wide: version >= 2 };
    let tensor_count = r.len("tensor count")?;
    let kv_count = r.len("metadata count")?;
    let lb = r.len_bytes();
    // Each tensor info takes at least a name length, n_dims, type and offset; each key/value at
    // least a key length, a type and one byte. Claims beyond the file are refused before reading.
    let (min_tensor, min_kv) = (lb + 4 + 4 + 8, lb + 4 + 1);
    let rem = r.cur.remaining();
    if tensor_count.saturating_mul(min_tensor) > rem || kv_count.saturating_mul(min_kv) > rem {
        return Err(r.cur.err(format!(
            "header claims {tensor_count} tensors and {kv_count} metadata entries, more than the {} left could hold",
            human_bytes(rem)
        )));
    }
    let mut metadata = BTreeMap::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut warnings = Vec::new();
    metadata.insert("gguf.version".to_string(), version.to_string());
    for _ in 0..kv_count {
        let key = r.string("metadata key")?;
        let t = r.cur.u32(&format!("value type of '{key}'"))?;
        let v = r.value(&key, t, 0)?;
        if key == "general.alignment" {
            match v.uint {
                Some(a) if a > 0 && a.is_power_of_two() => alignment = a,
                _ => return Err(r.cur.err(format!("general.alignment = {} is not a power of two", v.summary))),
            }
        }
        metadata.insert(key, v.summary);
    }
    if tensor_count.saturating_mul(min_tensor) > r.cur.remaining() {
        return Err(r.cur.err(format!(
            "header claims {tensor_count} tensors but only {} are left for their descriptions",
            human_bytes(r.cur.remaining())
        )));
    }
    let mut infos = Vec::new();
    for _ in 0..tensor_count {
        let name = r.string("tensor name")?;
        let n_dims = r.cur.u32(&format!("dimension count of '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(r.cur.err(format!("tensor '{name}': {n_dims} dimensions (at most {MAX_DIMS} are plausible)")));
        }
        let mut ne = Vec::new();
        for _ in 0..n_dims {
            ne.push(r.len(&format!("dimensions of '{name}'"))?);
        }
        let type_id = r.cur.u32(&format!("type of '{name}'"))?;
        let offset = r.cur.u64(&format!("offset of '{name}'"))?;
        infos.push((name, ne, type_id, offset));
    }
    let data_start = (r.cur.pos() as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::new();
    let mut data = Vec::new();
    for (name, ne, type_id, offset) in infos {
        let elements = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| r.cur.err(format!("tensor '{name}': shape {ne:?} has too many elements")))?;
        let row_len = ne.first().copied().unwrap_or(1);
        let shape: Vec<u64> = ne.iter().rev().copied().collect();
        let (dtype, bytes) = match GgmlType::from_id(type_id) {
            Some(t) => {
                let bytes = t.bytes_for(elements, row_len).ok_or_else(|| {
                    let whole_blocks = t.block_elements <= 1 || (row_len > 0 && row_len.is_multiple_of(t.block_elements));
                    r.cur.err(if whole_blocks {
                        format!("tensor '{name}': shape {shape:?} of {} takes more bytes than a file can hold", t.name)
                    } else {
                        format!("tensor '{name}': rows of {row_len} are not whole {} blocks of {}", t.name, t.block_elements)
                    })
                })?;
                if t.removed {
                    warnings.push(format!("tensor '{name}' uses {}, a type ggml has removed", t.name));
                }
                (t.name.to_string(), Some(bytes))
            }
            None => {
                warnings.push(format!("tensor '{name}' has GGML type {type_id}, which Headroom does not know; its size is not counted"));
                (format!("unknown({type_id})"), None)
            }
        };
        if offset % alignment != 0 {
            warnings.push(format!("tensor '{name}': offset {offset} is not a multiple of the alignment {alignment}"));
        }
        let end = data_start.checked_add(offset).and_then(|s| s.checked_add(bytes.unwrap_or(0)));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(r.cur.err(format!(
                    "tensor '{name}': data at offset {offset} ({}) runs past the end of the file ({})",
                    bytes.map_or("size unknown".into(), human_bytes),
                    human_bytes(file_len)
                )));
            }
        }
        data.push(TensorData { type_id, start: data_start + offset, bytes });
        tensors.push(TensorInfo { name, dtype, shape, bytes });
    }
    Ok((Loaded { format: Format::Gguf, tensors, metadata, warnings, files: vec![path.to_path_buf()] }, data))
}
