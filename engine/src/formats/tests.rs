//! Tests of [`inspect`] against the committed fixtures in `tests/fixtures/formats/`, made by
//! `tools/make_format_fixtures.py` with the real writers (safetensors, diffusers, gguf-py,
//! torch.save), whose `expected.json` records what the Python side counted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::*;
use crate::knobs::{Component, Precision};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats")
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json (run tools/make_format_fixtures.py)");
    match serde_json::from_str(&text).unwrap() {
        Value::Object(m) => m,
        _ => panic!("expected.json is not an object"),
    }
}

fn inspect_fixture(rel: &str) -> Inspection {
    inspect(&fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn as_u64_map(v: &Value) -> BTreeMap<String, u64> {
    v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

/// Every fixture's format, family, parameter counts (total, per component, per dtype), tensor
/// count and metadata match what the Python writer recorded.
#[test]
fn every_fixture_matches_expected() {
    let exp = expected();
    assert!(exp.len() >= 8, "expected.json has only {} entries", exp.len());
    for (rel, e) in &exp {
        let i = inspect_fixture(rel);
        assert_eq!(i.format.name(), e["format"].as_str().unwrap(), "{rel}: format");
        assert_eq!(i.family.id, e["family"].as_str().unwrap(), "{rel}: family ({})", i.family.reason);
        assert!(!i.family.reason.is_empty(), "{rel}: family reason");
        assert_eq!(i.parameters(), e["parameters"].as_u64().unwrap(), "{rel}: parameters");
        assert_eq!(i.tensors().count() as u64, e["tensors"].as_u64().unwrap(), "{rel}: tensor count");
        let comps: BTreeMap<String, u64> = i.components.iter().map(|c| (c.name.clone(), c.parameters)).collect();
        assert_eq!(comps, as_u64_map(&e["components"]), "{rel}: components");
        assert_eq!(i.dtype_histogram(), as_u64_map(&e["dtypes"]), "{rel}: dtypes");
        for (k, v) in e["metadata"].as_object().unwrap() {
            assert_eq!(i.metadata.get(k).map(String::as_str), v.as_str(), "{rel}: metadata {k}");
        }
        for name in e.get("unknown").and_then(Value::as_array).into_iter().flatten() {
            let t = i.tensors().find(|t| t.name == name.as_str().unwrap()).unwrap();
            assert!(t.dtype.starts_with("unknown(") && t.bytes.is_none(), "{rel}: {t:?}");
        }
        assert!(!i.files.is_empty(), "{rel}: files");
        for t in i.tensors().filter(|t| !t.dtype.starts_with("unknown")) {
            assert!(t.bytes.is_some(), "{rel}: {} has no size", t.name);
        }
    }
}

/// The diffusers folder reads the non-variant UNet, the only (fp16) text encoder and the `.bin`
/// VAE, says so, and maps folders to knob components.
#[test]
fn diffusers_variants_and_bin() {
    let i = inspect_fixture("diffusers");
    assert_eq!(i.metadata["unet.weights"], "diffusion_pytorch_model.safetensors");
    assert!(!i.metadata.contains_key("unet.variant"));
    assert_eq!(i.metadata["text_encoder.variant"], "fp16");
    assert!(
        i.warnings.iter().any(|w| w.starts_with("unet:") && w.contains("diffusion_pytorch_model.fp16.safetensors")),
        "{:?}",
        i.warnings
    );
    assert_eq!(i.files.len(), 3);
    assert!(i.files.iter().any(|f| f.ends_with("vae/diffusion_pytorch_model.bin")));
    let comp = |n: &str| i.components.iter().find(|c| c.name == n).unwrap().component;
    assert_eq!(comp("unet"), Some(Component::Unet));
    assert_eq!(comp("vae"), Some(Component::Vae));
    assert_eq!(comp("text_encoder"), Some(Component::Text));
    assert!(i.family.reason.contains("quick_gelu"), "{}", i.family.reason);
    // The text encoder is stored in f16: its f16 size is its stored size.
    let te = i.components.iter().find(|c| c.name == "text_encoder").unwrap();
    let stored: u64 = te.tensors.iter().filter_map(|t| t.bytes).sum();
    let ints: u64 = te.tensors.iter().filter(|t| t.dtype == "I64").filter_map(|t| t.bytes).sum();
    assert_eq!(i.component_bytes(Component::Text, Precision::F16), stored);
    assert_eq!(i.component_bytes(Component::Text, Precision::F32), 2 * (stored - ints) + ints);
}

/// A single diffusers component folder (`unet/`) is inspected on its own.
#[test]
fn single_component_folder() {
    let i = inspect_fixture("diffusers/unet");
    assert_eq!(i.components.len(), 1);
    assert_eq!(i.components[0].component, Some(Component::Unet));
    assert_eq!(i.parameters(), expected()["diffusers"]["components"]["unet"].as_u64().unwrap());
}

/// The LDM checkpoint unwraps `state_dict`, reads a bf16 view at a storage offset, a Parameter
/// and int64 ids, and guesses SD 1.x from `cond_stage_model.transformer`.
#[test]
fn ckpt_details() {
    let i = inspect_fixture("ldm.ckpt");
    assert_eq!(i.metadata["checkpoint.state_dict_key"], "state_dict");
    let view = i.tensors().find(|t| t.name == "model.diffusion_model.out.2.weight").unwrap();
    assert_eq!((view.dtype.as_str(), view.shape.as_slice(), view.bytes), ("BF16", &[2u64, 32][..], Some(128)));
    let ids = i.tensors().find(|t| t.name.ends_with("position_ids")).unwrap();
    assert_eq!((ids.dtype.as_str(), ids.shape.as_slice()), ("I64", &[1u64, 77][..]));
    assert!(i.family.reason.contains("cond_stage_model.transformer"), "{}", i.family.reason);
    let names: Vec<&str> = i.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["text_encoder", "unet", "vae", "other"]);
}

/// GGUF shapes come out outermost first, quantized sizes follow the blocks, and the array
/// metadata is summarized.
#[test]
fn gguf_details() {
    let i = inspect_fixture("tiny.gguf");
    let get = |n: &str| i.tensors().find(|t| t.name == n).unwrap().clone();
    assert_eq!(get("token_embd.weight").shape, [16, 32]);
    let q = get("blk.0.attn_q.weight");
    assert_eq!((q.dtype.as_str(), q.shape.as_slice(), q.bytes), ("Q8_0", &[4u64, 64][..], Some(4 * 2 * 34)));
    assert_eq!(get("blk.0.attn_k.weight").bytes, Some(2 * 2 * 18));
    assert!(i.metadata["tokenizer.ggml.tokens"].starts_with("[10 × string: tok0, tok1"), "{}", i.metadata["tokenizer.ggml.tokens"]);
    assert_eq!(i.metadata["gguf.version"], "3");
    assert!(i.warnings.iter().any(|w| w.contains("blk.0.weird.weight") && w.contains("200")));
}

/// A GGUF's bytes as stored, per GGML type, counted from its blocks: Q8_0 is 34 bytes per 32
/// values, IQ4_NL 18 per 32, F16 2 per value, F32 4; the tensor of an unknown type is left out
/// and counted as such, with its warning kept.
#[test]
fn gguf_stored_bytes_per_type() {
    let i = inspect_fixture("tiny.gguf");
    let f32_bytes = (16 * 32 + 32) * 4; // token_embd [16, 32], attn_norm [32]
    let f16_bytes = 8 * 32 * 2; // ffn_up [8, 32]
    let q8_bytes = 4 * 64 / 32 * 34; // attn_q [4, 64]: 8 blocks
    let iq4_bytes = 2 * 64 / 32 * 18; // attn_k [2, 64]: 4 blocks
    let want = BTreeMap::from([
        ("F32".to_string(), f32_bytes),
        ("F16".to_string(), f16_bytes),
        ("Q8_0".to_string(), q8_bytes),
        ("IQ4_NL".to_string(), iq4_bytes),
    ]);
    assert_eq!(i.stored_bytes_by_type(), want);
    assert_eq!(i.stored_bytes(), f32_bytes + f16_bytes + q8_bytes + iq4_bytes);
    assert_eq!(i.stored_bytes(), 3032);
    assert_eq!(i.uncounted_tensors(), 1);
    assert!(i.warnings.iter().any(|w| w.contains("blk.0.weird.weight") && w.contains("not counted")), "{:?}", i.warnings);
}

/// A safetensors file's stored bytes are per dtype name, and add up to its data.
#[test]
fn safetensors_stored_bytes_per_dtype() {
    let i = inspect_fixture("tiny.safetensors");
    let by = i.stored_bytes_by_type();
    for (dtype, bytes) in &by {
        let elements: u64 = i.tensors().filter(|t| &t.dtype == dtype).map(TensorInfo::elements).sum();
        let width = match dtype.as_str() {
            "F32" | "I32" => 4,
            "F16" | "BF16" => 2,
            "I64" => 8,
            other => panic!("unexpected dtype {other}"),
        };
        assert_eq!(*bytes, elements * width, "{dtype}");
    }
    assert_eq!(by.values().sum::<u64>(), i.stored_bytes());
    assert_eq!(i.uncounted_tensors(), 0);
}

/// The inspection serializes with the lowercase format and knob component names others rely on.
#[test]
fn serializes_for_the_cli() {
    let i = inspect_fixture("tiny.safetensors");
    let v = serde_json::to_value(&i).unwrap();
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["family"]["id"], "sd2");
    let comps = v["components"].as_array().unwrap();
    assert!(comps.iter().any(|c| c["component"] == "unet" && c["name"] == "unet"));
    assert_eq!(v["metadata"]["title"], "tiny fixture");
    let by = i.bytes_by_precision();
    let keys: Vec<&str> = by.keys().map(String::as_str).collect();
    assert_eq!(keys, ["bf16", "f16", "f32", "q4_0", "q4k", "q5k", "q6k", "q8_0"]);
    assert!(by["f32"] > by["f16"] && by["f16"] == by["bf16"]);
    // Its rows (9, 24, 77 long) are not whole q8_0 blocks and stay f16; its 1-D tensors stay f32.
    assert!(by["q8_0"] > by["f16"] && by["q8_0"] == by["q4_0"]);
}

/// Truncating a fixture anywhere gives an error, never a panic (a GGUF cut inside the data of
/// its last tensor, whose type is unknown and so has no size, is the one cut that can pass).
#[test]
fn truncated_fixtures_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (rel, may_pass_tail) in [("tiny.gguf", 64), ("tiny.safetensors", 0), ("ldm.ckpt", 0)] {
        let bytes = std::fs::read(fixtures().join(rel)).unwrap();
        let path = dir.path().join(rel);
        let step = (bytes.len() / 300).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let r = inspect(&path);
            if cut + may_pass_tail < bytes.len() {
                let e = r.err().unwrap_or_else(|| panic!("{rel} cut at {cut} of {} passed", bytes.len()));
                assert!(e.to_string().contains(rel), "{e}");
            }
        }
    }
}

/// Shards without an index are found from any one of them (or their folder); a missing one is named.
#[test]
fn shards_without_index() {
    let dir = tempfile::tempdir().unwrap();
    for n in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        std::fs::copy(fixtures().join("sharded").join(n), dir.path().join(n)).unwrap();
    }
    let want = expected()["sharded"]["parameters"].as_u64().unwrap();
    let i = inspect(&dir.path().join("model-00001-of-00002.safetensors")).unwrap();
    assert_eq!((i.parameters(), i.files.len(), i.metadata["shards"].as_str()), (want, 2, "2"));
    assert_eq!(inspect(dir.path()).unwrap().parameters(), want);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = inspect(&dir.path().join("model-00001-of-00002.safetensors")).unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors: shard 2 of 2 is missing"), "{e}");
}

/// An index naming a shard outside its folder is refused.
#[test]
fn index_cannot_leave_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors.index.json");
    std::fs::write(&p, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
    let e = inspect(&p).unwrap_err().to_string();
    assert!(e.contains("leaves the model's folder"), "{e}");
}

/// A component folder prefers non-variant weights (even a `.bin`) over variants, safetensors over
/// `.bin`, and never picks a shard directly.
#[test]
fn component_weight_choice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for n in [
        "config.json",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model.safetensors.index.ema.json",
        "notes.txt",
    ] {
        std::fs::write(d.join(n), b"").unwrap();
    }
    let pick = || diffusers::component_weights(d).unwrap().map(|c| (file_name(&c.file), c.variant, c.index));
    assert_eq!(pick(), Some(("diffusion_pytorch_model.bin".into(), None, false)));
    std::fs::write(d.join("diffusion_pytorch_model.safetensors"), b"").unwrap();
    assert_eq!(pick(), Some(("diffusion_pytorch_model.safetensors".into(), None, false)));
    std::fs::remove_file(d.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::remove_file(d.join("diffusion_pytorch_model.bin")).unwrap();
    std::fs::remove_file(d.join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    assert_eq!(pick(), Some(("diffusion_pytorch_model.safetensors.index.ema.json".into(), Some("ema".into()), true)));
    std::fs::remove_file(d.join("config.json")).unwrap();
    assert_eq!(pick(), None);
}
