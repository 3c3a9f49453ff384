//! The TOML side of profiles: parsing with one-line errors, writing in a fixed section order, and
//! keeping fields this build does not know.
//!
//! On read, the whole document is parsed into a table, each known section is read into its type,
//! and everything the types did not consume is kept as the profile's `extra` table. On write, the
//! typed values are laid out first and the kept fields are merged back in (typed values win).

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::{BuildInfo, ModelInfo, PROFILE_VERSION, Profile, RunResult};
use crate::error::{Error, Result};
use crate::knobs::Knobs;
use crate::request::{NoiseMode, Request};

/// Parses `s` (read from `origin`) into a profile.
pub(super) fn parse(s: &str, origin: &Path) -> Result<Profile> {
    let raw: Table = s.parse().map_err(|e: toml::de::Error| toml_error(s, origin, &e))?;

    let version = match raw.get("version") {
        None => {
            return Err(Error::file(origin, "no `version` key: this is not a Headroom profile"));
        }
        Some(Value::Integer(v)) => *v,
        Some(other) => {
            return Err(Error::file(
                origin,
                format!("version = {other}: expected a whole number"),
            ));
        }
    };
    if version > i64::from(PROFILE_VERSION) {
        return Err(Error::file(
            origin,
            format!(
                "written by a newer Headroom (profile version {version}, this build reads {PROFILE_VERSION})"
            ),
        ));
    }
    if version < 1 {
        return Err(Error::file(origin, format!("profile version {version} is not valid (versions start at 1)")));
    }

    let model: ModelInfo = section(&raw, "model", origin, true)?;
    if model.source.trim().is_empty() {
        return Err(Error::file(origin, "[model] has no `source` (a path or builtin:NAME)"));
    }
    let request = read_request(&raw, origin)?;
    let knobs: Knobs = section(&raw, "knobs", origin, false)?;
    let build: BuildInfo = section(&raw, "build", origin, false)?;
    let result: Option<RunResult> = match raw.get("result") {
        None => None,
        Some(_) => Some(section(&raw, "result", origin, true)?),
    };

    let mut p = Profile { version: version as u32, model, request, knobs, build, result, extra: Table::new() };
    let mut extra = raw;
    subtract(&mut extra, &typed(&p));
    // every key of the per-component tables was read (as a component's setting)
    if let Some(Value::Table(k)) = extra.get_mut("knobs") {
        k.remove("precision");
        k.remove("offload");
        if k.is_empty() {
            extra.remove("knobs");
        }
    }
    p.extra = extra;
    Ok(p)
}

/// The profile as TOML text.
pub(super) fn write(p: &Profile) -> String {
    let mut doc = typed(p);
    merge(&mut doc, &p.extra);
    toml::to_string(&doc).unwrap_or_else(|e| format!("# could not write this profile: {e}\n"))
}

/// The typed part of a profile as a TOML table, sections in the documented order.
fn typed(p: &Profile) -> Table {
    let mut t = Table::new();
    t.insert("version".into(), Value::Integer(i64::from(p.version)));
    t.insert("model".into(), to_value(&p.model));
    let mut request = request_table(&p.request);
    if !p.model.fields.is_empty() {
        // the request as the family's fields: a field this model does not take is written only
        // when it is not at its default (a spectrogram model's native size), so nothing a run
        // depended on is lost
        let defaults = request_table(&Request::default());
        request.retain(|k, v| {
            let k: &str = k;
            ["prompt", "seed", "batch", "noise"].contains(&k)
                || p.model.fields.iter().any(|f| f == k)
                || defaults.get(k) != Some(v)
        });
    }
    t.insert("request".into(), Value::Table(request));
    let mut knobs = to_value(&p.knobs);
    // every component's precision written out, in the family's order, so the file says what
    // each one ran at
    if let Value::Table(k) = &mut knobs
        && let Some(Value::Table(precision)) = k.get_mut("precision")
        && !p.model.components.is_empty()
    {
        let mut ordered = Table::new();
        if let Some(all) = precision.remove("all") {
            ordered.insert("all".into(), all);
        }
        for c in &p.model.components {
            let v = precision.remove(c).unwrap_or_else(|| Value::String(p.knobs.precision.get(c).to_string()));
            ordered.insert(c.clone(), v);
        }
        ordered.extend(std::mem::take(precision));
        *precision = ordered;
    }
    t.insert("knobs".into(), knobs);
    t.insert("build".into(), to_value(&p.build));
    if let Some(r) = &p.result {
        t.insert("result".into(), Value::Table(result_table(r)));
    }
    t
}

/// A request as a table. Seeds above TOML's integer range are written as a string of digits,
/// which [`read_request`] accepts back.
pub(super) fn request_table(r: &Request) -> Table {
    let seedless = Request { seed: 0, ..r.clone() };
    let mut t = match to_value(&seedless) {
        Value::Table(t) => t,
        _ => Table::new(),
    };
    let seed = i64::try_from(r.seed).map_or_else(|_| Value::String(r.seed.to_string()), Value::Integer);
    t.insert("seed".into(), seed);
    // The request's floats are f32: write their shortest form (7.3, not 7.300000190734863),
    // which reads back as the same f32.
    for (_, v) in t.iter_mut() {
        if let Value::Float(f) = v {
            *f = (*f as f32).to_string().parse().unwrap_or(*f);
        }
    }
    t
}

fn result_table(r: &RunResult) -> Table {
    let int = |u: u64| Value::Integer(i64::try_from(u).unwrap_or(i64::MAX));
    let mut t = Table::new();
    t.insert("output".into(), Value::String(r.output.clone()));
    t.insert("sha256".into(), Value::String(r.sha256.clone()));
    if !r.outputs_sha256.is_empty() {
        t.insert("outputs_sha256".into(), Value::Array(r.outputs_sha256.iter().cloned().map(Value::String).collect()));
    }
    t.insert("peak_ram_bytes".into(), int(r.peak_ram_bytes));
    t.insert("peak_vram_bytes".into(), int(r.peak_vram_bytes));
    if r.peak_heap_bytes > 0 {
        t.insert("peak_heap_bytes".into(), int(r.peak_heap_bytes));
    }
    if !r.notes.is_empty() {
        t.insert("notes".into(), Value::Array(r.notes.iter().cloned().map(Value::String).collect()));
    }
    let timings: Table = r.timings_ms.iter().map(|(k, v)| (k.clone(), int(*v))).collect();
    t.insert("timings_ms".into(), Value::Table(timings));
    t
}

/// Serializes a known type; the engine's types always fit TOML, so failure is not expected.
fn to_value<T: Serialize>(v: &T) -> Value {
    Value::try_from(v).unwrap_or_else(|e| Value::String(format!("unwritable: {e}")))
}

/// Reads `[request]`, checking the seed by hand so its error says what a seed must be. A request
/// without `noise` and with a batch above one reads as [`NoiseMode::PerImage`] (see below).
fn read_request(raw: &Table, origin: &Path) -> Result<Request> {
    let mut table = section_table(raw, "request", origin, true)?;
    let seed = match table.get("seed") {
        None => None,
        Some(Value::Integer(n)) if *n >= 0 => Some(*n as u64),
        Some(Value::String(s)) if s.parse::<u64>().is_ok() => s.parse().ok(),
        Some(other) => {
            return Err(Error::file(
                origin,
                format!("[request] seed = {other}: expected a whole number from 0 to 18446744073709551615"),
            ));
        }
    };
    table.remove("seed");
    let recorded_noise = table.contains_key("noise");
    let mut request: Request = from_table(table, "request", origin)?;
    if let Some(s) = seed {
        request.seed = s;
    }
    if !recorded_noise && request.batch > 1 {
        // Written before `noise` existed (this build always writes it), when image i of a batch
        // was drawn from seed + i: keep that meaning, so the run reproduces. A batch of one draws
        // the same noise either way and keeps today's default.
        request.noise = NoiseMode::PerImage;
    }
    Ok(request)
}

/// Reads one section into its type; a missing optional section reads as the type's default.
fn section<T: DeserializeOwned>(raw: &Table, name: &str, origin: &Path, required: bool) -> Result<T> {
    from_table(section_table(raw, name, origin, required)?, name, origin)
}

fn section_table(raw: &Table, name: &str, origin: &Path, required: bool) -> Result<Table> {
    match raw.get(name) {
        Some(Value::Table(t)) => Ok(t.clone()),
        Some(other) => Err(Error::file(
            origin,
            format!("`{name}` should be a [{name}] section, found the {} {other}", other.type_str()),
        )),
        None if required => Err(Error::file(origin, format!("[{name}] section missing"))),
        None => Ok(Table::new()),
    }
}

/// Reads a section's table into its type. On failure the offending key is found by reading each
/// key alone (every section type has defaults for missing fields), so the error can name it.
fn from_table<T: DeserializeOwned>(t: Table, name: &str, origin: &Path) -> Result<T> {
    Value::Table(t.clone()).try_into().map_err(|e: toml::de::Error| {
        let culprit = t.iter().find(|(k, v)| {
            let alone: Table = std::iter::once(((*k).clone(), (*v).clone())).collect();
            Value::Table(alone).try_into::<T>().is_err()
        });
        let msg = one_line(e.message());
        match culprit {
            Some((k, Value::Table(_))) => Error::file(origin, format!("[{name}.{k}] {msg}")),
            Some((k, v)) => Error::file(origin, format!("[{name}] {k} = {v}: {msg}")),
            None => Error::file(origin, format!("[{name}] {msg}")),
        }
    })
}

/// A TOML syntax error as one line with its position.
fn toml_error(s: &str, origin: &Path, e: &toml::de::Error) -> Error {
    let msg = one_line(e.message());
    match e.span() {
        Some(span) => {
            let before = &s[..span.start.min(s.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Error::file(origin, format!("invalid TOML at line {line}, column {col}: {msg}"))
        }
        None => Error::file(origin, format!("invalid TOML: {msg}")),
    }
}

/// Folds a multi-line message into one line.
fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Removes from `raw` every key that `known` has (recursing into tables), leaving what the typed
/// sections did not consume; tables left empty are removed.
fn subtract(raw: &mut Table, known: &Table) {
    for (k, kv) in known {
        let remove = match (raw.get_mut(k), kv) {
            (Some(Value::Table(rt)), Value::Table(kt)) => {
                subtract(rt, kt);
                rt.is_empty()
            }
            (Some(_), _) => true,
            (None, _) => false,
        };
        if remove {
            raw.remove(k);
        }
    }
}

/// Adds to `doc` the keys of `extra` it does not have, recursing into tables both have.
fn merge(doc: &mut Table, extra: &Table) {
    for (k, v) in extra {
        match (doc.get_mut(k), v) {
            (Some(Value::Table(d)), Value::Table(e)) => merge(d, e),
            (Some(_), _) => {}
            (None, v) => {
                doc.insert(k.clone(), v.clone());
            }
        }
    }
}
