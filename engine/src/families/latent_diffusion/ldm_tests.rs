//! Single-file LDM checkpoints (`tools/make_ldm_fixtures.py`): an SD 1-style `.safetensors` and
//! an SD 2-style `.ckpt` with its `.yaml`, against diffusers after its own single-file conversion.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::Checkpoint;
use super::clip::ClipTextModel;
use super::parity_tests::max_diff;
use super::unet::Unet;
use super::vae::AutoencoderKl;
use crate::families::RunObserver;
use crate::knobs::{Component, Knobs};
use crate::nn::Weights;
use crate::request::{Request, Scheduler};
use crate::worker::protocol::{Preview, Stage};

const FILES: [&str; 2] = ["tiny-ldm1.safetensors", "tiny-ldm2.ckpt"];

fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd/ldm").join(file)
}

fn refs(file: &str) -> HashMap<String, Tensor> {
    let stem = file.split('.').next().unwrap();
    candle_core::safetensors::load(fixture(&format!("{stem}.refs.safetensors")), &Device::Cpu).unwrap()
}

/// Token ids (the shipped vocabulary, SD 2's `!` padding), embeddings ≤ 1e-4, one UNet forward
/// ≤ 1e-3 and one VAE decode ≤ 1e-3 against diffusers.
#[test]
fn components_match_diffusers_conversion() {
    for file in FILES {
        let r = refs(file);
        let ck = Checkpoint::open(&fixture(file)).unwrap();
        let tok = ck.tokenizer().unwrap();
        let ids = tok.encode("a photo of an astronaut riding a horse on the moon").unwrap().ids;
        let want: Vec<i64> = r["ids_prompt"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), want, "{file} ids");

        let (vb, _) = ck.weights(Component::Text, DType::F32, &Device::Cpu).unwrap();
        let text = ClipTextModel::new(&ck.text_config().unwrap(), Weights::new(vb)).unwrap();
        for k in ["prompt", "negative"] {
            let d = max_diff(&text.forward(&r[&format!("ids_{k}")], 0).unwrap(), &r[&format!("emb_{k}")]);
            assert!(d <= 1e-4, "{file} emb_{k}: {d}");
        }
        let (vb, _) = ck.weights(Component::Unet, DType::F32, &Device::Cpu).unwrap();
        let unet = Unet::new(&ck.unet_config().unwrap(), Weights::new(vb)).unwrap();
        let ctx = Tensor::cat(&[&r["emb_negative"], &r["emb_prompt"]], 0).unwrap();
        let d = max_diff(&unet.forward(&r["unet_in"], 500.0, &ctx).unwrap(), &r["unet_out"]);
        assert!(d <= 1e-3, "{file} unet: {d}");
        let (vb, _) = ck.weights(Component::Vae, DType::F32, &Device::Cpu).unwrap();
        let vae = AutoencoderKl::new(&ck.vae_config().unwrap(), Weights::new(vb)).unwrap();
        let d = max_diff(&vae.decode_scaled(&r["vae_in"]).unwrap(), &r["vae_out"]);
        assert!(d <= 1e-3, "{file} vae: {d}");
    }
}

struct Quiet;
impl RunObserver for Quiet {
    fn stage(&mut self, _: Stage) -> crate::Result<()> {
        Ok(())
    }
    fn progress(&mut self, _: u32, _: u32) {}
    fn preview(&mut self, _: Preview) {}
    fn note(&mut self, _: String) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// The whole pipeline from a single file (configs inferred, the `.yaml`'s v-prediction for SD 2)
/// gives diffusers' DDIM and Euler images within 2/255 with our own seed-42 noise.
#[test]
fn single_file_images_match_diffusers() {
    for file in FILES {
        let r = refs(file);
        let mut model = super::load(&fixture(file), &Knobs::default()).unwrap();
        for (key, scheduler) in [("ddim", Scheduler::Ddim), ("euler", Scheduler::Euler)] {
            let req = Request {
                prompt: "a photo of an astronaut riding a horse on the moon".into(),
                negative: "blurry, low quality".into(),
                seed: 42,
                steps: 4,
                guidance: 7.5,
                scheduler,
                width: 32,
                height: 32,
                ..Request::default()
            };
            let img = model.run(&req, &mut Quiet).unwrap();
            let d = max_diff(&img, &r[&format!("image_{key}")]);
            eprintln!("{file} {key}: max abs difference {d}");
            assert!(d <= 2.0 / 255.0, "{file} {key}: {d}");
        }
    }
}

/// A safetensors file that is not an LDM checkpoint is refused with a message naming keys.
#[test]
fn other_layouts_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("llm.safetensors");
    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("lm_head.weight".to_string(), t)]), &p).unwrap();
    let e = Checkpoint::open(&p).err().unwrap().to_string();
    assert!(e.contains("llm.safetensors") && e.contains("lm_head.weight"), "{e}");
    assert_eq!(e.lines().count(), 1);
}

/// A diffusers folder whose text encoder is a torch zip `pytorch_model.bin` loads it tensor by
/// tensor and gives the same embeddings as the safetensors file.
#[test]
fn folder_with_bin_weights_loads_like_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let src = super::parity_tests::fixture("tiny-sd1").join("text_encoder");
    let dst = dir.path().join("text_encoder");
    std::fs::create_dir(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    std::fs::copy(fixture("tiny-sd1-text_encoder-pytorch_model.bin"), dst.join("pytorch_model.bin")).unwrap();
    let cfg = super::folder::read_config(&dst).unwrap();
    let (vb, n) = super::folder::var_builder(&dst, DType::F32, &Device::Cpu).unwrap();
    let (vb2, n2) = super::folder::var_builder(&src, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(n, n2);
    let a = ClipTextModel::new(&cfg, Weights::new(vb)).unwrap();
    let b = ClipTextModel::new(&cfg, Weights::new(vb2)).unwrap();
    let r = super::parity_tests::refs("tiny-sd1");
    let d = max_diff(&a.forward(&r["ids_prompt"], 0).unwrap(), &b.forward(&r["ids_prompt"], 0).unwrap());
    assert_eq!(d, 0.0);
}

/// A NaN in a weight is named in the load notes (the run goes on; nothing crashes).
#[test]
fn nan_weight_is_named_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let src = super::parity_tests::fixture("tiny-sd1");
    for entry in walk(&src) {
        let rel = entry.strip_prefix(&src).unwrap();
        let dst = dir.path().join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dst).unwrap();
    }
    let unet = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    let mut ts = candle_core::safetensors::load(&unet, &Device::Cpu).unwrap();
    let name = "down_blocks.0.resnets.0.conv1.weight";
    let w = &ts[name];
    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[3] = f32::NAN;
    ts.insert(name.into(), Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap());
    candle_core::safetensors::save(&ts, &unet).unwrap();
    let model = super::load(dir.path(), &Knobs::default()).unwrap();
    let notes = model.load_notes();
    assert!(notes.iter().any(|n| n.contains("NaN") && n.contains("unet: 1 weight") && n.contains(name)), "{notes:?}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// The planner groups a single file's denoiser into the blocks the loader builds (diffusers
/// names), so `gpu_blocks` means the same in the plan and in the run.
#[test]
fn plan_blocks_of_a_single_file_are_the_built_blocks() {
    let insp = crate::formats::inspect(&fixture("tiny-ldm1.safetensors")).unwrap();
    let shape = crate::plan::shape::ModelShape::from_inspection(&insp);
    let labels: Vec<&str> = shape.unet_blocks.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]);
    let model = super::load(&fixture("tiny-ldm1.safetensors"), &Knobs::default()).unwrap();
    let built: Vec<String> = model.unet_slots().into_iter().map(|(l, _)| l).collect();
    assert_eq!(built, labels);
}
