//! SDXL base from a single file in the original layout (`tests/fixtures/sdxl/tiny-sdxl.safetensors`,
//! made by `tools/make_sdxl_single_fixture.py` from the tiny SDXL folder's weights): the same
//! tensors as the folder after the name map, the same images, the same knobs and bytes, and a
//! file missing its second text encoder refused by name.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::Checkpoint;
use super::ldm_keys::TextTower;
use super::parity_tests::max_diff;
use super::pipeline::{LatentDiffusion, load, to_images};
use super::single_file::SingleFile;
use super::sdxl_tests::fixture as folder;
use crate::families::{Family, RunObserver};
use crate::knobs::{Component, Knobs, OffloadMode};
use crate::request::{Request, Scheduler};
use crate::worker::protocol::{Preview, Stage};

/// `tests/fixtures/sdxl/tiny-sdxl.safetensors`.
fn file() -> PathBuf {
    folder().with_file_name("tiny-sdxl.safetensors")
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

/// Rows of the folder's token tables (its small vocabulary).
const FOLDER_VOCAB: u64 = 589;

/// The prompt of the image comparisons: every word one token in the folder's small vocabulary and
/// in the standard one (the folder splits "moon" in two, so its prompt would not do).
const PROMPT: &str = "a photo of an astronaut riding a horse";

/// The negative prompt of the comparisons.
const NEGATIVE: &str = "blurry, low quality";

/// The folder fixture's request (seed 42, 4 steps, guidance 5, 64×64) with [`PROMPT`].
fn request(scheduler: Scheduler, negative: &str) -> Request {
    Request {
        prompt: PROMPT.into(),
        negative: negative.into(),
        seed: 42,
        steps: 4,
        guidance: 5.0,
        width: 64,
        height: 64,
        scheduler,
        ..Request::default()
    }
}

fn image(model: &mut LatentDiffusion, req: &Request) -> Tensor {
    model.run(req, &mut Quiet).unwrap()
}

/// The folder's vocabulary id of each token → its id in the standard CLIP vocabulary (the single
/// file's token tables are laid out by the latter), for tokens in both.
fn id_map() -> Vec<(usize, usize)> {
    let read = |p: PathBuf| -> HashMap<String, usize> { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let small = read(folder().join("tokenizer/vocab.json"));
    let full = read(crate::paths::clip_vocabulary_dir().unwrap().join("vocab.json"));
    small.iter().filter_map(|(t, &i)| full.get(t).map(|&j| (i, j))).collect()
}

/// The file is recognised as SDXL with four components, its configs inferred from shapes (two
/// text encoders, quick_gelu and gelu, the UNet's `text_time` embedding and per-level transformer
/// depth, the VAE's 0.13025) equal the folder's where the model reads them, and the scheduler is
/// SDXL's.
#[test]
fn configs_are_inferred_as_the_folders() {
    let insp = crate::formats::inspect(&file()).unwrap();
    assert_eq!(insp.family.id, "sdxl");
    let (r, _) = crate::families::recognise(&insp).unwrap();
    let names: Vec<&str> = r.components.iter().map(|c| c.name).collect();
    assert_eq!((r.confidence, names), (1.0, vec!["text", "text_2", "unet", "vae"]));

    let single = Checkpoint::open(&file()).unwrap();
    let dir = Checkpoint::open(&folder()).unwrap();
    let (t1, t2) = (single.text_config().unwrap(), single.text_2().unwrap().unwrap().config);
    let (f1, f2) = (dir.text_config().unwrap(), dir.text_2().unwrap().unwrap().config);
    for (got, want) in [(&t1, &f1), (&t2, &f2)] {
        assert_eq!(
            (got.hidden_size, got.intermediate_size, got.num_hidden_layers, got.num_attention_heads, &got.hidden_act),
            (want.hidden_size, want.intermediate_size, want.num_hidden_layers, want.num_attention_heads, &want.hidden_act)
        );
    }
    assert_eq!((t1.hidden_act.as_str(), t2.hidden_act.as_str()), ("quick_gelu", "gelu"));
    assert_eq!((t2.projection_dim, t1.vocab_size), (f2.projection_dim, 49408));
    let (u, fu) = (single.unet_config().unwrap(), dir.unet_config().unwrap());
    assert!(u.is_text_time());
    assert_eq!(
        (u.addition_time_embed_dim, u.projection_class_embeddings_input_dim, u.cross_attention_dim),
        (fu.addition_time_embed_dim, fu.projection_class_embeddings_input_dim, fu.cross_attention_dim)
    );
    assert_eq!(u.transformer_layers_per_block, super::unet::PerBlock::Each(vec![1, 2, 1]));
    assert_eq!(u.block_out_channels, fu.block_out_channels);
    assert_eq!(single.vae_config().unwrap().scaling_factor, 0.13025);
    let s = single.scheduler_config().unwrap();
    assert_eq!((s.beta_start, s.beta_end, s.beta_schedule.as_str(), s.num_train_timesteps), (0.00085, 0.012, "scaled_linear", 1000));
    assert_eq!((s.steps_offset, s.timestep_spacing.as_deref(), s.clip_sample), (1, Some("leading"), Some(false)));
    assert!(single.text_2().unwrap().unwrap().force_zeros);
    let Checkpoint::Single(f) = &single else { panic!("not a single file") };
    assert_eq!(f.layout.tower, TextTower::Xl);
}

/// Both tokenizers of the single file are the standard vocabulary's: the first padded with the
/// end token, the second with "!" (id 0), as SDXL's are.
#[test]
fn tokenizers_are_the_standard_vocabulary() {
    let single = Checkpoint::open(&file()).unwrap();
    let one = single.tokenizer().unwrap().encode("a photo").unwrap().ids;
    let two = single.text_2().unwrap().unwrap().tokenizer.encode("a photo").unwrap().ids;
    assert_eq!(&one[..4], [49406, 320, 1125, 49407]);
    assert_eq!(&two[..4], [49406, 320, 1125, 49407]);
    assert_eq!((one[4], two[4]), (49407, 0));
}

/// Every tensor of every component (text, text_2, unet, vae) read through the single file's name
/// map equals the folder's tensor of that name exactly (the token tables row by row through the
/// vocabulary id map), and the name sets are the same.
#[test]
fn weights_equal_the_folders() {
    let single = SingleFile::open(&file()).unwrap();
    let ids = id_map();
    assert!(ids.len() > 500, "{}", ids.len());
    let parts = [
        (Some(Component::Text), "text_encoder/model.safetensors", 0),
        (None, "text_encoder_2/model.safetensors", 3),
        (Some(Component::Unet), "unet/diffusion_pytorch_model.safetensors", 1),
        (Some(Component::Vae), "vae/diffusion_pytorch_model.safetensors", 2),
    ];
    for (component, path, index) in parts {
        let want = candle_core::safetensors::load(folder().join(path), &Device::Cpu).unwrap();
        // transformers 5 saves CLIPTextModel without its `text_model.` prefix
        let want: HashMap<String, Tensor> = want
            .into_iter()
            .filter(|(k, _)| !k.ends_with("position_ids"))
            .map(|(k, v)| {
                let text = component == Some(Component::Text) && !k.starts_with("text_model.");
                (if text { format!("text_model.{k}") } else { k }, v)
            })
            .collect();
        let (vb, _) = match component {
            Some(c) => single.weights(c, DType::F32, &Device::Cpu),
            None => single.weights_text_2(DType::F32, &Device::Cpu).unwrap(),
        };
        let mut names: Vec<&String> = single.layout.names[index].keys().collect();
        names.sort();
        let mut expected: Vec<&String> = want.keys().collect();
        expected.sort();
        assert_eq!(names, expected, "{path}");
        for (name, w) in &want {
            let got = vb.get_unchecked(name).unwrap();
            if name.ends_with("token_embedding.weight") {
                assert_eq!(got.dim(0).unwrap(), 49408, "{name}");
                for &(small, big) in &ids {
                    let d = max_diff(&got.get(big).unwrap(), &w.get(small).unwrap());
                    assert_eq!(d, 0.0, "{path} {name} row {small} → {big}");
                }
            } else {
                assert_eq!(got.dims(), w.dims(), "{path} {name}");
                assert_eq!(max_diff(&got, &w.to_dtype(DType::F32).unwrap()), 0.0, "{path} {name}");
            }
        }
        println!("{path}: {} tensors equal", want.len());
    }
}

/// The single file gives the folder's images, f32, seeded, for DDIM and Euler (no negative
/// prompt, so SDXL's zeroed negative) and Euler with a negative prompt: bit for bit (within
/// 1e-5 asked), as the weights and the prompts' embeddings (checked first, exactly) are the same
/// for prompts whose words are one token in both vocabularies.
#[test]
fn images_equal_the_folders() {
    let mut dir = load(&folder(), &Knobs::default()).unwrap();
    let mut single = load(&file(), &Knobs::default()).unwrap();
    // the comparison's premise: these prompts are the same tokens in both vocabularies
    let map: HashMap<u32, u32> = id_map().into_iter().map(|(a, b)| (a as u32, b as u32)).collect();
    let small = super::tokenizer::ClipTokenizer::from_dir(&folder().join("tokenizer")).unwrap();
    let standard = Checkpoint::open(&file()).unwrap().tokenizer().unwrap();
    let same = |prompt: &str| {
        let mapped: Vec<u32> = small.encode(prompt).unwrap().ids.iter().map(|i| map.get(i).copied().unwrap_or(u32::MAX)).collect();
        mapped == standard.encode(prompt).unwrap().ids
    };
    assert!(same(PROMPT) && same(NEGATIVE) && same(""));
    assert!(!same("a photo of an astronaut riding a horse on the moon"), "the folder splits 'moon'");
    for prompt in [PROMPT, ""] {
        let (e1, p1, _) = dir.encode_prompt_xl(prompt).unwrap();
        let (e2, p2, _) = single.encode_prompt_xl(prompt).unwrap();
        let (de, dp) = (max_diff(&e1, &e2), max_diff(&p1, &p2));
        println!("'{prompt}': embeddings max diff {de:.2e}, pooled {dp:.2e}");
        assert!(de == 0.0 && dp == 0.0, "'{prompt}': {de} {dp}");
    }
    for (key, req) in [
        ("ddim", request(Scheduler::Ddim, "")),
        ("euler", request(Scheduler::Euler, "")),
        ("euler with a negative prompt", request(Scheduler::Euler, NEGATIVE)),
    ] {
        let (a, b) = (image(&mut dir, &req), image(&mut single, &req));
        let d = max_diff(&a, &b);
        println!("{key}: max diff {d:.2e}");
        assert!(d <= 1e-5, "{key}: {d}");
        // not a blank image on both sides
        assert!(max_diff(&a, &a.zeros_like().unwrap()) > 0.1);
    }
}

/// The knobs on the single file as on the folder: q8_0 on `text_2` alone, and the UNet's blocks
/// 2 resident and the rest streamed, give the same resident bytes (UNet and VAE equal, the text
/// encoders' differing by exactly their wider token tables at the knob's storage) and the same
/// image as the folder at the same knobs.
#[test]
fn knobs_match_the_folder() {
    let mut q8 = Knobs::default();
    q8.set("precision.text_2", "q8_0").unwrap();
    let mut stream = Knobs::default();
    stream.offload.gpu_blocks = Some(2);
    stream.offload.mode = OffloadMode::Stream;
    let f32_bytes = load(&file(), &Knobs::default()).unwrap().component_weight_bytes();
    for (what, knobs) in [("q8_0 text_2", q8), ("gpu_blocks 2 stream", stream)] {
        let mut dir = load(&folder(), &knobs).unwrap();
        let mut single = load(&file(), &knobs).unwrap();
        let (a, b) = (dir.component_weight_bytes(), single.component_weight_bytes());
        println!("{what}: folder {a:?}, single file {b:?}, f32 {f32_bytes:?}");
        assert_eq!(a[1..], b[1..], "{what}: unet and vae");
        // the text encoders differ only by their token tables' rows (49408 against the folder's)
        let rows = |c: &str, width: u64| {
            let table = |n: u64| {
                crate::plan::shape::WeightTensor(crate::formats::TensorInfo {
                    name: "text_model.embeddings.token_embedding.weight".into(),
                    dtype: "F32".into(),
                    shape: vec![n, width],
                    bytes: None,
                })
                .bytes_at(knobs.precision.get(c).resolve(knobs.device))
            };
            table(49408) - table(FOLDER_VOCAB)
        };
        assert_eq!(b[0] - a[0], rows("text", 32) + rows("text_2", 48), "{what}: text");
        assert_eq!(dir.weight_bytes()[0].1 + b[0] - a[0], single.weight_bytes()[0].1, "{what}");
        assert_eq!(dir.unet_slots(), single.unet_slots(), "{what}");
        let req = request(Scheduler::Euler, "");
        let d = max_diff(&image(&mut dir, &req), &image(&mut single, &req));
        assert!(d <= 1e-5, "{what}: {d}");
        let png = to_images(&image(&mut single, &req)).unwrap();
        assert_eq!(png.len(), 1);
    }
    // the knobs did something: text_2 at q8_0 holds fewer bytes, streamed blocks are not resident
    let single = load(&file(), &q8).unwrap();
    assert!(single.component_weight_bytes()[0] < f32_bytes[0]);
    assert_eq!(single.component_weight_bytes()[1..], f32_bytes[1..]);
    let single = load(&file(), &stream).unwrap();
    assert!(single.weight_bytes()[0].1 < f32_bytes.iter().sum::<u64>());
}

/// An SDXL single file without its second text encoder (`conditioner.embedders.1.*` removed) is
/// refused at load in one line naming the file and the missing encoder by its prefix.
#[test]
fn missing_text_encoder_2_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-clip-g.safetensors");
    let mut tensors = candle_core::safetensors::load(file(), &Device::Cpu).unwrap();
    tensors.retain(|k, _| !k.starts_with("conditioner.embedders.1."));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = load(&path, &Knobs::default()).map(|_| ()).unwrap_err().to_string();
    println!("{e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("second text encoder") && e.contains("conditioner.embedders.1.model."), "{e}");
}

/// The planner counts both text encoders of the single file (`conditioner.embedders.0.*` and
/// `.1.*`) as text: its bytes per component equal what the loader holds (less OpenCLIP's
/// `logit_scale`, which no module reads: 4 bytes at f32), and it groups the UNet into the 7
/// blocks the loader builds.
#[test]
fn plan_counts_both_text_encoders() {
    let insp = crate::formats::inspect(&file()).unwrap();
    let shape = crate::plan::shape::ModelShape::from_inspection(&insp);
    let p = crate::knobs::Precision::F32;
    let model = load(&file(), &Knobs::default()).unwrap();
    let counted = model.component_weight_bytes();
    let text = shape.component_bytes(Component::Text, p);
    assert_eq!(text - 4, counted[0], "planned {text}, loaded {}", counted[0]);
    assert_eq!(shape.component_bytes(Component::Unet, p), counted[1]);
    assert_eq!(shape.component_bytes(Component::Vae, p), counted[2]);
    let labels: Vec<String> = shape.unet_blocks.iter().map(|(l, _)| l.clone()).collect();
    let built: Vec<String> = model.unet_slots().into_iter().map(|(l, _)| l).collect();
    assert_eq!(labels, built);
    assert_eq!(labels.len(), 7);
}

/// The plan of the single file has four weight lines, `text_2` apart from `text` (both placed and
/// counted by their own knobs): at f32 they sum to the loaded text bytes (less `logit_scale`),
/// and q8_0 on `text_2` shrinks only that line, by what the loader saves.
#[test]
fn plan_has_a_text_2_line() {
    let insp = crate::formats::inspect(&file()).unwrap();
    let shape = crate::plan::shape::ModelShape::from_inspection(&insp);
    let req = request(Scheduler::Euler, "");
    let lines = |knobs: &Knobs| crate::plan::predict(&shape, knobs, &req, &crate::plan::Budgets::default())[0].components.clone();
    let f32_lines = lines(&Knobs::default());
    let names: Vec<&str> = f32_lines.keys().map(String::as_str).collect();
    assert_eq!(names, ["text", "text_2", "unet", "vae"]);
    let loaded = load(&file(), &Knobs::default()).unwrap().component_weight_bytes();
    assert_eq!(f32_lines["text"] + f32_lines["text_2"] - 4, loaded[0]);
    let mut q8 = Knobs::default();
    q8.set("precision.text_2", "q8_0").unwrap();
    let q8_lines = lines(&q8);
    let q8_loaded = load(&file(), &q8).unwrap().component_weight_bytes();
    println!("text_2: f32 {} → q8_0 {} planned; loaded text {} → {}", f32_lines["text_2"], q8_lines["text_2"], loaded[0], q8_loaded[0]);
    assert_eq!(q8_lines["text"], f32_lines["text"]);
    assert!(q8_lines["text_2"] < f32_lines["text_2"]);
    assert_eq!(f32_lines["text_2"] - q8_lines["text_2"], loaded[0] - q8_loaded[0]);
}
