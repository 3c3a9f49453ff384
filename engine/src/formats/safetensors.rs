//! `.safetensors` headers: the 8-byte little-endian header length, the JSON header (tensors and
//! `__metadata__`) read through a memory map, with every offset checked; and sharded models
//! (`model.safetensors.index.json`, or `*-0000N-of-0000M.safetensors` siblings).

use std::collections::{BTreeMap, HashSet};
use std::path::{Component as PathComponent, Path, PathBuf};

use serde_json::Value;

use super::bin::{self, human_bytes};
use super::{Format, Loaded, TensorInfo, file_name};
use crate::error::{Error, Result};

/// The largest JSON header accepted (the safetensors library's own limit).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Bits per element of each safetensors dtype string.
const DTYPES: &[(&str, u64)] = &[
    ("BOOL", 8),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("I64", 64),
    ("U64", 64),
    ("F64", 64),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
];

/// Bits per element of a safetensors dtype, `None` if the string is not one.
pub(crate) fn dtype_bits(dtype: &str) -> Option<u64> {
    DTYPES.iter().find(|(n, _)| *n == dtype).map(|&(_, b)| b)
}

/// Reads one `.safetensors` file's header.
pub(crate) fn read(path: &Path) -> Result<Loaded> {
    read_bytes(&bin::map(path)?, path)
}

/// Reads the header of a `.safetensors` file's bytes (`path` names it in errors).
pub(crate) fn read_bytes(buf: &[u8], path: &Path) -> Result<Loaded> {
    let (tensors, metadata, warnings) = parse(buf, path)?;
    Ok(Loaded { format: Format::Safetensors, tensors, metadata, warnings, files: vec![path.to_path_buf()] })
}

/// What a safetensors header holds: tensors sorted by data offset, `__metadata__`, warnings.
type Header = (Vec<TensorInfo>, BTreeMap<String, String>, Vec<String>);

/// Parses a safetensors buffer.
pub(crate) fn parse(buf: &[u8], path: &Path) -> Result<Header> {
    let file_len = buf.len() as u64;
    if file_len < 8 {
        return Err(Error::file(
            path,
            format!("truncated: {file_len} bytes, but a safetensors file starts with an 8-byte header length"),
        ));
    }
    let mut cur = bin::Cursor::new(buf, path);
    let header_len = cur.u64("header length")?;
    if header_len > file_len - 8 {
        return Err(Error::file(
            path,
            format!(
                "header length says {} but the file has only {} after it (truncated, or not a safetensors file)",
                human_bytes(header_len),
                human_bytes(file_len - 8)
            ),
        ));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(Error::file(path, format!("header of {} is over the 100 MiB limit", human_bytes(header_len))));
    }
    let json = cur.take(header_len, "JSON header")?;
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| Error::file(path, format!("header is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(Error::file(path, format!("header JSON is {}, expected an object", json_kind(&value))));
    };
    let data_len = file_len - 8 - header_len;
    let mut metadata = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut entries: Vec<(u64, u64, TensorInfo)> = Vec::new();
    for (name, v) in &obj {
        if name == "__metadata__" {
            let Value::Object(m) = v else {
                return Err(Error::file(path, "__metadata__ is not a JSON object"));
            };
            for (k, v) in m {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                metadata.insert(k.clone(), s);
            }
            continue;
        }
        entries.push(tensor_entry(path, name, v, data_len)?);
    }
    entries.sort_by_key(|e| (e.0, e.1));
    let mut prev: Option<(u64, &str)> = None;
    let mut covered = 0u64;
    for (begin, end, t) in &entries {
        if let Some((prev_end, prev_name)) = prev
            && *begin < prev_end
        {
            return Err(Error::file(
                path,
                format!("tensors '{prev_name}' and '{}' overlap (data byte {begin} is used by both)", t.name),
            ));
        }
        covered += end - begin;
        if end > begin || prev.is_none() {
            prev = Some((*end, &t.name));
        }
    }
    if covered < data_len {
        warnings.push(format!(
            "{}: {} of the data section belong to no tensor",
            path.display(),
            human_bytes(data_len - covered)
        ));
    }
    Ok((entries.into_iter().map(|e| e.2).collect(), metadata, warnings))
}

/// Validates one tensor entry; returns (begin, end, info).
fn tensor_entry(path: &Path, name: &str, v: &Value, data_len: u64) -> Result<(u64, u64, TensorInfo)> {
    let bad = |problem: String| Error::file(path, format!("tensor '{name}': {problem}"));
    let Value::Object(t) = v else {
        return Err(bad(format!("entry is {}, expected an object", json_kind(v))));
    };
    let dtype = t.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("no \"dtype\" string".into()))?;
    let bits = dtype_bits(dtype).ok_or_else(|| {
        let known: Vec<&str> = DTYPES.iter().map(|d| d.0).collect();
        bad(format!("unknown dtype '{dtype}' (known: {})", known.join(", ")))
    })?;
    let shape_v = t.get("shape").and_then(Value::as_array).ok_or_else(|| bad("no \"shape\" array".into()))?;
    let mut shape = Vec::new();
    for d in shape_v {
        shape.push(d.as_u64().ok_or_else(|| bad(format!("shape entry {d} is not a whole number ≥ 0")))?);
    }
    let offs = t.get("data_offsets").and_then(Value::as_array).ok_or_else(|| bad("no \"data_offsets\" array".into()))?;
    let (begin, end) = match offs.as_slice() {
        [b, e] => match (b.as_u64(), e.as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad("data_offsets must be two whole numbers".into())),
        },
        _ => return Err(bad(format!("data_offsets has {} entries, expected 2", offs.len()))),
    };
    if begin > end || end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] lie outside the data section of {}",
            human_bytes(data_len)
        )));
    }
    let elements = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements")))?;
    let bytes = elements.checked_mul(bits).map(|b| b.div_ceil(8)).ok_or_else(|| bad("size overflows".into()))?;
    if bytes != end - begin {
        return Err(bad(format!(
            "shape {shape:?} of {dtype} needs {bytes} bytes but data_offsets [{begin}, {end}] hold {}",
            end - begin
        )));
    }
    Ok((begin, end, TensorInfo { name: name.to_string(), dtype: dtype.to_string(), shape, bytes: Some(bytes) }))
}

/// A JSON value's kind for messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Splits `model-00002-of-00005.safetensors` into ("model", 2, 5, digits of the index).
pub(crate) fn shard_pattern(name: &str) -> Option<(String, u32, u32, usize)> {
    let stem = name.strip_suffix(".safetensors")?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (prefix, index) = rest.rsplit_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(index) || !all_digits(total) {
        return None;
    }
    let (i, n) = (index.parse().ok()?, total.parse().ok()?);
    (i >= 1 && i <= n).then(|| (prefix.to_string(), i, n, index.len()))
}

/// Reads every shard of the set `one` belongs to (prefers an index JSON next to them).
pub(crate) fn read_shards_of(dir: &Path, one: &Path) -> Result<Loaded> {
    let name = file_name(one);
    let Some((prefix, _, total, width)) = shard_pattern(&name) else {
        return read(one);
    };
    let index = dir.join(format!("{prefix}.safetensors.index.json"));
    if index.is_file() {
        return read_index(&index);
    }
    if total > 10_000 {
        return Err(Error::file(one, format!("name says {total} shards; more than 10000 is not plausible")));
    }
    let mut files = Vec::new();
    for i in 1..=total {
        let p = dir.join(format!("{prefix}-{i:0width$}-of-{total:0width$}.safetensors"));
        if !p.is_file() {
            return Err(Error::file(&p, format!("shard {i} of {total} is missing")));
        }
        files.push(p);
    }
    merge(files, Vec::new())
}

/// Reads a `*.index.json` (`weight_map`: tensor → shard file) and every shard it names.
pub(crate) fn read_index(path: &Path) -> Result<Loaded> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::file(path, "no \"weight_map\" object (tensor name → shard file)"))?;
    let dir = super::parent_dir(path);
    let mut files: Vec<PathBuf> = Vec::new();
    let mut listed: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| Error::file(path, format!("weight_map['{tensor}'] is not a file name")))?;
        let rel = Path::new(file);
        if rel.components().any(|c| !matches!(c, PathComponent::Normal(_))) {
            return Err(Error::file(path, format!("shard name '{file}' leaves the model's folder")));
        }
        let p = dir.join(rel);
        if !files.contains(&p) {
            if !p.is_file() {
                return Err(Error::file(&p, format!("shard listed in {} is missing", file_name(path))));
            }
            files.push(p.clone());
        }
        listed.insert(tensor, p);
    }
    if files.is_empty() {
        return Err(Error::file(path, "weight_map is empty"));
    }
    files.sort();
    let mut warnings = Vec::new();
    let mut loaded = merge(files, Vec::new())?;
    let mut seen = HashSet::new();
    for t in &loaded.tensors {
        seen.insert(t.name.as_str());
        if !listed.contains_key(t.name.as_str()) {
            warnings.push(format!("tensor '{}' is in a shard but not in {}", t.name, file_name(path)));
        }
    }
    let missing: Vec<&str> = listed.keys().copied().filter(|t| !seen.contains(t)).collect();
    if let Some(first) = missing.first() {
        warnings.push(format!("{} tensors in {} are in no shard (first: '{first}')", missing.len(), file_name(path)));
    }
    if let Some(m) = v.get("metadata").and_then(Value::as_object) {
        for (k, val) in m {
            let s = val.as_str().map_or_else(|| val.to_string(), str::to_string);
            loaded.metadata.insert(k.clone(), s);
        }
    }
    loaded.warnings.extend(warnings);
    Ok(loaded)
}

/// Reads several weight files (shards) and merges them; a tensor in two shards is an error.
fn merge(files: Vec<PathBuf>, mut warnings: Vec<String>) -> Result<Loaded> {
    let mut tensors = Vec::new();
    let mut metadata = BTreeMap::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut format = Format::Safetensors;
    for f in &files {
        let part = super::read_weight_file(f, false)?;
        format = part.format;
        for t in part.tensors {
            if !names.insert(t.name.clone()) {
                return Err(Error::file(f, format!("tensor '{}' is also in an earlier shard", t.name)));
            }
            tensors.push(t);
        }
        for (k, v) in part.metadata {
            metadata.entry(k).or_insert(v);
        }
        warnings.extend(part.warnings);
    }
    metadata.insert("shards".into(), files.len().to_string());
    Ok(Loaded { format, tensors, metadata, warnings, files })
}
