//! stable-diffusion.cpp GGUFs of the tiny SD 1.x single file (`tools/make_gguf_fixtures.py`):
//! images against the same weights from the LDM `.safetensors` and against diffusers, resident
//! bytes against the file's stored bytes, precision knobs that convert, and the one-line errors.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::checkpoint::Companions;
use super::parity_tests::max_diff;
use super::pipeline::{LatentDiffusion, load, to_images};
use crate::compare::psnr_db;
use crate::formats::{GgmlType, inspect};
use crate::knobs::{Component, Knobs, Precision, PrecisionKnobs};
use crate::request::{Request, Scheduler};

fn gguf(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf").join(name)
}

fn ldm(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd/ldm").join(name)
}

use crate::families::testing::Notes;

/// The request `tools/make_ldm_fixtures.py` recorded diffusers' DDIM image for.
fn request() -> Request {
    Request {
        prompt: "a photo of an astronaut riding a horse on the moon".into(),
        negative: "blurry, low quality".into(),
        seed: 42,
        steps: 4,
        guidance: 7.5,
        scheduler: Scheduler::Ddim,
        width: 32,
        height: 32,
        ..Request::default()
    }
}

fn run(model: &mut LatentDiffusion) -> (Tensor, Vec<String>) {
    let mut notes = Notes::default();
    let img = model.run(&request(), &mut notes).unwrap();
    (img, notes.notes)
}

fn knobs_at(p: Precision) -> Knobs {
    Knobs { precision: PrecisionKnobs::all(p), ..Knobs::default() }
}

/// What a component of `path` should hold under precision auto: every tensor's stored bytes,
/// except those a layer can only use in f32: block-quantized 1-D tensors (group norm weights)
/// and the f16 layer norms of the text encoder and the UNet's transformer blocks (candle's
/// layer norm computes with its weights in the input's dtype).
fn expected_resident(path: &Path) -> [u64; 3] {
    let insp = inspect(path).unwrap();
    Component::ALL.map(|c| {
        insp.components
            .iter()
            .filter(|ci| ci.component == Some(c))
            .flat_map(|ci| &ci.tensors)
            .map(|t| {
                let blocks = GgmlType::from_name(&t.dtype).is_some_and(|g| g.block_elements > 1);
                let in_transformer = t.name.contains(".transformer_blocks.")
                    && [".norm1.", ".norm2.", ".norm3."].iter().any(|n| t.name.contains(n));
                let layer_norm = (t.name.contains("layer_norm") || in_transformer) && t.dtype != "F32";
                if (blocks && t.shape.len() == 1) || layer_norm { t.elements() * 4 } else { t.bytes.unwrap() }
            })
            .sum()
    })
}

/// The f16 GGUF, kept f16 in memory, gives the image of the same f16 weights read from the LDM
/// `.safetensors` (widened to f32 at load) exactly, and diffusers' image within 2/255; a q4_k
/// conversion, which kept every tensor f16 (rows of at most 128 hold no 256-element K block),
/// is the same model. Measured: 0 difference to the safetensors image, 3.3e-6 to diffusers'.
#[test]
fn f16_gguf_matches_safetensors_and_diffusers() {
    let (reference, _) = run(&mut load(&ldm("tiny-ldm1.safetensors"), &Knobs::default()).unwrap());
    let diffusers = candle_core::safetensors::load(ldm("tiny-ldm1.refs.safetensors"), &Device::Cpu).unwrap();
    for file in ["tiny-sd1-f16.gguf", "tiny-sd1-q4_k.gguf"] {
        let insp = inspect(&gguf(file)).unwrap();
        assert_eq!(insp.dtype_histogram().keys().collect::<Vec<_>>(), ["F16"], "{file}");
        let mut model = load(&gguf(file), &Knobs::default()).unwrap();
        let (img, notes) = run(&mut model);
        let d = max_diff(&img, &reference);
        let dd = max_diff(&img, &diffusers["image_ddim"]);
        println!("{file}: max abs difference {d} to the safetensors image, {dd} to diffusers'; notes {notes:?}");
        assert!(d <= 1e-5, "{file}: {d}");
        assert!(dd <= 2.0 / 255.0, "{file}: {dd}");
        assert!(notes.iter().any(|n| n.starts_with("unet: kept as the GGUF stores it") && n.contains("f16 on")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("expanded to f32 one layer at a time")), "{notes:?}");
    }
}

/// q8_0 and q4_0 GGUFs, their blocks kept as stored, give images close to the f32 one (PSNR
/// bounds under what was measured: q8_0 56.6 dB, q4_0 42.7 dB).
#[test]
fn quantized_ggufs_close_to_f32() {
    let f32 = to_images(&run(&mut load(&ldm("tiny-ldm1.safetensors"), &knobs_at(Precision::F32)).unwrap()).0).unwrap();
    for (file, min_db, kind) in [("tiny-sd1-q8_0.gguf", 48.0, "q8_0 on"), ("tiny-sd1-q4_0.gguf", 35.0, "q4_0 on")] {
        let (img, notes) = run(&mut load(&gguf(file), &Knobs::default()).unwrap());
        let db = psnr_db(&f32[0], &to_images(&img).unwrap()[0]).unwrap();
        println!("{file}: PSNR {db:.1} dB against f32; notes {notes:?}");
        assert!(db >= min_db, "{file}: {db} dB");
        assert!(notes.iter().any(|n| n.starts_with("unet: kept as the GGUF stores it (precision auto): ") && n.contains(kind)), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("held wider") && n.contains("→ f32")), "{notes:?}");
    }
}

/// Under precision auto each component holds the GGUF's stored bytes, but for the few tensors
/// a layer can only use in f32 (listed in the notes): nothing else was widened at load. The
/// planner predicts the stored bytes.
#[test]
fn resident_bytes_are_the_stored_bytes() {
    for file in ["tiny-sd1-f16.gguf", "tiny-sd1-q8_0.gguf", "tiny-sd1-q4_0.gguf"] {
        let model = load(&gguf(file), &Knobs::default()).unwrap();
        let held = model.component_weight_bytes();
        let want = expected_resident(&gguf(file));
        let insp = inspect(&gguf(file)).unwrap();
        let stored: Vec<u64> = Component::ALL.iter().map(|&c| {
            insp.components.iter().filter(|ci| ci.component == Some(c)).flat_map(|ci| &ci.tensors).map(|t| t.bytes.unwrap()).sum()
        }).collect();
        println!("{file}: resident {held:?}, stored {stored:?}, file {} bytes", std::fs::metadata(gguf(file)).unwrap().len());
        assert_eq!(held, want, "{file}");
        let shape = crate::plan::ModelShape::runnable(&insp).unwrap();
        for (i, c) in Component::ALL.into_iter().enumerate() {
            let p = shape.weight_precision(Precision::Auto, crate::knobs::DeviceKind::Cpu);
            assert_eq!(shape.component_bytes(c, p), stored[i], "{file} {c}");
        }
    }
}

/// An explicit precision converts as it does for any file: f32 holds the f32 bytes, q8_0 the
/// q8_0 bytes the planner counts (dequantized once, quantized again), and the notes say so.
#[test]
fn explicit_precision_converts() {
    let path = gguf("tiny-sd1-q4_0.gguf");
    let insp = inspect(&path).unwrap();
    for p in [Precision::F32, Precision::Q8_0] {
        let mut model = load(&path, &knobs_at(p)).unwrap();
        let held = model.component_weight_bytes();
        for (i, c) in Component::ALL.into_iter().enumerate() {
            assert_eq!(held[i], insp.component_bytes(c, p), "{c} at {p}");
        }
        let (_, notes) = run(&mut model);
        assert!(notes.iter().any(|n| n.contains("dequantized once at load and stored again as")), "{notes:?}");
    }
}

/// inspect names what it is and the family runs it as stored; the plan counts the stored bytes.
#[test]
fn recognised_and_planned_as_stored() {
    let insp = inspect(&gguf("tiny-sd1-q8_0.gguf")).unwrap();
    let (r, _) = crate::families::recognise(&insp).unwrap();
    assert!(r.reason.starts_with("a stable-diffusion.cpp GGUF of Stable Diffusion 1.x: "), "{}", r.reason);
    assert_eq!(r.confidence, 1.0);
    let plan = crate::plan::plan_model(
        &crate::model::ModelRef::Path(gguf("tiny-sd1-q8_0.gguf")),
        &Knobs::default(),
        &request(),
        None,
    )
    .unwrap();
    assert_eq!(plan.weights_bytes, insp.stored_bytes());
}

/// A GGUF whose names match no layout: one line naming the file and its first keys, from
/// inspect's verdict, the planner and a load.
#[test]
fn unknown_names_are_one_line() {
    let path = gguf("unknown-names.gguf");
    let insp = inspect(&path).unwrap();
    assert!(crate::families::recognise(&insp).is_none());
    let why = crate::families::not_supported(&insp);
    assert!(why.contains("decoder.head.bias") && why.contains("match no Stable Diffusion layout"), "{why}");
    let e = crate::plan::ModelShape::runnable(&insp).unwrap_err().to_string();
    assert!(e.contains("unknown-names.gguf") && e.contains("decoder.head.bias"), "{e}");
    let e = crate::families::load(&crate::model::ModelRef::Path(path), &Knobs::default(), &mut Notes::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown-names.gguf") && e.contains("encoder.layer0.weight"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// Changes the stored type of tensor `name` in a GGUF's header from `from` to `to` (a type with
/// the same block layout, so the file stays consistent).
fn retype(bytes: &mut [u8], name: &str, from: u32, to: u32) {
    let key = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let at = bytes.windows(key.len()).position(|w| w == key.as_slice()).unwrap() + key.len();
    let dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let t = at + 4 + 8 * dims;
    assert_eq!(u32::from_le_bytes(bytes[t..t + 4].try_into().unwrap()), from);
    bytes[t..t + 4].copy_from_slice(&to.to_le_bytes());
}

/// A tensor of a type this build cannot run (IQ4_NL: Q4_0's block size, other values): one line
/// naming the tensor and the type, from inspect's verdict, the planner and the loader.
#[test]
fn unrunnable_type_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq4.gguf");
    let mut bytes = std::fs::read(gguf("tiny-sd1-q4_0.gguf")).unwrap();
    let name = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight";
    retype(&mut bytes, name, 2, 20);
    std::fs::write(&path, bytes).unwrap();
    let insp = inspect(&path).unwrap();
    assert!(crate::families::recognise(&insp).is_none());
    let e = crate::plan::ModelShape::runnable(&insp).unwrap_err().to_string();
    assert!(e.contains("iq4.gguf") && e.contains(name) && e.contains("IQ4_NL"), "{e}");
    for e in [
        super::checkpoint::Checkpoint::open(&path).err().unwrap().to_string(),
        crate::families::load(&crate::model::ModelRef::Path(path.clone()), &Knobs::default(), &mut Notes::default())
            .err()
            .unwrap()
            .to_string(),
    ] {
        assert!(e.contains("iq4.gguf") && e.contains(name) && e.contains("IQ4_NL"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

/// Changing a loaded GGUF's precision between auto (as stored) and f32 reads the component
/// again, though auto is f32 on the CPU for other files: its bytes follow.
#[test]
fn retune_between_auto_and_f32_rereads() {
    use crate::families::{Family, Retuned};
    let path = gguf("tiny-sd1-q8_0.gguf");
    let auto = Knobs::default();
    let mut f32 = Knobs::default();
    f32.precision.set("unet", Precision::F32).unwrap();
    let mut model = load(&path, &auto).unwrap();
    let stored = model.component_weight_bytes()[1];
    let r = model.retune(&auto, &f32, &crate::CancelCheck::never()).unwrap();
    assert_eq!(r, Retuned::Read(vec!["unet".to_string()]));
    let widened = model.component_weight_bytes()[1];
    assert_eq!(widened, inspect(&path).unwrap().component_bytes(Component::Unet, Precision::F32));
    model.retune(&f32, &auto, &crate::CancelCheck::never()).unwrap();
    assert_eq!(model.component_weight_bytes()[1], stored);
    assert!(stored < widened);
}

/// A denoiser-only GGUF (ComfyUI-GGUF's names) is not run alone: inspect's verdict, the planner
/// and a load each say in one line what to add.
#[test]
fn denoiser_only_asks_for_a_companion() {
    let path = gguf("tiny-sd1-unet-q8_0.gguf");
    let insp = inspect(&path).unwrap();
    assert!(crate::families::recognise(&insp).is_none());
    let why = crate::families::not_supported(&insp);
    assert!(why.contains("only a denoiser") && why.contains("--base PATH") && why.contains("--vae PATH --text-encoder PATH"), "{why}");
    let e = crate::plan::ModelShape::runnable(&insp).unwrap_err().to_string();
    assert!(e.contains("tiny-sd1-unet-q8_0.gguf") && e.contains("--base PATH"), "{e}");
    for e in [
        crate::families::load(&crate::model::ModelRef::Path(path.clone()), &Knobs::default(), &mut Notes::default())
            .err()
            .unwrap()
            .to_string(),
        load(&path, &Knobs::default()).err().unwrap().to_string(),
    ] {
        assert!(e.contains("tiny-sd1-unet-q8_0.gguf") && e.contains("--base PATH"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

fn with_companions(path: &Path, companions: &Companions) -> crate::Result<LatentDiffusion> {
    super::pipeline::load_with_companions(path, companions, &Knobs::default(), &crate::CancelCheck::never())
}

/// The denoiser-only GGUF with the whole q8_0 GGUF as its base is that model: the same image
/// bit for bit, its UNet as stored from the denoiser file (the same bytes), the notes say where
/// each part came from. Retuning reads the denoiser again from its own file.
#[test]
fn denoiser_with_base_is_the_whole_model() {
    let whole = gguf("tiny-sd1-q8_0.gguf");
    let mut reference = load(&whole, &Knobs::default()).unwrap();
    let (want, _) = run(&mut reference);
    let companions = Companions { base: Some(whole.clone()), ..Companions::default() };
    let mut model = with_companions(&gguf("tiny-sd1-unet-q8_0.gguf"), &companions).unwrap();
    assert_eq!(model.component_weight_bytes(), reference.component_weight_bytes());
    let (img, notes) = run(&mut model);
    assert_eq!(max_diff(&img, &want), 0.0);
    assert!(notes.iter().any(|n| n.starts_with("unet from ") && n.contains("tiny-sd1-unet-q8_0.gguf")), "{notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("unet: kept as the GGUF stores it") && n.contains("q8_0 on 40")), "{notes:?}");
    use crate::families::Family;
    let f32 = knobs_at(Precision::F32);
    model.retune(&Knobs::default(), &f32, &crate::CancelCheck::never()).unwrap();
    assert_eq!(model.component_weight_bytes()[1], inspect(&whole).unwrap().component_bytes(Component::Unet, Precision::F32));
}

/// Writes `component` of the LDM single file `ldm` as a diffusers folder `dir` (its weights in
/// f32 under diffusers names, `config.json` from the inferred config).
fn diffusers_component(ldm: &Path, component: Component, dir: &Path) {
    use super::single_file::SingleFile;
    let file = SingleFile::open(ldm).unwrap();
    let (vb, _) = file.weights(component, candle_core::DType::F32, &Device::Cpu);
    let i = match component {
        Component::Text => 0,
        Component::Unet => 1,
        Component::Vae => 2,
    };
    let tensors: std::collections::HashMap<String, Tensor> =
        file.layout.names[i].keys().map(|n| (n.clone(), vb.get_unchecked(n).unwrap())).collect();
    std::fs::create_dir_all(dir).unwrap();
    let (weights, config) = match component {
        Component::Text => {
            let c = &file.layout.text;
            let config = serde_json::json!({
                "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
                "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                "max_position_embeddings": c.max_position_embeddings, "hidden_act": c.hidden_act,
                "layer_norm_eps": c.layer_norm_eps,
            });
            ("model.safetensors", config)
        }
        _ => {
            let c = &file.layout.vae;
            let config = serde_json::json!({
                "in_channels": c.in_channels, "out_channels": c.out_channels, "down_block_types": c.down_block_types,
                "up_block_types": c.up_block_types, "block_out_channels": c.block_out_channels,
                "layers_per_block": c.layers_per_block, "latent_channels": c.latent_channels,
                "norm_num_groups": c.norm_num_groups, "scaling_factor": c.scaling_factor,
            });
            ("diffusion_pytorch_model.safetensors", config)
        }
    };
    candle_core::safetensors::save(&tensors, dir.join(weights)).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// `--vae` and `--text-encoder` folders holding the LDM file's autoencoder and text encoder give
/// the image of the denoiser with that file as its base, bit for bit; a text encoder of another
/// width, a whole model with companions, and a lone `--vae` are one-line errors.
#[test]
fn denoiser_with_component_folders() {
    let dir = tempfile::tempdir().unwrap();
    let ldm1 = ldm("tiny-ldm1.safetensors");
    diffusers_component(&ldm1, Component::Text, &dir.path().join("text_encoder"));
    diffusers_component(&ldm1, Component::Vae, &dir.path().join("vae"));
    let unet = gguf("tiny-sd1-unet-q8_0.gguf");
    let base = Companions { base: Some(ldm1.clone()), ..Companions::default() };
    let (want, _) = run(&mut with_companions(&unet, &base).unwrap());
    let parts = Companions {
        vae: Some(dir.path().join("vae")),
        text_encoder: Some(dir.path().join("text_encoder")),
        ..Companions::default()
    };
    let (img, notes) = run(&mut with_companions(&unet, &parts).unwrap());
    assert_eq!(max_diff(&img, &want), 0.0);
    assert!(notes.iter().any(|n| n.contains("standard CLIP vocabulary")), "{notes:?}");
    let sd1 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd/tiny-sd1");
    for (path, companions, words) in [
        (&unet, Companions { base: Some(sd1), ..Companions::default() }, ["cross-attention", "8 wide"]),
        (&gguf("tiny-sd1-q8_0.gguf"), base.clone(), ["whole model", "--base"]),
        (&unet, Companions { vae: parts.vae.clone(), ..Companions::default() }, ["go together", "--text-encoder"]),
    ] {
        let e = with_companions(path, &companions).err().unwrap().to_string();
        assert!(words.iter().all(|w| e.contains(w)) && e.contains(path.file_name().unwrap().to_str().unwrap()), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

/// A denoiser file with the `model.diffusion_model.` prefix kept (stable-diffusion.cpp's names)
/// needs a companion as ComfyUI-GGUF's does and runs the same with one; a tensor ComfyUI-GGUF's
/// converter stored reshaped (`comfy.gguf.orig_shape.*`) is refused in one line naming it.
#[test]
fn prefixed_and_reshaped_denoisers() {
    use candle_core::quantized::gguf_file;
    let src = gguf("tiny-sd1-unet-q8_0.gguf");
    let mut f = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|n| (n.clone(), content.tensor(&mut f, n, &Device::Cpu).unwrap()))
        .collect();
    let write = |path: &Path, prefix: &str, metadata: &[(&str, &gguf_file::Value)]| {
        let named: Vec<(String, &candle_core::quantized::QTensor)> =
            tensors.iter().map(|(n, t)| (format!("{prefix}{n}"), t)).collect();
        let refs: Vec<(&str, &candle_core::quantized::QTensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        gguf_file::write(&mut std::fs::File::create(path).unwrap(), metadata, &refs).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let prefixed = dir.path().join("prefixed.gguf");
    write(&prefixed, "model.diffusion_model.", &[]);
    let e = load(&prefixed, &Knobs::default()).err().unwrap().to_string();
    assert!(e.contains("prefixed.gguf") && e.contains("only a denoiser") && e.contains("--base PATH"), "{e}");
    let base = Companions { base: Some(gguf("tiny-sd1-q8_0.gguf")), ..Companions::default() };
    let (a, _) = run(&mut with_companions(&prefixed, &base).unwrap());
    let (b, _) = run(&mut with_companions(&src, &base).unwrap());
    assert_eq!(max_diff(&a, &b), 0.0);

    let reshaped = dir.path().join("reshaped.gguf");
    let name = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    let key = format!("comfy.gguf.orig_shape.{name}");
    let shape = gguf_file::Value::Array(vec![gguf_file::Value::I32(32), gguf_file::Value::I32(32)]);
    write(&reshaped, "", &[(key.as_str(), &shape)]);
    let e = with_companions(&reshaped, &base).err().unwrap().to_string();
    assert!(e.contains("reshaped.gguf") && e.contains(name) && e.contains("comfy.gguf.orig_shape"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// stable-diffusion.cpp's q8_0 GGUF of the tiny SDXL single file (its converter keeps SDXL's LDM
/// names): recognised as SDXL with four components, run under precision auto with its blocks as
/// stored, an image close to the f32 single file's (measured 45.4 dB), and resident bytes the
/// stored bytes but for what a layer uses in f32 (norms, and OpenCLIP's `text_projection`,
/// which the loader transposes and so widens), under 1% more.
#[test]
fn sdxl_gguf_runs_as_stored() {
    let path = gguf("tiny-sdxl-q8_0.gguf");
    let insp = inspect(&path).unwrap();
    let (r, _) = crate::families::recognise(&insp).unwrap();
    let names: Vec<&str> = r.components.iter().map(|c| c.name).collect();
    assert_eq!(names, ["text", "text_2", "unet", "vae"]);
    assert!(r.reason.starts_with("a stable-diffusion.cpp GGUF of Stable Diffusion XL: "), "{}", r.reason);

    let single = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sdxl/tiny-sdxl.safetensors");
    let req = Request {
        prompt: "a photo of an astronaut riding a horse".into(),
        negative: String::new(),
        steps: 4,
        guidance: 5.0,
        width: 64,
        height: 64,
        ..request()
    };
    let image = |m: &mut LatentDiffusion| {
        let mut notes = Notes::default();
        let img = m.run(&req, &mut notes).unwrap();
        (to_images(&img).unwrap().remove(0), notes.notes)
    };
    let (f32_img, _) = image(&mut load(&single, &knobs_at(Precision::F32)).unwrap());
    let mut model = load(&path, &Knobs::default()).unwrap();
    let (img, notes) = image(&mut model);
    let db = psnr_db(&f32_img, &img).unwrap();
    println!("tiny-sdxl-q8_0.gguf: PSNR {db:.1} dB against the f32 single file");
    assert!(db >= 30.0, "{db} dB");
    assert!(notes.iter().any(|n| n.starts_with("unet: kept as the GGUF stores it (precision auto): ") && n.contains("q8_0")), "{notes:?}");

    let held = model.component_weight_bytes();
    let mut want = expected_resident(&path);
    // OpenCLIP's layer norms (ln_1, ln_2, ln_final) are f16 like CLIP's, under other names
    for t in insp.tensors().filter(|t| t.name.ends_with(".model.text_projection") || (t.name.contains(".ln_") && t.dtype != "F32")) {
        want[0] += t.elements() * 4 - t.bytes.unwrap();
    }
    let stored: u64 = insp.stored_bytes();
    println!("resident {held:?}, expected {want:?}, stored {stored}");
    assert_eq!(held, want);
    let extra = held.iter().sum::<u64>() - stored;
    assert!(extra * 100 < stored, "{extra} bytes held beyond the {stored} stored");
}

/// On the SDXL GGUF a change of `text_2` alone between `auto` (as stored) and f32 (which `auto`
/// also means on the CPU) reads `text_2` again, and its bytes become the f32 load's.
#[test]
fn sdxl_gguf_text_2_leaves_auto() {
    use crate::families::{Family, Retuned};
    let path = gguf("tiny-sdxl-q8_0.gguf");
    let mut model = load(&path, &Knobs::default()).unwrap();
    let before = model.component_weight_bytes();
    let mut f32_text_2 = Knobs::default();
    f32_text_2.set("precision.text_2", "f32").unwrap();
    let read = model.retune(&Knobs::default(), &f32_text_2, &crate::CancelCheck::never()).unwrap();
    assert_eq!(read, Retuned::Read(vec!["text_2".into()]));
    let after = model.component_weight_bytes();
    assert_eq!(after, load(&path, &f32_text_2).unwrap().component_weight_bytes());
    assert!(after[0] > before[0] && after[1..] == before[1..], "{before:?} {after:?}");
}
