//! Unit tests for profiles: round trips, unknown fields, errors, drift, load and save.

use std::path::Path;

use super::*;
use crate::knobs::Precision;
use crate::request::{NoiseMode, Scheduler};

const FULL: &str = r#"version = 1
created = 2026-11-23T10:00:00Z

[model]
source = "builtin:shapes"
sha256 = "abc123"
family = "latent-diffusion"
name = "shapes"
license = "MIT"

[request]
prompt = "a red circle"
negative = ""
seed = 7
steps = 12
guidance = 5.0
scheduler = "euler_a"
width = 64
height = 64
style = "from the future"

[knobs]
device = "cpu"
rng = "torch-cpu"

[knobs.precision]
text = "f32"
unet = "q4k"
vae = "f32"
lora = "f16"

[knobs.offload]
gpu_blocks = 0
mode = "split"
text = "cpu"
vae = "cpu"

[knobs.slicing]
attention_slice = 0
vae_tile = 0

[build]
version = "0.1.0"
commit = "deadbeef"

[result]
output = "out.png"
sha256 = "ff00"
peak_ram_bytes = 123
peak_vram_bytes = 0

[result.timings_ms]
load = 1
denoise = 30

[future]
thing = [1, 2, 3]
"#;

fn origin() -> &'static Path {
    Path::new("runs/a.toml")
}

fn err(s: &str) -> String {
    let e = Profile::from_toml_str(s, origin()).unwrap_err().to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    assert!(e.starts_with("runs/a.toml: "), "does not name the file: {e}");
    e
}

/// Every documented field reads into its typed place.
#[test]
fn reads_typed_fields() {
    let p = Profile::from_toml_str(FULL, origin()).unwrap();
    assert_eq!(p.version, 1);
    assert_eq!(p.model.family, "latent-diffusion");
    assert_eq!(p.request.prompt, "a red circle");
    assert_eq!(p.request.seed, 7);
    assert_eq!(p.request.scheduler, Scheduler::EulerAncestral);
    assert_eq!(p.knobs.precision.get("unet"), Precision::Q4K);
    assert_eq!(p.knobs.offload.gpu_blocks, Some(0));
    assert_eq!(p.build.commit, "deadbeef");
    let r = p.result.as_ref().unwrap();
    assert_eq!(r.peak_ram_bytes, 123);
    assert_eq!(r.timings_ms["denoise"], 30);
}

/// Unknown keys in known sections, nested ones and unknown sections survive read → write → read,
/// and the typed part is unchanged.
#[test]
fn unknown_fields_survive_round_trip() {
    let p = Profile::from_toml_str(FULL, origin()).unwrap();
    let out = p.to_toml_string();
    for needle in ["created = 2026-11-23T10:00:00Z", "license = \"MIT\"", "style = \"from the future\"", "lora = \"f16\"", "[future]", "thing = [1, 2, 3]"] {
        assert!(out.contains(needle), "lost {needle}:\n{out}");
    }
    let back = Profile::from_toml_str(&out, origin()).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.to_toml_string(), out);
}

/// Changing a typed value after reading writes the new value, not the file's old one.
#[test]
fn typed_values_win_over_kept_ones() {
    let mut p = Profile::from_toml_str(FULL, origin()).unwrap();
    p.request.seed = 99;
    p.knobs.offload.gpu_blocks = None;
    let out = p.to_toml_string();
    let back = Profile::from_toml_str(&out, origin()).unwrap();
    assert_eq!(back.request.seed, 99);
    assert_eq!(back.knobs.offload.gpu_blocks, None, "{out}");
}

/// A new profile writes sections in the documented order and reads back equal.
#[test]
fn new_profile_round_trips_in_order() {
    let model = ModelInfo { source: "builtin:shapes".into(), ..ModelInfo::default() };
    let mut p = Profile::new(model, Request::default(), Knobs::default());
    p.request.prompt = "quote \" and\nnewline — ünïcode".into();
    p.request.seconds = Some(2.2);
    p.request.guidance = 7.3;
    p.result = Some(RunResult { output: "x.png".into(), notes: vec!["widened".into()], ..RunResult::default() });
    let out = p.to_toml_string();
    let order: Vec<usize> = ["version", "[model]", "[request]", "[knobs]", "[build]", "[result]"]
        .iter()
        .map(|s| out.find(s).unwrap_or_else(|| panic!("{s} missing:\n{out}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert!(out.contains("guidance = 7.3\n") && out.contains("seconds = 2.2\n"), "{out}");
    assert_eq!(Profile::from_toml_str(&out, origin()).unwrap(), p);
    assert_eq!(p.build, BuildInfo::current());
}

/// Seeds beyond TOML's integer range (ComfyUI allows up to 2^64-1) round-trip.
#[test]
fn huge_seed_round_trips() {
    let model = ModelInfo { source: "m.safetensors".into(), ..ModelInfo::default() };
    let p = Profile::new(model, Request { seed: u64::MAX, ..Request::default() }, Knobs::default());
    let back = Profile::from_toml_str(&p.to_toml_string(), origin()).unwrap();
    assert_eq!(back.request.seed, u64::MAX);
}

/// A profile from a newer Headroom is refused with both versions named.
#[test]
fn newer_version_is_refused() {
    let e = err(&FULL.replacen("version = 1", "version = 99", 1));
    assert!(e.contains("written by a newer Headroom (profile version 99, this build reads 2)"), "{e}");
}

/// A missing [request] section is named.
#[test]
fn missing_section_is_named() {
    let s = "version = 1\n[model]\nsource = \"builtin:shapes\"\n";
    assert!(err(s).contains("[request] section missing"));
    let s = "version = 1\n[request]\nseed = 1\n";
    assert!(err(s).contains("[model] section missing"));
    let s = "version = 1\nrequest = 3\n[model]\nsource = \"x\"\n";
    assert!(err(s).contains("should be a [request] section"));
    assert!(err("[model]\nsource = \"x\"\n").contains("no `version` key"));
}

/// A seed that is not a number is named with its value.
#[test]
fn non_numeric_seed_is_named() {
    let e = err(&FULL.replace("seed = 7", "seed = \"lucky\""));
    assert!(e.contains("seed") && e.contains("lucky") && e.contains("whole number"), "{e}");
    let e = err(&FULL.replace("seed = 7", "seed = -3"));
    assert!(e.contains("seed = -3"), "{e}");
}

/// Invalid TOML reports the line of the problem on one line.
#[test]
fn invalid_toml_has_line_number() {
    let s = "version = 1\n[model]\nsource = \"x\"\nbroken = = 3\n";
    let e = err(s);
    assert!(e.contains("invalid TOML at line 4"), "{e}");
}

/// A field of the wrong type in a known section names the section.
#[test]
fn wrong_type_names_section() {
    let e = err(&FULL.replace("steps = 12", "steps = \"many\""));
    assert!(e.contains("[request] steps = \"many\": invalid type"), "{e}");
    let e = err(&FULL.replace("unet = \"q4k\"", "unet = \"q3\""));
    assert!(e.contains("[knobs.precision]") && e.contains("q3"), "{e}");
}

/// Drift lists exactly the knobs, request fields, model hash and build fields that differ.
#[test]
fn drift_names_differences() {
    let a = Profile::from_toml_str(FULL, origin()).unwrap();
    let mut b = a.clone();
    assert!(a.drift(&b).is_empty());
    b.request.seed = 8;
    b.knobs.precision.set("unet", Precision::F32).unwrap();
    b.knobs.device = crate::knobs::DeviceKind::Cuda(0);
    b.model.sha256 = "other".into();
    b.build.commit = "cafe".into();
    b.result = None;
    let d = a.drift(&b);
    assert_eq!(
        d,
        ["model.sha256", "request.seed", "knobs.device", "knobs.precision.unet", "build.commit"],
        "{d:?}"
    );
    let detail = a.drift_detail(&b);
    assert_eq!(detail[1].to_string(), "request.seed: 7 → 8");
}

/// What bit-exactness depends on is recorded (candle, threads, CPU features, target) and each
/// difference is named with whether identical output was expected; a profile that predates
/// these fields reports none of them, and every output of a batch is hashed.
#[test]
fn drift_explains_what_bit_exactness_depends_on() {
    let now = BuildInfo::current();
    assert!(now.threads > 0 && now.candle != "unknown" && now.target.contains('-'), "{now:?}");
    let old = Profile::from_toml_str(FULL, origin()).unwrap();
    let mut a = old.clone();
    a.build = now.clone();
    assert!(old.drift(&a).iter().all(|f| f == "build.version" || f == "build.commit"), "{:?}", old.drift(&a));
    let mut b = a.clone();
    b.build.threads = now.threads + 1;
    b.build.cpu_features = "none".into();
    b.knobs.slicing.attention_slice = 16;
    let explained = a.drift_explained(&b);
    let find = |field: &str| explained.iter().find(|d| d.starts_with(field)).cloned().unwrap_or_default();
    assert!(find("build.threads").contains("not guaranteed"), "{explained:?}");
    assert!(find("build.cpu_features").contains("SIMD"), "{explained:?}");
    assert!(find("knobs.slicing.attention_slice").contains("identical output expected on the CPU"), "{explained:?}");
    let mut with_batch = a.clone();
    with_batch.result = Some(RunResult { outputs_sha256: vec!["aa".into(), "bb".into()], ..RunResult::default() });
    let back = Profile::from_toml_str(&with_batch.to_toml_string(), origin()).unwrap();
    assert_eq!(back.result.unwrap().outputs_sha256, ["aa", "bb"]);
}

/// Every new profile records how its batch's noise was drawn, batch of one included, and reads
/// it back; a value that is not a mode is refused, naming the field and both choices.
#[test]
fn new_profiles_always_record_the_noise_mode() {
    let model = ModelInfo { source: "builtin:shapes".into(), ..ModelInfo::default() };
    for (batch, noise) in [(1, NoiseMode::Batch), (3, NoiseMode::Batch), (3, NoiseMode::PerImage), (1, NoiseMode::PerImage)] {
        let p = Profile::new(model.clone(), Request { batch, noise, ..Request::default() }, Knobs::default());
        let out = p.to_toml_string();
        assert!(out.contains(&format!("noise = \"{noise}\"\n")), "{out}");
        assert_eq!(Profile::from_toml_str(&out, origin()).unwrap().request.noise, noise, "{out}");
    }
    let e = err(&FULL.replace("seed = 7", "seed = 7\nnoise = \"sideways\""));
    assert!(e.contains("[request] noise = \"sideways\"") && e.contains("batch") && e.contains("per-image"), "{e}");
}

/// A profile written before `noise` existed keeps its meaning: with a batch above one it reads
/// as per-image seeds (how it was made), and writes that back; with a batch of one (the same
/// noise either way) it reads as today's default; a recorded mode is always taken as written.
#[test]
fn old_profiles_without_noise_keep_per_image_seeds() {
    assert!(!FULL.lines().any(|l| l.starts_with("noise")), "FULL is a profile from before `noise`");
    let one = Profile::from_toml_str(FULL, origin()).unwrap();
    assert_eq!((one.request.batch, one.request.noise), (1, NoiseMode::Batch));
    let old = FULL.replace("seed = 7", "seed = 7\nbatch = 2");
    let two = Profile::from_toml_str(&old, origin()).unwrap();
    assert_eq!((two.request.batch, two.request.noise), (2, NoiseMode::PerImage));
    let out = two.to_toml_string();
    assert!(out.contains("noise = \"per-image\""), "{out}");
    assert_eq!(Profile::from_toml_str(&out, origin()).unwrap(), two);
    let new = old.replace("batch = 2", "batch = 2\nnoise = \"batch\"");
    assert_eq!(Profile::from_toml_str(&new, origin()).unwrap().request.noise, NoiseMode::Batch);
}

/// Profiles whose noise modes differ drift in `request.noise`, explained as affecting the images
/// after the first.
#[test]
fn drift_names_the_noise_mode() {
    let a = Profile::from_toml_str(&FULL.replace("seed = 7", "seed = 7\nbatch = 2\nnoise = \"batch\""), origin()).unwrap();
    let mut b = a.clone();
    b.request.noise = NoiseMode::PerImage;
    assert_eq!(a.drift(&b), ["request.noise"]);
    let explained = a.drift_explained(&b);
    assert!(explained[0].starts_with("request.noise: \"batch\" → \"per-image\" (") && explained[0].contains("past the first image"), "{explained:?}");
}

/// Save writes atomically and load reads the same profile back; a non-profile file is refused.
#[test]
fn save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let p = Profile::from_toml_str(FULL, origin()).unwrap();
    p.save(&path).unwrap();
    assert_eq!(Profile::load(&path).unwrap(), p);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, [0xff, 0xfe, 0x00]).unwrap();
    let e = Profile::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("not a profile"), "{e}");
}


/// Version-1 profiles written by an earlier build (`tests/fixtures/profiles/v1`, one per kind of
/// run) load with their meaning: their knobs by component name, nothing left over as an unknown
/// field. Written again as version 2 (components listed, each one's precision written out) they
/// read back the same.
#[test]
fn version_1_profiles_load_with_their_meaning() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/profiles/v1");
    let mut seen = 0;
    for run in std::fs::read_dir(&dir).unwrap() {
        let run = run.unwrap().path();
        for f in std::fs::read_dir(&run).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            seen += 1;
            let p = Profile::load(&f).unwrap();
            assert_eq!(p.version, 1, "{}", f.display());
            assert!(p.extra.is_empty(), "{}: read as unknown: {:?}", f.display(), p.extra);
            let name = run.file_name().unwrap().to_string_lossy().into_owned();
            let k = &p.knobs;
            match name.as_str() {
                "shapes-knobs" => {
                    assert_eq!(
                        (k.precision.get("text"), k.precision.get("unet"), k.precision.get("vae")),
                        (Precision::F16, Precision::Q8_0, Precision::Auto)
                    );
                    assert_eq!((k.slicing.vae_tile, k.slicing.attention_slice), (4, 8));
                }
                "tiny-sd1-q4k-stream" => {
                    assert!(["text", "unet", "vae"].iter().all(|c| k.precision.get(c) == Precision::Q4K));
                    assert_eq!((k.offload.gpu_blocks, k.offload.mode), (Some(2), crate::knobs::OffloadMode::Stream));
                }
                _ => assert_eq!(*k, Knobs::default(), "{name}"),
            }
            let mut v2 = p.clone();
            v2.version = PROFILE_VERSION;
            v2.model.components = vec!["text".into(), "unet".into(), "vae".into()];
            let text = v2.to_toml_string();
            assert!(text.starts_with("version = 2\n"), "{text}");
            assert!(text.contains("components = [\"text\", \"unet\", \"vae\"]"), "{text}");
            let back = Profile::from_toml_str(&text, &f).unwrap();
            assert_eq!((&back.knobs, &back.request, &back.model), (&p.knobs, &p.request, &v2.model));
            assert!(back.extra.is_empty(), "{:?}", back.extra);
            for c in ["text", "unet", "vae"] {
                assert!(text.contains(&format!("{c} = \"{}\"", p.knobs.precision.get(c))), "{c} not written out: {text}");
            }
        }
    }
    assert_eq!(seen, 4, "the four version-1 fixtures");
}

/// Version 2 writes `[request]` as the family's fields: the ones every run has, the ones the
/// model's family declares, and any other only when it is not at its default — and reads back
/// the same request.
#[test]
fn request_is_written_as_the_family_fields() {
    let model = ModelInfo {
        source: "tones".into(),
        fields: vec!["seconds".into(), "top_k".into()],
        ..ModelInfo::default()
    };
    let request = Request { prompt: "drums".into(), seconds: Some(2.0), top_k: Some(50), width: 32, ..Request::default() };
    let p = Profile::new(model, request.clone(), Knobs::default());
    let text = p.to_toml_string();
    let section = text.split("[request]").nth(1).unwrap().split("\n[").next().unwrap();
    for written in ["prompt =", "seed =", "batch =", "noise =", "seconds =", "top_k =", "width ="] {
        assert!(section.contains(written), "{written} missing: {section}");
    }
    for left_out in ["steps", "scheduler", "karras", "guidance", "height", "negative"] {
        assert!(!section.contains(left_out), "{left_out} written: {section}");
    }
    let back = Profile::from_toml_str(&text, Path::new("p.toml")).unwrap();
    assert_eq!(back.request, request);
    assert!(back.extra.is_empty(), "{:?}", back.extra);
}
