//! End-to-end tests: run the real `headroom` binary the way a script would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn headroom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(args)
        .env("HEADROOM_DATA", std::env::temp_dir().join("headroom-e2e-data"))
        .output()
        .expect("the headroom binary runs")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Parses stdout as exactly one JSON object.
fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{text}"))
}

/// `--version` prints the engine's version.
#[test]
fn version_runs() {
    let out = headroom(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(headroom_engine::VERSION));
}

/// `inspect --json` prints the contract keys with the parameter counts the fixture script recorded.
#[test]
fn inspect_json_matches_fixture_counts() {
    let dir = fixtures().join("formats");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let entries = expected.as_object().expect("expected.json maps file names to counts");
    assert!(entries.len() >= 4, "fixtures cover safetensors, diffusers, gguf and ckpt");
    for (name, want) in entries {
        let path = dir.join(name);
        let out = headroom(&["inspect", path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let v = json(&out);
        for key in ["format", "family", "parameters", "bytes_by_precision", "tensors"] {
            assert!(v.get(key).is_some(), "{name}: no '{key}' in {v}");
        }
        let want_params = want.get("parameters").and_then(|p| p.as_u64()).unwrap_or_else(|| want.as_u64().unwrap());
        assert_eq!(v["parameters"].as_u64().unwrap(), want_params, "{name}");
        for p in ["f32", "f16", "bf16", "q8_0", "q6k", "q5k", "q4k", "q4_0"] {
            assert!(v["bytes_by_precision"][p].as_u64().is_some(), "{name}: bytes_by_precision.{p}");
        }
    }
}

/// A bad file is a one-line error naming it, on stderr, with a JSON error object in --json mode.
#[test]
fn bad_file_is_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("empty.safetensors");
    std::fs::write(&bad, b"").unwrap();
    let out = headroom(&["inspect", bad.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("empty.safetensors"), "{stderr}");
    let v = json(&out);
    assert!(v["error"].as_str().unwrap().contains("empty.safetensors"));
    assert!(v.get("detail").is_some());
}

/// `plan --json` has the contract keys, and a tiny budget turns the verdict away from `fits`.
#[test]
fn plan_json_verdicts() {
    let model = fixtures().join("sd/tiny-sd1");
    if !model.exists() {
        panic!("fixture {} is missing", model.display());
    }
    let m = model.to_str().unwrap();
    let out = headroom(&["plan", m, "--budget", "64GiB", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    for key in ["verdict", "weights_bytes", "activation_bytes", "total_bytes", "budget_bytes", "per_device", "suggestions"] {
        assert!(v.get(key).is_some(), "no '{key}' in {v}");
    }
    assert_eq!(v["verdict"], "fits");
    assert_eq!(v["budget_bytes"].as_u64().unwrap(), 64 << 30);
    let out = headroom(&["plan", m, "--budget", "1MiB", "--width", "512", "--height", "512", "--json"]);
    let v = json(&out);
    assert_ne!(v["verdict"], "fits", "{v}");
}

/// `noise` writes the torch-compatible noise the engine uses, as a safetensors file.
#[test]
fn noise_writes_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.safetensors");
    let out = headroom(&["noise", "--seed", "42", "--shape", "1,4,8,8", "--out", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + header_len]);
    assert!(header.contains("\"noise\"") && header.contains("[1,4,8,8]"), "{header}");
    let values: Vec<f32> = bytes[8 + header_len..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, headroom_engine::rng::randn(42, &[1, 4, 8, 8]));
}

/// Bad knob and request flags are refused with the value named.
#[test]
fn bad_flags_are_named() {
    let out = headroom(&["plan", "builtin:shapes", "--precision", "q3", "--json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("q3"));
    let out = headroom(&["plan", "builtin:shapes", "--width", "100"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("width = 100"));
}
