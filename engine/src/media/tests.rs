//! Unit tests for media: PNG/WAV round trips with profiles, reading A1111 and ComfyUI outputs,
//! and clear errors for damaged files.

use std::path::{Path, PathBuf};

use super::png_chunks::crc32;
use super::*;
use crate::knobs::Knobs;
use crate::profile::{ModelInfo, Profile};
use crate::request::{Request, Scheduler};

const A1111_TEXT: &str = include_str!("../../../tests/fixtures/media/a1111_parameters.txt");
const COMFY_PROMPT: &str = include_str!("../../../tests/fixtures/media/comfyui_prompt.json");
const COMFY_WORKFLOW: &str = include_str!("../../../tests/fixtures/media/comfyui_workflow.json");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/media").join(name)
}

fn image(w: u32, h: u32) -> Image {
    let rgb = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    Image { width: w, height: h, rgb }
}

fn profile() -> Profile {
    let model = ModelInfo {
        source: "builtin:shapes".into(),
        sha256: "0123456789abcdef".into(),
        family: "latent-diffusion".into(),
        name: "shapes".into(),
        components: vec!["text".into(), "unet".into(), "vae".into()],
        fields: Vec::new(),
    };
    let request = Request {
        prompt: "a red circle, on blue".into(),
        negative: "blurry".into(),
        scheduler: Scheduler::EulerAncestral,
        ..Request::default()
    };
    Profile::new(model, request, Knobs::default())
}

/// Writes a PNG with the given text chunks into `dir` and returns its path.
fn png_with(dir: &Path, name: &str, texts: &[(&str, &str)]) -> PathBuf {
    let texts: Vec<(String, String)> = texts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let path = dir.join(name);
    std::fs::write(&path, png::encode_png(&image(8, 8), &texts).unwrap()).unwrap();
    path
}

/// Inserts a raw chunk just before IEND (the last 12 bytes).
fn insert_chunk(bytes: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(&crc32(&chunk[4..]).to_be_bytes());
    let at = bytes.len() - 12;
    bytes.splice(at..at, chunk);
}

fn one_line_naming(e: crate::Error, file: &str) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n') && s.contains(file), "{s}");
    s
}

/// A PNG keeps its pixels and carries the profile and the A1111 summary; loading it as a
/// profile and restoring from it give the profile back.
#[test]
fn png_round_trip_with_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let (img, p) = (image(16, 8), profile());
    write_png(&path, &img, Some(&p)).unwrap();
    let (back, text) = read_png(&path).unwrap();
    assert_eq!(back, img);
    assert!(text.get("parameters").unwrap().contains("Sampler: Euler a"));
    assert_eq!(Profile::load(&path).unwrap(), p);
    let r = restore_from_file(&path).unwrap();
    assert_eq!((r.source, r.request, r.profile), (Source::Headroom, p.request.clone(), Some(p)));
}

/// The `parameters` text has A1111's layout, and reads back into the same request, with A1111's
/// per-image noise.
#[test]
fn parameters_format_and_read_back() {
    let p = profile();
    let s = a1111::format_parameters(&p);
    let want = format!(
        "a red circle, on blue\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, \
         Seed: 42, Size: 64x64, Model hash: 0123456789, Model: shapes, Version: Headroom {}",
        p.build.version
    );
    assert_eq!(s, want);
    let r = a1111::parse_parameters(&s);
    assert_eq!(r.request, Request { noise: crate::request::NoiseMode::PerImage, ..p.request.clone() });
    assert_eq!(r.model_hint.as_deref(), Some("shapes"));
    assert!(r.unmapped.iter().all(|u| u.starts_with("Version")), "{:?}", r.unmapped);
}

/// An A1111 PNG restores prompt, multi-line negative, sampler with Karras, size, seed and model,
/// sets per-image noise (A1111's seed + i), and lists the hires/LoRA settings it cannot use.
#[test]
fn a1111_png_restores() {
    let dir = tempfile::tempdir().unwrap();
    let path = png_with(dir.path(), "a1111.png", &[("parameters", A1111_TEXT)]);
    let r = restore_from_file(&path).unwrap();
    assert_eq!(r.source, Source::A1111);
    let q = &r.request;
    assert!(q.prompt.starts_with("masterpiece") && q.prompt.ends_with("(dramatic clouds:1.2)"));
    assert_eq!(q.negative, "lowres, bad anatomy, (worst quality:1.4),\nwatermark");
    assert_eq!((q.steps, q.seed, q.guidance), (28, 3_344_226_713, 7.0));
    assert_eq!((q.scheduler, q.karras), (Scheduler::DpmPp2M, true));
    assert_eq!((q.width, q.height), (512, 768));
    assert_eq!(q.noise, crate::request::NoiseMode::PerImage, "A1111 seeds image i with seed + i");
    assert_eq!(r.model_hint.as_deref(), Some("v1-5-pruned-emaonly"));
    for key in ["Denoising strength", "Clip skip: 2", "Hires upscale", "Lora hashes: add_detail: 7c6bad76eb54"] {
        assert!(r.unmapped.iter().any(|u| u.starts_with(key)), "{key} not listed: {:?}", r.unmapped);
    }
}

/// A ComfyUI PNG's API prompt restores every field of the default graph with nothing unmapped.
#[test]
fn comfyui_prompt_restores() {
    let dir = tempfile::tempdir().unwrap();
    let path = png_with(dir.path(), "comfy.png", &[("prompt", COMFY_PROMPT), ("workflow", COMFY_WORKFLOW)]);
    let r = restore_from_file(&path).unwrap();
    assert_eq!(r.source, Source::ComfyUI);
    let q = &r.request;
    assert_eq!(q.prompt, "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,");
    assert_eq!(q.negative, "text, watermark");
    assert_eq!((q.seed, q.steps, q.guidance, q.scheduler, q.karras), (156_680_208_700_286, 20, 8.0, Scheduler::Euler, false));
    assert_eq!((q.width, q.height, q.batch), (512, 512, 1));
    assert_eq!(r.model_hint.as_deref(), Some("v1-5-pruned-emaonly.safetensors"));
    assert!(r.unmapped.is_empty(), "{:?}", r.unmapped);
}

/// A seed fed from a separate seed node through a link is still found.
#[test]
fn comfyui_linked_seed() {
    let json = COMFY_PROMPT.replace("\"seed\": 156680208700286", "\"seed\": [\"20\", 0]").replacen(
        '{',
        "{\"20\": {\"inputs\": {\"seed\": 1234}, \"class_type\": \"Seed (rgthree)\"}, ",
        1,
    );
    let r = comfy::parse_prompt(&json).unwrap();
    assert_eq!(r.request.seed, 1234);
    assert!(r.unmapped.is_empty(), "{:?}", r.unmapped);
}

/// Links that loop (a text input linked to its own node, a node linking to itself through many
/// inputs) end: no text, no endless recursion, and one visit per node instead of one per path
/// (twenty self-links over eight hops were 20⁸ visits).
#[test]
fn comfyui_link_loops_end() {
    let looped = r#"{"1": {"class_type": "KSampler", "inputs": {"seed": 5, "positive": ["2", 0], "negative": ["3", 0]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["4", 0]}},
        "4": {"class_type": "PrimitiveNode", "inputs": {"value": ["3", 0]}}}"#;
    let r = comfy::parse_prompt(looped).unwrap();
    assert_eq!(r.request.seed, 5);
    assert!(r.unmapped.iter().any(|u| u == "positive prompt text could not be found in the graph"), "{:?}", r.unmapped);
    assert!(r.unmapped.iter().any(|u| u == "negative prompt text could not be found in the graph"), "{:?}", r.unmapped);

    let links: Vec<String> = (0..20).map(|i| format!("\"in{i}\": [\"2\", 0]")).collect();
    let fan = format!(
        r#"{{"1": {{"class_type": "KSampler", "inputs": {{"positive": ["2", 0], "model": ["2", 0], "latent_image": ["2", 0]}}}},
            "2": {{"class_type": "Reroute", "inputs": {{{}}}}}}}"#,
        links.join(", ")
    );
    let start = std::time::Instant::now();
    let r = comfy::parse_prompt(&fan).unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(r.unmapped.iter().any(|u| u.contains("passes through Reroute")), "{:?}", r.unmapped);
}

/// A PNG with only the editor workflow restores through the widgets and links, and names the
/// sampler and LoRA it cannot reproduce.
#[test]
fn comfyui_workflow_restores() {
    let dir = tempfile::tempdir().unwrap();
    let path = png_with(dir.path(), "wf.png", &[("workflow", COMFY_WORKFLOW)]);
    let r = restore_from_file(&path).unwrap();
    let q = &r.request;
    assert_eq!((q.prompt.as_str(), q.negative.as_str()), ("a watercolor fox in the snow", "text, watermark"));
    assert_eq!((q.seed, q.steps, q.guidance, q.karras), (987_654_321, 25, 6.5, true));
    assert_eq!((q.width, q.height, q.batch), (768, 512, 2));
    assert_eq!(q.noise, crate::request::NoiseMode::Batch, "ComfyUI draws a batch from one generator");
    assert_eq!(r.model_hint.as_deref(), Some("dreamshaper_8.safetensors"));
    assert!(r.unmapped.iter().any(|u| u == "sampler 'dpmpp_sde' has no equivalent (kept euler)"), "{:?}", r.unmapped);
    assert!(r.unmapped.iter().any(|u| u.contains("LoraLoader")), "{:?}", r.unmapped);
}

/// The same files written by PIL (as A1111 and ComfyUI write them) restore too.
#[test]
fn pil_written_fixtures_restore() {
    let r = restore_from_file(&fixture("a1111.png")).unwrap();
    assert_eq!((r.source, r.request.seed), (Source::A1111, 3_344_226_713));
    let r = restore_from_file(&fixture("comfyui.png")).unwrap();
    assert_eq!((r.source, r.request.seed), (Source::ComfyUI, 156_680_208_700_286));
}

/// A text chunk with a bad CRC is an error naming the file and the chunk, not a silent skip.
#[test]
fn png_bad_crc_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    write_png(&path, &image(8, 8), Some(&profile())).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(8).position(|w| w == b"headroom").unwrap() + 20;
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let e = one_line_naming(read_png(&path).unwrap_err(), "bad.png");
    assert!(e.contains("'headroom'") && e.contains("CRC mismatch"), "{e}");
    one_line_naming(Profile::load(&path).unwrap_err(), "bad.png");
    one_line_naming(restore_from_file(&path).unwrap_err(), "bad.png");
}

/// An iTXt chunk whose text is not UTF-8 (with a valid CRC) is reported as such.
#[test]
fn png_invalid_utf8_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = png::encode_png(&image(8, 8), &[]).unwrap();
    insert_chunk(&mut bytes, b"iTXt", b"headroom\0\0\0\0\0version = \xff\xfe");
    let path = dir.path().join("utf.png");
    std::fs::write(&path, &bytes).unwrap();
    let e = one_line_naming(read_png(&path).unwrap_err(), "utf.png");
    assert!(e.contains("not valid UTF-8"), "{e}");
}

/// A file cut inside a text chunk, and one cut inside the image data, are errors, not panics.
#[test]
fn png_truncated_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.png");
    write_png(&path, &image(8, 8), Some(&profile())).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let in_text = bytes.windows(8).position(|w| w == b"headroom").unwrap() + 30;
    for cut in [in_text, 40, 20] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = one_line_naming(read_png(&path).unwrap_err(), "cut.png");
        assert!(e.contains("truncated") || e.contains("not a readable PNG"), "{e}");
    }
}

/// Grey and RGBA PNGs from elsewhere are read as RGB.
#[test]
fn png_other_color_types_become_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgba.png");
    let mut out = Vec::new();
    let mut enc = ::png::Encoder::new(&mut out, 2, 1);
    enc.set_color(::png::ColorType::Rgba);
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&[10, 20, 30, 255, 40, 50, 60, 0]).unwrap();
    w.finish().unwrap();
    std::fs::write(&path, &out).unwrap();
    let (img, _) = read_png(&path).unwrap();
    assert_eq!(img.rgb, [10, 20, 30, 40, 50, 60]);
}

/// A PNG whose Headroom profile is damaged falls back to its `parameters` and says why.
#[test]
fn damaged_profile_falls_back_to_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let params = a1111::format_parameters(&profile());
    let path = png_with(dir.path(), "half.png", &[("parameters", &params), ("headroom", "version = 99\n")]);
    let r = restore_from_file(&path).unwrap();
    assert_eq!((r.source, r.request.prompt.as_str()), (Source::A1111, "a red circle, on blue"));
    assert!(r.unmapped.iter().any(|u| u.contains("profile version 99")), "{:?}", r.unmapped);
    let e = one_line_naming(Profile::load(&path).unwrap_err(), "half.png");
    assert!(e.contains("newer Headroom"), "{e}");
}

/// A PNG with no settings in it cannot be restored, and says so.
#[test]
fn png_without_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = png_with(dir.path(), "plain.png", &[("Software", "GIMP")]);
    let e = one_line_naming(restore_from_file(&path).unwrap_err(), "plain.png");
    assert!(e.contains("no generation settings"), "{e}");
}

/// WAVs round-trip samples (exactly as float, within one step as 16-bit) and the profile, and
/// the RIFF size covers the added chunk.
#[test]
fn wav_round_trip_with_profile() {
    let dir = tempfile::tempdir().unwrap();
    let audio = Audio { sample_rate: 16_000, samples: (0..1001).map(|i| (i as f32 * 0.01).sin() * 0.8).collect() };
    let p = profile();
    for (format, tol) in [(WavFormat::Int16, 0.5 / 32768.0), (WavFormat::Float32, 0.0)] {
        let path = dir.path().join(format!("{format:?}.wav"));
        write_wav_as(&path, &audio, format, Some(&p)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize, bytes.len() - 8);
        let (back, prof) = read_wav(&path).unwrap();
        assert_eq!(prof.as_ref(), Some(&p));
        assert_eq!((back.sample_rate, back.samples.len()), (16_000, 1001));
        let worst = audio.samples.iter().zip(&back.samples).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= tol, "{format:?}: {worst}");
        assert_eq!(restore_from_file(&path).unwrap().source, Source::Headroom);
    }
    let plain = dir.path().join("plain.wav");
    write_wav(&plain, &audio, None).unwrap();
    assert_eq!(read_wav(&plain).unwrap().1, None);
}

/// A WAV cut inside its profile chunk is a one-line error naming the file and the chunk.
#[test]
fn wav_truncated_chunk_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.wav");
    let audio = Audio { sample_rate: 8000, samples: vec![0.0; 100] };
    write_wav(&path, &audio, Some(&profile())).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = one_line_naming(read_wav(&path).unwrap_err(), "cut.wav");
    assert!(e.contains("truncated") && e.contains("'hdrm'"), "{e}");
    one_line_naming(Profile::load(&path).unwrap_err(), "cut.wav");
}

/// Every truncation and many single-byte corruptions of an output give Ok or a one-line error,
/// never a panic.
#[test]
fn damaged_outputs_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let png_path = dir.path().join("o.png");
    let wav_path = dir.path().join("o.wav");
    write_png(&png_path, &image(8, 8), Some(&profile())).unwrap();
    write_wav(&wav_path, &Audio { sample_rate: 8000, samples: vec![0.25; 64] }, Some(&profile())).unwrap();
    for path in [png_path, wav_path] {
        let good = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut variants: Vec<Vec<u8>> = (0..good.len()).step_by(2).map(|n| good[..n].to_vec()).collect();
        variants.extend((0..good.len()).step_by(5).map(|i| {
            let mut v = good.clone();
            v[i] ^= 0xA5;
            v
        }));
        for bytes in variants {
            std::fs::write(&path, &bytes).unwrap();
            let read = if name.ends_with(".png") {
                read_png(&path).map(|_| ())
            } else {
                read_wav(&path).map(|_| ())
            };
            for result in [read, restore_from_file(&path).map(|_| ()), Profile::load(&path).map(|_| ())] {
                if let Err(e) = result {
                    one_line_naming(e, &name);
                }
            }
        }
    }
}

/// A ~250-byte PNG whose header claims 100000×100000 pixels: its settings are read from the text
/// chunks alone, and decoding its pixels is a one-line error naming the claimed size, not an abort.
#[test]
fn png_size_bomb_is_read_without_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = super::png_chunks::SIGNATURE.to_vec();
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    for (kind, data) in [(b"IHDR", ihdr.as_slice()), (b"IEND", &[][..])] {
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(&crc32(&chunk[4..]).to_be_bytes());
        bytes.extend_from_slice(&chunk);
    }
    insert_chunk(&mut bytes, b"tEXt", b"parameters\0a red circle\nSteps: 20, Sampler: Euler, Seed: 7, Size: 64x64");
    assert!(bytes.len() < 300, "{}", bytes.len());
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, &bytes).unwrap();
    let r = restore_from_file(&path).unwrap();
    assert_eq!((r.request.seed, r.request.prompt.as_str()), (7, "a red circle"));
    let e = one_line_naming(read_png(&path).unwrap_err(), "bomb.png");
    assert!(e.contains("100000×100000"), "{e}");
    let e = one_line_naming(Profile::load(&path).unwrap_err(), "bomb.png");
    assert!(e.contains("no Headroom profile"), "{e}");
}

/// Compressed text chunks (zTXt, compressed iTXt) are inflated from the chunks alone, and one that
/// inflates past the limit is an error naming the chunk.
#[test]
fn png_compressed_text_is_inflated_with_a_limit() {
    use std::io::Write;
    let zlib = |data: &[u8]| {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = profile().to_toml_string();
    let mut bytes = png::encode_png(&image(8, 8), &[]).unwrap();
    let mut itxt = b"headroom\0\x01\x00\0\0".to_vec();
    itxt.extend_from_slice(&zlib(toml.as_bytes()));
    insert_chunk(&mut bytes, b"iTXt", &itxt);
    let mut ztxt = b"Comment\0\x00".to_vec();
    ztxt.extend_from_slice(&zlib(b"caf\xe9")); // Latin-1
    insert_chunk(&mut bytes, b"zTXt", &ztxt);
    let path = dir.path().join("z.png");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Profile::load(&path).unwrap(), profile());
    let (_, text) = read_png(&path).unwrap();
    assert_eq!(text.get("Comment"), Some("caf\u{e9}"));

    let mut bytes = png::encode_png(&image(8, 8), &[]).unwrap();
    let mut bomb = b"Comment\0\x00".to_vec();
    bomb.extend_from_slice(&zlib(&vec![b'a'; (png::MAX_TEXT_BYTES + 10) as usize]));
    insert_chunk(&mut bytes, b"zTXt", &bomb);
    std::fs::write(&path, &bytes).unwrap();
    let e = one_line_naming(read_png(&path).unwrap_err(), "z.png");
    assert!(e.contains("'Comment'") && e.contains("MiB"), "{e}");
}

/// A WAV whose header gives an implausible sample rate (1 Hz: playback would resample it
/// 48000-fold) is refused in one line naming the rate.
#[test]
fn wav_implausible_sample_rate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.wav");
    let bytes = wav::encode_wav(&Audio { sample_rate: 1, samples: vec![0.5; 1000] }, WavFormat::Int16, None).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let e = one_line_naming(read_wav(&path).unwrap_err(), "slow.wav");
    assert!(e.contains("sample rate 1 Hz"), "{e}");
}
