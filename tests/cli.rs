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
        // the family of this build that runs it, if any: none for a GGUF language model or a
        // folder of shards that is no diffusers folder; the rest are Stable Diffusion or tried as it
        let runs_with = v["runs_with"]["family"].as_str();
        let runnable = !matches!(name.as_str(), "tiny.gguf" | "sharded");
        assert_eq!(runs_with, runnable.then_some("latent-diffusion"), "{name}: {}", v["runs_with"]);
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

/// Asserts a command failed with exit code 1 (not a signal) and one stderr line containing `words`.
fn fails_in_one_line(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status {:?}, stderr: {stderr}", out.status);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "no '{w}' in: {stderr}");
    }
}

/// CRC-32 as PNG chunks use it.
fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |mut c, &b| {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        c
    })
}

/// Every file of the bad-file corpus (`tests/fixtures/bad/`, made by tools/make_bad_fixtures.py)
/// fails the way `expected.txt` says: `inspect` and `reproduce` entries through the CLI with exit
/// status 1 (not a signal) and exactly one stderr line, `restore` entries through what a drop on
/// the app calls; every error line names the entry and contains its expected text.
#[test]
fn bad_file_corpus_fails_in_one_line() {
    let dir = fixtures().join("bad");
    let manifest = std::fs::read_to_string(dir.join("expected.txt")).expect("tests/fixtures/bad/expected.txt");
    let mut listed = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for line in manifest.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let fields = line.split_once(char::is_whitespace).and_then(|(name, rest)| {
            let (how, expected) = rest.trim_start().split_once(char::is_whitespace)?;
            Some((name, how, expected.trim()))
        });
        let Some((name, how, expected)) = fields else { panic!("malformed manifest line: {line}") };
        let path = dir.join(name);
        let top = name.split('/').next().unwrap_or(name);
        listed.insert(top.to_string());
        let named = dir.join(top).display().to_string();
        let error = match how {
            "inspect" | "reproduce" => {
                let out = headroom(&[how, path.to_str().unwrap()]);
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                if out.status.code() != Some(1) {
                    failures.push(format!("{name}: exit status {:?}, stderr: {stderr}", out.status));
                    continue;
                }
                if stderr.trim_end().lines().count() != 1 {
                    failures.push(format!("{name}: not one line on stderr: {stderr}"));
                    continue;
                }
                stderr.trim_end().to_string()
            }
            "restore" => match headroom_engine::media::restore_from_file(&path) {
                Ok(r) => {
                    failures.push(format!("{name}: restored ({:?}), expected an error", r.mapped));
                    continue;
                }
                Err(e) => e.to_string(),
            },
            other => panic!("{name}: unknown way in '{other}'"),
        };
        if error.contains('\n') || !error.contains(&named) || !error.contains(expected) {
            failures.push(format!("{name}: expected one line naming {named} and containing '{expected}', got: {error}"));
        }
    }
    assert!(failures.is_empty(), "{} of the corpus failed differently:\n{}", failures.len(), failures.join("\n"));
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "expected.txt")
        .collect();
    assert_eq!(on_disk, listed, "every file in tests/fixtures/bad/ is in expected.txt and the other way round");
    assert!(listed.len() >= 30, "the corpus has {} entries", listed.len());
}

/// `reproduce` of a ~250-byte PNG whose header claims 100000×100000 pixels is a one-line error
/// (it carries no Headroom profile), not an abort from decoding 30 GB of pixels.
#[test]
fn reproduce_of_a_size_bomb_png_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    let mut ihdr = [100_000u32.to_be_bytes(), 100_000u32.to_be_bytes()].concat();
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let text = b"parameters\0a red circle\nSteps: 20, Sampler: Euler, Seed: 7, Size: 64x64".to_vec();
    for (kind, data) in [(b"IHDR", ihdr), (b"tEXt", text), (b"IEND", Vec::new())] {
        let mut chunk = [kind.as_slice(), &data].concat();
        let crc = crc32(&chunk);
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        chunk.extend_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(&chunk);
    }
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, &bytes).unwrap();
    let out = headroom(&["reproduce", bomb.to_str().unwrap()]);
    fails_in_one_line(&out, &["bomb.png", "no Headroom profile"]);
}

/// Requests past the bounds (a 4096×4096 image, 1e11 seconds of audio, more audio than one run
/// makes) are one-line errors naming the field, the value and the bound, not aborts (`--json`
/// keeps progress lines off stderr).
#[test]
fn oversized_requests_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let out = headroom(&["run", "builtin:shapes", "--width", "4096", "--height", "4096", "--steps", "1", "--out", out_dir, "--json"]);
    fails_in_one_line(&out, &["width = 4096", "2048"]);
    let out = headroom(&["run", "builtin:melodies", "--seconds", "100000000000", "--out", out_dir, "--json"]);
    fails_in_one_line(&out, &["seconds = 100000000000", "600"]);
    let out = headroom(&["run", "builtin:melodies", "--seconds", "500", "--out", out_dir, "--json"]);
    fails_in_one_line(&out, &["seconds = 500", "65.54 s"]);
}

fn tiny_sd1() -> String {
    fixtures().join("sd/tiny-sd1").to_str().unwrap().to_string()
}

/// `run --json` writes a PNG with its profile; `reproduce` of that PNG says identical.
#[test]
fn run_then_reproduce_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let m = tiny_sd1();
    let res = headroom(&["run", &m, "--prompt", "a red circle", "--steps", "2", "--width", "32", "--height", "32", "--seed", "7", "--out", out, "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    for key in ["outputs", "profile", "sha256", "timings_ms", "peak_ram_bytes", "peak_vram_bytes"] {
        assert!(v.get(key).is_some(), "no '{key}' in {v}");
    }
    let png = v["outputs"][0].as_str().unwrap().to_string();
    assert!(png.ends_with(".png") && Path::new(&png).is_file());
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    let again = headroom(&["reproduce", &png, "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let r = json(&again);
    assert_eq!(r["identical"], true, "{r}");
    assert_eq!(r["sha256"], v["sha256"]);

    // A profile whose recorded hash differs is reported as drift, with exit code 2.
    let profile = v["profile"].as_str().unwrap();
    let text = std::fs::read_to_string(profile).unwrap();
    let tampered = text.replace(v["sha256"].as_str().unwrap(), &"0".repeat(64));
    let tampered_path = dir.path().join("tampered.toml");
    std::fs::write(&tampered_path, tampered).unwrap();
    let drift = headroom(&["reproduce", tampered_path.to_str().unwrap(), "--json"]);
    assert_eq!(drift.status.code(), Some(2));
    let d = json(&drift);
    assert_eq!(d["identical"], false);
    assert!(d["drift"][0].as_str().unwrap().contains("sha256"), "{d}");
}

/// A stable-diffusion.cpp q8_0 GGUF: `inspect` says what it is, `plan` counts its weights as
/// stored, `run` writes a PNG and `reproduce` of it says identical.
#[test]
fn gguf_run_then_reproduce_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let m = fixtures().join("gguf/tiny-sd1-q8_0.gguf").to_str().unwrap().to_string();
    let insp = headroom(&["inspect", &m, "--json"]);
    assert!(insp.status.success(), "{}", String::from_utf8_lossy(&insp.stderr));
    let i = json(&insp);
    assert_eq!(i["format"], "gguf");
    let reason = i["runs_with"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("a stable-diffusion.cpp GGUF of Stable Diffusion 1.x"), "{i}");
    let plan = headroom(&["plan", &m, "--json"]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    assert_eq!(json(&plan)["weights_bytes"], i["stored_bytes"]);
    let res = headroom(&["run", &m, "--steps", "2", "--width", "64", "--height", "64", "--seed", "7", "--out", out, "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    let png = v["outputs"][0].as_str().unwrap().to_string();
    assert!(png.ends_with(".png") && Path::new(&png).is_file());
    let again = headroom(&["reproduce", &png, "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let r = json(&again);
    assert_eq!(r["identical"], true, "{r}");
    assert_eq!(r["sha256"], v["sha256"]);
}

/// `reproduce` compares every output of a batch, not only the first, and names each recorded
/// fact that differs (here the thread count) with whether identical output was expected.
#[test]
fn reproduce_checks_every_output_and_explains_drift() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let res = headroom(&["run", &tiny_sd1(), "--steps", "1", "--width", "32", "--height", "32", "--batch", "2", "--out", out, "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    let profile = v["profile"].as_str().unwrap();
    let mut doc: toml::Table = std::fs::read_to_string(profile).unwrap().parse().unwrap();
    let hashes = doc["result"]["outputs_sha256"].as_array().expect("every output hashed").clone();
    assert_eq!(hashes.len(), 2);
    assert_eq!(hashes[0].as_str(), v["sha256"].as_str());
    let again = headroom(&["reproduce", profile, "--json"]);
    assert_eq!(json(&again)["identical"], true, "{}", String::from_utf8_lossy(&again.stdout));

    // The second output's recorded hash and the thread count changed: both are named.
    let result = doc["result"].as_table_mut().unwrap();
    result.insert("outputs_sha256".into(), toml::Value::Array(vec![hashes[0].clone(), toml::Value::String("0".repeat(64))]));
    let threads = doc["build"]["threads"].as_integer().unwrap();
    doc["build"].as_table_mut().unwrap().insert("threads".into(), toml::Value::Integer(threads + 1));
    let tampered = dir.path().join("tampered.toml");
    std::fs::write(&tampered, toml::to_string(&doc).unwrap()).unwrap();
    let drift = headroom(&["reproduce", tampered.to_str().unwrap(), "--json"]);
    assert_eq!(drift.status.code(), Some(2), "{}", String::from_utf8_lossy(&drift.stderr));
    let d = json(&drift);
    let lines: Vec<&str> = d["drift_explained"].as_array().unwrap().iter().filter_map(|x| x.as_str()).collect();
    assert!(lines.iter().any(|l| l.starts_with("output 1 sha256: recorded 000")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("build.threads") && l.contains("not guaranteed")), "{lines:?}");
}

/// `--noise` chooses how a batch's noise is drawn and the profile records it: `batch` (the
/// default) and `per-image` give the same first image (Euler, a 16×16 latent) and different
/// second ones. A profile from before the field existed (here one with it removed) and a batch of
/// two reruns per image: the per-image run's reproduces identically, the batch run's does not.
#[test]
fn noise_modes_and_old_batch_profiles_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_sd1();
    let run = |sub: &str, extra: &[&str]| {
        let out = dir.path().join(sub);
        let mut args = vec!["run", model.as_str(), "--steps", "1", "--width", "32", "--height", "32", "--batch", "2", "--out"];
        let out_s = out.to_str().unwrap().to_string();
        args.push(&out_s);
        args.push("--json");
        args.extend_from_slice(extra);
        let res = headroom(&args);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        let profile = PathBuf::from(json(&res)["profile"].as_str().unwrap());
        let text = std::fs::read_to_string(&profile).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let hashes: Vec<String> = doc["result"]["outputs_sha256"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_string()).collect();
        (text, hashes)
    };
    let (batch_text, batch) = run("batch", &[]);
    let (per_text, per_image) = run("per-image", &["--noise", "per-image"]);
    assert!(batch_text.contains("noise = \"batch\"\n"), "{batch_text}");
    assert!(per_text.contains("noise = \"per-image\"\n"), "{per_text}");
    assert_eq!(batch[0], per_image[0], "a 16×16 latent's first image is the same in both modes");
    assert_ne!(batch[1], per_image[1], "the second image follows the mode");

    let reproduce_old = |text: &str, name: &str| {
        let old = text.lines().filter(|l| !l.starts_with("noise = ")).collect::<Vec<_>>().join("\n");
        assert_eq!(old.lines().count() + 1, text.lines().count(), "one `noise` line removed");
        let path = dir.path().join(name);
        std::fs::write(&path, old).unwrap();
        let again = headroom(&["reproduce", path.to_str().unwrap(), "--json"]);
        (again.status.code(), json(&again))
    };
    let (code, r) = reproduce_old(&per_text, "old-per-image.toml");
    assert_eq!((code, &r["identical"]), (Some(0), &serde_json::Value::Bool(true)), "{r}");
    assert!(r["drift"].as_array().unwrap().iter().all(|d| !d.as_str().unwrap().contains("noise")), "{r}");
    let (code, r) = reproduce_old(&batch_text, "old-batch.toml");
    assert_eq!(code, Some(2), "{r}");
    let drift: Vec<&str> = r["drift"].as_array().unwrap().iter().filter_map(|d| d.as_str()).collect();
    assert!(drift.iter().any(|d| d.starts_with("output 1 sha256")) && !drift.iter().any(|d| d.starts_with("output sha256")), "{drift:?}");
}

/// `run --profile` reruns a saved profile to the same content hash.
#[test]
fn run_profile_again() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_sd1();
    let first = headroom(&["run", &m, "--steps", "2", "--width", "32", "--height", "32", "--scheduler", "ddim", "--out", dir.path().join("a").to_str().unwrap(), "--json"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let v = json(&first);
    let second = headroom(&["run", "--profile", v["profile"].as_str().unwrap(), "--out", dir.path().join("b").to_str().unwrap(), "--json"]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(json(&second)["sha256"], v["sha256"]);
}

/// `ab --json` runs both sides and reports the image metrics and ratios.
#[test]
fn ab_reports_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_sd1();
    let res = headroom(&[
        "ab", &m, "--steps", "2", "--width", "32", "--height", "32", "--a", "slicing.attention_slice=0",
        "--b", "slicing.attention_slice=3", "--out", dir.path().to_str().unwrap(), "--json",
    ]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    for key in ["psnr_db", "ssim", "max_abs_diff", "time_ratio", "peak_memory_ratio", "weight_bytes_ratio"] {
        assert!(v["metrics"].get(key).is_some(), "no metrics.{key} in {v}");
    }
    // Slicing attention changes no pixel beyond rounding.
    assert!(v["metrics"]["max_abs_diff"].as_u64().unwrap() <= 1, "{v}");
    assert!(v["a"]["outputs"][0].as_str().is_some() && v["b"]["outputs"][0].as_str().is_some());
    // without --b, B is A's full-precision reference
    let res = headroom(&[
        "ab", &m, "--steps", "2", "--width", "32", "--height", "32", "--a", "precision.unet=q8_0,slicing.attention_slice=3",
        "--out", dir.path().join("ref").to_str().unwrap(), "--json",
    ]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    let profile = |side: &str| std::fs::read_to_string(v[side]["profile"].as_str().unwrap()).unwrap();
    assert!(profile("a").contains("unet = \"q8_0\""), "{}", profile("a"));
    let b = profile("b");
    assert!(b.contains("unet = \"f32\"") && !b.contains("attention_slice = 3"), "{b}");
}

/// `sweep` runs the f32 reference and one run per value, in the order given, with finite numbers
/// (identical outputs: PSNR 99), the same rows as CSV, and a bad value named before anything runs.
#[test]
fn sweep_rows_follow_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_sd1();
    let csv = dir.path().join("rows.csv");
    let common = ["--steps", "2", "--width", "32", "--height", "32", "--knob", "precision.unet"];
    let mut args: Vec<&str> = vec!["sweep", &m];
    args.extend(common);
    args.extend(["--values", "f32,q8_0,q4k", "--out", dir.path().to_str().unwrap(), "--csv", csv.to_str().unwrap(), "--json"]);
    let res = headroom(&args);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    assert_eq!(v["knob"], "precision.unet");
    let rows = v["rows"].as_array().unwrap();
    let values: Vec<&str> = rows.iter().map(|r| r["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["f32", "q8_0", "q4k"]);
    for r in rows {
        for key in ["psnr_db", "ssim", "peak_ram_bytes", "peak_vram_bytes", "time_ms", "weight_bytes"] {
            assert!(r[key].is_number(), "{key} in {r}");
        }
        assert!(std::path::Path::new(r["output"].as_str().unwrap()).is_file());
    }
    assert_eq!(rows[0]["psnr_db"], 99.0, "f32 is the reference itself");
    assert!(rows[2]["weight_bytes"].as_u64() < rows[0]["weight_bytes"].as_u64());
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("value,output,psnr_db,ssim,"), "{text}");
    assert_eq!(text.lines().count(), 4);
    let bad_dir = dir.path().join("bad");
    let mut bad: Vec<&str> = vec!["sweep", &m];
    bad.extend(common);
    bad.extend(["--values", "f32,q3", "--out", bad_dir.to_str().unwrap()]);
    fails_in_one_line(&headroom(&bad), &["precision.unet=q3"]);
    assert!(!bad_dir.exists(), "nothing ran");
}

/// Running a model file no family can run is a one-line error naming it, and nothing is written.
#[test]
fn unrunnable_model_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = fixtures().join("formats");
    let file = std::fs::read_dir(&gguf).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "gguf")).unwrap();
    let out = dir.path().join("out");
    let res = headroom(&["run", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    assert!(!res.status.success());
    let v = json(&res);
    assert!(v["error"].as_str().unwrap().contains(file.file_name().unwrap().to_str().unwrap()), "{v}");
    assert!(std::fs::read_dir(&out).map(|d| d.count() == 0).unwrap_or(true));
}

/// A GGUF language model: `inspect` names its family `llm:llama`, says running it is not
/// supported yet, and gives its bytes as stored per GGML type (no knob sizes in the text);
/// `plan` refuses it in one line naming the file, exit code 1, and plans nothing.
#[test]
fn gguf_language_model_is_inspected_and_not_planned() {
    let file = fixtures().join("formats/tiny.gguf");
    let f = file.to_str().unwrap();
    let out = headroom(&["inspect", f, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    assert_eq!(v["family"], "llm:llama");
    assert!(v["runs_with"].is_null(), "{v}");
    assert_eq!(v["not_supported"], "running language models (llm:llama) is not supported yet");
    assert_eq!(v["parameters"], 1200);
    // F32 (16×32 + 32) × 4, F16 8×32 × 2, Q8_0 8 blocks × 34, IQ4_NL 4 blocks × 18
    assert_eq!(v["stored_bytes_by_type"], serde_json::json!({"F32": 2176, "F16": 512, "Q8_0": 272, "IQ4_NL": 72}));
    assert_eq!((v["stored_bytes"].as_u64(), v["uncounted_tensors"].as_u64()), (Some(3032), Some(1)));
    let out = headroom(&["inspect", f]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  family     Language model (llama) [llm:llama] (general.architecture = llama)",
        "  runs with  nothing in this build: running language models (llm:llama) is not supported yet",
        "  stored     2.96 KiB (F32 2.12 KiB, F16 512 B, Q8_0 272 B, IQ4_NL 72 B, 1 tensor of an unknown type not counted)",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
    assert!(!text.contains("size at each precision"), "{text}");
    for json_mode in [false, true] {
        let args: &[&str] = if json_mode { &["plan", f, "--json"] } else { &["plan", f] };
        let out = headroom(args);
        assert_eq!(out.status.code(), Some(1), "{json_mode}");
        fails_in_one_line(&out, &["tiny.gguf", "cannot be planned", "no family of this build runs it", "llm:llama", "2.96 KiB as stored"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("verdict"), "{stdout}");
        if json_mode {
            assert!(json(&out)["error"].as_str().unwrap().contains("cannot be planned"));
        }
    }
}

/// Every example profile in profiles/ parses (and names a model the CLI can resolve or a path).
#[test]
fn example_profiles_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let p = headroom_engine::profile::Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.model.source.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 1, "profiles/ has example profiles");
}

/// Every embedded model's weights match the sha256 in its manifest, and a few steps of it run.
#[test]
fn embedded_models_match_manifest_and_run() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut checked = 0;
    for entry in std::fs::read_dir(&models).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("model.toml");
        if !manifest.is_file() {
            continue;
        }
        let m: toml::Table = std::fs::read_to_string(&manifest).unwrap().parse().unwrap();
        let hashes = m["sha256"].as_table().expect("[sha256] in the manifest");
        assert!(!hashes.is_empty());
        for (file, want) in hashes {
            let got = headroom_engine::fsutil::sha256_file(&dir.join(file)).unwrap();
            assert_eq!(&got, want.as_str().unwrap(), "{}/{file}", dir.display());
        }
        let name = dir.file_name().unwrap().to_str().unwrap();
        let out = tempfile::tempdir().unwrap();
        let res = headroom(&["run", &format!("builtin:{name}"), "--steps", "2", "--out", out.path().to_str().unwrap(), "--json"]);
        assert!(res.status.success(), "builtin:{name}: {}", String::from_utf8_lossy(&res.stderr));
        assert!(Path::new(json(&res)["outputs"][0].as_str().unwrap()).is_file());
        checked += 1;
    }
    assert!(checked >= 1, "models/ holds the embedded models");
}

/// A built-in model runs at its native size when the request names none.
/// `builtin:melodies` runs at its native size and writes a WAV (its spectrogram through Griffin-Lim)
/// with the profile embedded; `reproduce` of that WAV says identical.
#[test]
fn builtin_melodies_writes_wav_and_reproduces() {
    let out = tempfile::tempdir().unwrap();
    let res = headroom(&["run", "builtin:melodies", "--steps", "2", "--out", out.path().to_str().unwrap(), "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    let profile = headroom_engine::profile::Profile::load(Path::new(v["profile"].as_str().unwrap())).unwrap();
    assert_eq!((profile.request.width, profile.request.height), (64, 128));
    let wav = v["outputs"][0].as_str().unwrap().to_string();
    assert!(wav.ends_with(".wav"), "{wav}");
    let (audio, embedded) = headroom_engine::media::read_wav(Path::new(&wav)).unwrap();
    assert_eq!((audio.sample_rate, audio.samples.len()), (16000, 32768), "2.048 s at 16 kHz");
    let peak = audio.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!((0.4..=0.51).contains(&peak), "peak {peak}");
    assert_eq!(embedded.expect("profile in the WAV").request, profile.request);
    let again = headroom(&["reproduce", &wav, "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(json(&again)["identical"], true, "{}", String::from_utf8_lossy(&again.stdout));
}

/// A MusicGen folder runs from the command line: one second at the codec's 50 frames a second
/// is 50 tokens, 47 frames once the 4 codebooks' delay is undone, 47 × 640 samples at 32 kHz, in
/// a WAV with the profile embedded (family `musicgen`, components `text`, `lm`, `codec`; no
/// sampling fields written when unset); `reproduce` of that WAV says identical.
#[test]
fn musicgen_writes_wav_and_reproduces() {
    let out = tempfile::tempdir().unwrap();
    let model = fixtures().join("musicgen/tiny-musicgen");
    let res = headroom(&["run", model.to_str().unwrap(), "--prompt", "x", "--seconds", "1", "--out", out.path().to_str().unwrap(), "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    let wav = v["outputs"][0].as_str().unwrap().to_string();
    assert!(wav.ends_with(".wav"), "{wav}");
    let (audio, embedded) = headroom_engine::media::read_wav(Path::new(&wav)).unwrap();
    assert_eq!((audio.sample_rate, audio.samples.len()), (32000, 47 * 640));
    assert!(audio.samples.iter().any(|s| s.abs() > 1e-3), "silence");
    let toml_text = std::fs::read_to_string(v["profile"].as_str().unwrap()).unwrap();
    assert!(toml_text.contains("family = \"musicgen\"") && !toml_text.contains("top_k ="), "{toml_text}");
    assert_eq!(embedded.expect("profile in the WAV").request.seconds, Some(1.0));
    let again = headroom(&["reproduce", &wav, "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(json(&again)["identical"], true, "{}", String::from_utf8_lossy(&again.stdout));
}

/// Single-file LDM checkpoints (`.safetensors` and `.ckpt` + `.yaml`) run from the command line
/// like folders, and their outputs reproduce.
#[test]
fn single_file_checkpoints_run_and_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["tiny-ldm1.safetensors", "tiny-ldm2.ckpt"] {
        let m = fixtures().join("sd/ldm").join(file);
        let out = dir.path().join(file);
        let res = headroom(&["run", m.to_str().unwrap(), "--steps", "2", "--width", "32", "--height", "32", "--out", out.to_str().unwrap(), "--json"]);
        assert!(res.status.success(), "{file}: {}", String::from_utf8_lossy(&res.stderr));
        let v = json(&res);
        let png = v["outputs"][0].as_str().unwrap().to_string();
        let again = headroom(&["reproduce", &png, "--json"]);
        assert!(again.status.success(), "{file}: {}", String::from_utf8_lossy(&again.stderr));
        assert_eq!(json(&again)["identical"], true);
    }
}

/// An SDXL diffusers folder is planned (its 7 UNet blocks), runs from the command line at 64×64
/// and writes a PNG whose `reproduce` is identical; the profile names the family.
#[test]
fn sdxl_folder_runs_and_reproduces() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixtures().join("sdxl/tiny-sdxl");
    let m = m.to_str().unwrap();
    let plan = headroom(&["plan", m, "--width", "64", "--height", "64", "--json"]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let p = json(&plan);
    assert_eq!(p["verdict"], "fits", "{p}");
    assert_eq!(p["unet_blocks"], 7, "{p}");
    let out = dir.path().to_str().unwrap();
    let res = headroom(&["run", m, "--prompt", "a photo of an astronaut", "--steps", "2", "--width", "64", "--height", "64", "--out", out, "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    let png = v["outputs"][0].as_str().unwrap().to_string();
    assert!(png.ends_with(".png") && Path::new(&png).is_file());
    let profile = std::fs::read_to_string(v["profile"].as_str().unwrap()).unwrap();
    assert!(profile.contains("latent-diffusion") && profile.contains("width = 64"), "{profile}");
    let again = headroom(&["reproduce", &png, "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(json(&again)["identical"], true);
}

/// An SDXL single file in the original layout (A1111/ComfyUI's) is inspected as SDXL with four
/// components, planned with four weight lines (`text_2` apart) and its 7 UNet blocks, runs from
/// the command line at 64×64 and writes a PNG whose `reproduce` is identical.
#[test]
fn sdxl_single_file_runs_and_reproduces() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixtures().join("sdxl/tiny-sdxl.safetensors");
    let m = m.to_str().unwrap();
    let insp = headroom(&["inspect", m, "--json"]);
    assert!(insp.status.success(), "{}", String::from_utf8_lossy(&insp.stderr));
    let i = json(&insp);
    assert_eq!(i["family"], "sdxl", "{}", i["family"]);
    let names: Vec<&str> = i["runs_with"]["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["text", "text_2", "unet", "vae"]);
    let plan = headroom(&["plan", m, "--width", "64", "--height", "64", "--json"]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let p = json(&plan);
    assert_eq!((p["verdict"].as_str(), p["unet_blocks"].as_u64()), (Some("fits"), Some(7)), "{p}");
    let lines: Vec<&String> = p["per_device"][0]["components"].as_object().unwrap().keys().collect();
    assert_eq!(lines, ["text", "text_2", "unet", "vae"], "{p}");
    let out = dir.path().to_str().unwrap();
    let res = headroom(&["run", m, "--steps", "2", "--width", "64", "--height", "64", "--out", out, "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    let png = v["outputs"][0].as_str().unwrap().to_string();
    assert!(png.ends_with(".png") && Path::new(&png).is_file());
    let again = headroom(&["reproduce", &png, "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(json(&again)["identical"], true);
}

/// `bench` runs each setting and reports times, peaks and weight bytes per row.
#[test]
fn bench_reports_each_setting() {
    let m = tiny_sd1();
    let res = headroom(&["bench", "--model", &m, "--steps", "1", "--size", "32", "--setting", "precision=f32", "--setting", "precision=f16", "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v = json(&res);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert!(r["step_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    let (f32b, f16b) = (rows[0]["weight_bytes"].as_u64().unwrap(), rows[1]["weight_bytes"].as_u64().unwrap());
    // f16 halves every weight but the layer norms, which stay in the (f32) compute dtype on the CPU
    let half = f16b as f64 / f32b as f64;
    assert!((0.5..0.51).contains(&half), "f16 holds {half}× the bytes of f32");
    // the planned peak and the mean step after the first are part of every row
    assert!(rows.iter().all(|r| r["planned_peak_bytes"].as_u64().unwrap() > r["weight_bytes"].as_u64().unwrap()), "{rows:?}");
}

/// The pre-flight: a run the plan says will not fit in its budget is refused before anything
/// runs, in one line naming the knobs that fit; `plan --set` with those knobs fits; `--force`
/// runs anyway (and writes its output).
#[test]
fn preflight_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let big = ["--width", "1024", "--height", "1024", "--steps", "1", "--budget", "200MiB", "--json"];
    let args: Vec<&str> = ["run", "builtin:shapes", "--out", out_dir.to_str().unwrap()].into_iter().chain(big).collect();
    let out = headroom(&args);
    fails_in_one_line(&out, &["builtin:shapes does not fit", "on cpu and 200.00 MiB is free", "slicing.vae_tile=", "--force"]);
    assert!(!out_dir.exists(), "a refused run wrote nothing");
    // the named fix fits in the same budget
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let fix = stderr.split("it fits with ").nth(1).and_then(|s| s.split(' ').next()).unwrap();
    let plan = headroom(&["plan", "builtin:shapes", "--width", "1024", "--height", "1024", "--budget", "200MiB", "--set", fix, "--json"]);
    assert_eq!(json(&plan)["verdict"], "fits", "{fix}");
    // nothing makes 60 MiB enough; --force runs it anyway
    let small = ["--width", "64", "--height", "64", "--steps", "1", "--budget", "60MiB", "--json"];
    let args: Vec<&str> = ["run", "builtin:shapes", "--out", out_dir.to_str().unwrap()].into_iter().chain(small).collect();
    fails_in_one_line(&headroom(&args), &["no knob setting makes it fit"]);
    let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
    let out = headroom(&forced);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["outputs"].as_array().map(Vec::len), Some(1));
}

/// `headroom` under `strace -f` inside `unshare -rn` (a network namespace with no interfaces):
/// its stdout, and every `connect`/`socket` call it made other than to a local socket.
fn headroom_offline(args: &[&str], log: &Path) -> (Output, Vec<String>) {
    let out = Command::new("unshare")
        .args(["-rn", "strace", "-f", "-qq", "-e", "trace=socket,connect", "-e", "signal=none", "-o"])
        .arg(log)
        .arg(env!("CARGO_BIN_EXE_headroom"))
        .args(args)
        .env("HEADROOM_DATA", std::env::temp_dir().join("headroom-e2e-data"))
        .output()
        .expect("unshare and strace run");
    let calls = std::fs::read_to_string(log).expect("strace wrote its log");
    let network = calls
        .lines()
        .filter(|l| (l.contains("socket(") || l.contains("connect(")) && !l.contains("AF_UNIX") && !l.contains("AF_LOCAL"))
        .map(str::to_string)
        .collect();
    (out, network)
}

/// Without a network (`unshare -rn`), inspect, plan, run and reproduce give exactly what they
/// give with one (the same JSON, the same output hash), and none of them opens a network socket.
/// Needs `unshare` (util-linux) and `strace`, which tools/install-deps.sh --test installs.
#[test]
fn works_the_same_without_a_network() {
    if !Command::new("unshare").args(["-rn", "true"]).status().is_ok_and(|s| s.success()) {
        // a sandbox that forbids user namespaces: nothing here can take the network away
        eprintln!("skipped: `unshare -rn` is not permitted on this machine");
        return;
    }
    assert!(
        Command::new("strace").args(["-qq", "true"]).status().is_ok_and(|s| s.success()),
        "this test needs strace: run tools/install-deps.sh --test"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("strace.log");
    let fixture = fixtures().join("formats");
    let model = tiny_sd1();
    let online_dir = dir.path().join("online");
    let offline_dir = dir.path().join("offline");
    let run = |out: &Path| -> Vec<String> {
        ["run", &model, "--prompt", "a red circle", "--steps", "2", "--width", "32", "--height", "32", "--seed", "7", "--json", "--out"]
            .iter()
            .map(|s| s.to_string())
            .chain([out.to_str().unwrap().to_string()])
            .collect()
    };
    let checks: Vec<Vec<String>> = vec![
        ["inspect", fixture.join("tiny.safetensors").to_str().unwrap(), "--json"].map(String::from).to_vec(),
        ["plan", &model, "--budget", "8GiB", "--json"].map(String::from).to_vec(),
    ];
    for args in &checks {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let online = headroom(&args);
        let (offline, network) = headroom_offline(&args, &log);
        assert!(online.status.success() && offline.status.success(), "{args:?}: {}", String::from_utf8_lossy(&offline.stderr));
        assert_eq!(json(&online), json(&offline), "{args:?}");
        assert!(network.is_empty(), "{args:?} opened network sockets: {network:?}");
    }
    let online = headroom(&run(&online_dir).iter().map(String::as_str).collect::<Vec<_>>());
    let (offline, network) = headroom_offline(&run(&offline_dir).iter().map(String::as_str).collect::<Vec<_>>(), &log);
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));
    assert!(network.is_empty(), "run opened network sockets: {network:?}");
    assert_eq!(json(&online)["sha256"], json(&offline)["sha256"]);
    let png = json(&offline)["outputs"][0].as_str().unwrap().to_string();
    let (again, network) = headroom_offline(&["reproduce", &png, "--json"], &log);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(json(&again)["identical"], true);
    assert!(network.is_empty(), "reproduce opened network sockets: {network:?}");
}

/// Outputs and profiles written in profile version 1 by an earlier build
/// (`tests/fixtures/profiles/v1`: the embedded image model plain and with quantized, sliced and
/// tiled knobs, the tiny SD 1.x fixture at q4k with streamed blocks, the embedded audio model)
/// reproduce identically — both the TOML and the output with it embedded. On a machine whose CPU
/// features or thread count differ from the recorded ones, bit-identical output is not promised:
/// there the drift must be reported with its cause.
#[test]
fn version_1_profiles_and_outputs_reproduce() {
    let root = fixtures().join("..").join("..");
    let dir = fixtures().join("profiles/v1");
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    assert_eq!(runs.len(), 4);
    for run in runs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), 2, "{}: an output and its profile", run.display());
        for f in files {
            // profiles name their model as given when they were made (relative to the repository)
            let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
                .args(["reproduce", f.to_str().unwrap(), "--json"])
                .current_dir(&root)
                .env("HEADROOM_DATA", std::env::temp_dir().join("headroom-e2e-data"))
                .output()
                .unwrap();
            let v = json(&out);
            if v["identical"] == true {
                assert!(out.status.success(), "{}: {v}", f.display());
                continue;
            }
            let explained: Vec<&str> = v["drift_explained"].as_array().unwrap().iter().filter_map(|d| d.as_str()).collect();
            assert!(
                explained.iter().any(|d| d.contains("build.cpu_features") || d.contains("build.threads")),
                "{}: not identical and no cause named: {v}\n{}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `--field KEY=VALUE` sets any request field by its profile key (the same keys a family
/// declares and profiles record); an unknown key or a value of the wrong kind is one line.
#[test]
fn request_fields_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let res = headroom(&["run", "builtin:shapes", "--field", "steps=2,width=32", "--field", "height=32", "--field", "scheduler=ddim", "--out", out, "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let profile = json(&res)["profile"].as_str().unwrap().to_string();
    let p = headroom_engine::profile::Profile::load(Path::new(&profile)).unwrap();
    assert_eq!((p.request.steps, p.request.width, p.request.height), (2, 32, 32));
    assert_eq!(p.request.scheduler, headroom_engine::request::Scheduler::Ddim);
    fails_in_one_line(&headroom(&["run", "builtin:shapes", "--field", "stepz=2", "--out", out]), &["unknown request field 'stepz'"]);
    fails_in_one_line(&headroom(&["run", "builtin:shapes", "--field", "steps=two", "--out", out]), &["steps = 'two': expected a number"]);
}

/// A reader that stops early (`headroom inspect M | head -1`) ends the command quietly: no
/// panic on stderr, as other Unix tools.
#[test]
fn a_closed_pipe_is_not_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["inspect", fixtures().join("sd/tiny-sd1").to_str().unwrap()])
        .env("HEADROOM_DATA", std::env::temp_dir().join("headroom-e2e-data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // close the pipe before the listing is written (the headers take the child a few ms)
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
