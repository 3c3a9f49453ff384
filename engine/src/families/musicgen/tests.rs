//! Parity with transformers on the tiny MusicGen fixture (`tools/make_musicgen_fixtures.py`):
//! T5 states, decoder logits, greedy codes with and without guidance, EnCodec's decode and
//! `generate`'s audio; seeded sampling; knobs; and the one-line errors for bad folders.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::pipeline::MusicGen;
use super::sampling::Sampling;
use crate::families::{Family, RunObserver};
use crate::knobs::Knobs;
use crate::request::Request;
use crate::worker::protocol::{Artifact, Preview, Stage};

use crate::families::testing::Notes;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/musicgen")
}

fn fixture() -> PathBuf {
    root().join("tiny-musicgen")
}

fn refs() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(root().join("refs.safetensors"), &Device::Cpu).unwrap()
}

fn prompt() -> String {
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("refs.json")).unwrap()).unwrap();
    j["prompt"].as_str().unwrap().to_string()
}

fn model(knobs: &Knobs) -> MusicGen {
    super::load(&fixture(), knobs, &crate::CancelCheck::never()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Reference codes `(1, K, frames)` (i64) as rows of u32.
fn code_rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.squeeze(0).unwrap().to_vec2::<i64>().unwrap().into_iter().map(|r| r.into_iter().map(|c| c as u32).collect()).collect()
}

/// The tokenizer gives transformers' ids and the T5 encoder its last hidden state (≤ 1e-4).
#[test]
fn encoder_states_match_transformers() {
    let m = model(&Knobs::default());
    let r = refs();
    let ids = m.tokenize(&prompt()).unwrap();
    let want: Vec<u32> = r["input_ids"].flatten_all().unwrap().to_vec1::<i64>().unwrap().into_iter().map(|i| i as u32).collect();
    assert_eq!(ids, want);
    let got = m.encode_ids(&ids).unwrap();
    let d = max_diff(&got, &r["encoder_hidden_states"]);
    eprintln!("encoder states max |diff| {d:e}");
    assert!(d <= 1e-4, "{d}");
}

/// One decoder forward over given codes gives transformers' logits (≤ 1e-3), and feeding the
/// same codes one column at a time through the KV cache gives the same logits.
#[test]
fn decoder_logits_match_transformers() {
    let m = model(&Knobs::default());
    let r = refs();
    let cond = m.conditioning(&prompt()).unwrap();
    let ids = r["decoder_input_ids"].to_dtype(candle_core::DType::U32).unwrap().unsqueeze(0).unwrap();
    let lm = m.lm();
    let mut cache = lm.cache(&cond).unwrap();
    let logits = lm.forward(&ids, &mut cache).unwrap();
    let d = max_diff(&logits, &r["decoder_logits"]);
    eprintln!("decoder logits max |diff| {d:e}");
    assert!(d <= 1e-3, "{d}");
    let mut cache = lm.cache(&cond).unwrap();
    let steps: Vec<Tensor> = (0..ids.dim(2).unwrap()).map(|t| lm.forward(&ids.narrow(2, t, 1).unwrap(), &mut cache).unwrap()).collect();
    let stepped = Tensor::cat(&steps, 2).unwrap();
    let d = max_diff(&stepped, &logits);
    assert!(d <= 1e-4, "cached steps differ from one pass by {d}");
}

/// Greedy generation gives transformers' codes exactly, without guidance and with guidance 3.0
/// (its zeroed unconditional branch), the delay pattern undone.
#[test]
fn greedy_codes_match_transformers() {
    let m = model(&Knobs::default());
    let r = refs();
    let cond = m.conditioning(&prompt()).unwrap();
    for (key, guidance) in [("greedy_codes", 1.0), ("greedy_codes_cfg", 3.0)] {
        let codes = m.generate_codes(&cond, 1, guidance, 20, Sampling::GREEDY, 0, &mut Notes::default()).unwrap();
        assert_eq!(codes[0], code_rows(&r[key]), "{key}");
    }
}

/// Sampling draws transformers' own tokens from the seed its global generator had: guided with
/// the generation config's top-k 250, and unguided with top-k 8, top-p 0.9, temperature 0.8.
#[test]
fn sampled_codes_match_transformers() {
    let m = model(&Knobs::default());
    let r = refs();
    let cond = m.conditioning(&prompt()).unwrap();
    let defaults = m.sampling(&Request::default());
    assert_eq!(defaults, Sampling { temperature: 1.0, top_k: 250, top_p: 1.0 }, "from generation_config.json");
    let filtered = m.sampling(&Request { top_k: Some(8), top_p: Some(0.9), temperature: Some(0.8), ..Request::default() });
    for (key, seed, guidance, s) in [("sampled_codes_cfg", 7, 3.0, defaults), ("sampled_codes_filtered", 3, 1.0, filtered)] {
        let codes = m.generate_codes(&cond, 1, guidance, 30, s, seed, &mut Notes::default()).unwrap();
        assert_eq!(codes[0], code_rows(&r[key]), "{key}");
    }
}

/// EnCodec's decode of given codes is transformers' audio (≤ 1e-4).
#[test]
fn codec_decode_matches_transformers() {
    let m = model(&Knobs::default());
    let r = refs();
    let codes = code_rows(&r["codec_codes"].squeeze(0).unwrap());
    let got = m.decode_codes(&codes, &Notes::default()).unwrap();
    let want = r["codec_audio"].flatten_all().unwrap();
    let d = max_diff(&Tensor::new(got, &Device::Cpu).unwrap(), &want);
    eprintln!("codec audio max |diff| {d:e}");
    assert!(d <= 1e-4, "{d}");
}

/// `generate` (2 s, guidance 3, greedy) gives transformers' `generate` audio (≤ 1e-4) at the
/// codec's rate, through the text, token and decode stages.
#[test]
fn generate_matches_transformers() {
    let mut m = model(&Knobs::default());
    let r = refs();
    let req = Request { prompt: prompt(), seconds: Some(2.0), guidance: 3.0, top_k: Some(1), ..Request::default() };
    let mut obs = Notes::default();
    let out = m.generate(&req, &mut obs).unwrap();
    assert_eq!(obs.stages, vec![Stage::Text, Stage::Denoise, Stage::Decode]);
    let Artifact::Audio(a) = &out[0] else { panic!("audio expected") };
    assert_eq!(a.sample_rate, 32000);
    let want = r["generate_audio"].flatten_all().unwrap();
    let d = max_diff(&Tensor::new(a.samples.clone(), &Device::Cpu).unwrap(), &want);
    eprintln!("generate audio max |diff| {d:e}");
    assert!(d <= 1e-4, "{d}");
}

/// Seeded sampling (top-k 0, temperature 1) draws the same audio run to run, another seed other
/// audio, and sampled codes differ from greedy ones.
#[test]
fn seeded_sampling_repeats() {
    let m = model(&Knobs::default());
    let cond = m.conditioning("soft drums").unwrap();
    let s = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 };
    let run = |seed| m.generate_codes(&cond, 2, 3.0, 12, s, seed, &mut Notes::default()).unwrap();
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a, run(12));
    assert_ne!(a[0], a[1], "the two batch items draw different tokens");
    assert_ne!(a[0], m.generate_codes(&cond, 1, 3.0, 12, Sampling::GREEDY, 11, &mut Notes::default()).unwrap()[0]);
}

/// The LM at q8_0 holds quantized linear layers (fewer bytes, said in the notes) and its logits
/// stay near f32's.
#[test]
fn lm_quantized_precision() {
    let f32m = model(&Knobs::default());
    let mut knobs = Knobs::default();
    knobs.set("precision.lm", "q8_0").unwrap();
    let q = model(&knobs);
    // rows of 48 fit no q8_0 block and fall back to a dense type; the rows of 96 are q8_0
    let (qb, fb) = (q.component_weight_bytes()[1], f32m.component_weight_bytes()[1]);
    assert!((qb as f64) < 0.6 * fb as f64, "{qb} vs {fb}");
    assert_eq!(q.component_weight_bytes()[0], f32m.component_weight_bytes()[0]);
    assert!(q.load_notes().iter().any(|n| n.starts_with("lm: precision q8_0")), "{:?}", q.load_notes());
    let r = refs();
    let ids = r["decoder_input_ids"].to_dtype(candle_core::DType::U32).unwrap().unsqueeze(0).unwrap();
    let logits = |m: &MusicGen| {
        let cond = m.conditioning(&prompt()).unwrap();
        let mut cache = m.lm().cache(&cond).unwrap();
        m.lm().forward(&ids, &mut cache).unwrap()
    };
    let (a, b) = (logits(&f32m), logits(&q));
    let d = max_diff(&a, &b);
    assert!(d > 0.0 && d < 0.1, "q8_0 logits differ from f32's by {d}");
}

/// Cancels once `after` columns are done.
struct CancelAfter {
    after: u32,
    done: std::cell::Cell<u32>,
}

impl RunObserver for CancelAfter {
    fn stage(&mut self, _: Stage) -> crate::Result<()> {
        Ok(())
    }
    fn progress(&mut self, step: u32, _: u32) {
        self.done.set(step);
    }
    fn preview(&mut self, _: Preview) {}
    fn cancelled(&self) -> bool {
        self.done.get() >= self.after
    }
    fn note(&mut self, _: String) {}
}

/// A cancel ends a run within one generated column, as `Cancelled`; q4k on the LM loads (rows
/// too short for its blocks fall back, said in the notes) and generates.
#[test]
fn cancel_and_q4k() {
    let mut m = model(&Knobs::default());
    let req = Request { prompt: "x".into(), seconds: Some(1.0), ..Request::default() };
    let mut obs = CancelAfter { after: 3, done: std::cell::Cell::new(0) };
    assert!(matches!(m.generate(&req, &mut obs), Err(crate::Error::Cancelled)));
    assert_eq!(obs.done.get(), 3);
    let mut knobs = Knobs::default();
    knobs.set("precision.lm", "q4k").unwrap();
    let mut q = model(&knobs);
    assert!(q.load_notes().iter().any(|n| n.starts_with("lm: precision q4k")), "{:?}", q.load_notes());
    let out = q.generate(&Request { top_k: Some(1), ..req }, &mut Notes::default()).unwrap();
    assert!(matches!(&out[0], Artifact::Audio(a) if a.samples.len() == 47 * 640));
}

/// A knob change reads again only the component it touches: the LM's precision reads the LM,
/// slicing reads nothing, and the run after it still makes transformers' greedy codes.
#[test]
fn retune_reads_only_what_changed() {
    let mut m = model(&Knobs::default());
    let before = m.component_weight_bytes();
    let mut q = Knobs::default();
    q.set("precision.lm", "q8_0").unwrap();
    let cancel = crate::CancelCheck::never();
    assert_eq!(m.retune(&Knobs::default(), &q, &cancel).unwrap(), crate::families::Retuned::Read(vec!["lm".into()]));
    let after = m.component_weight_bytes();
    assert!(after[1] < before[1] && after[0] == before[0] && after[2] == before[2], "{before:?} → {after:?}");
    let mut sliced = q;
    sliced.set("slicing.attention_slice", "2").unwrap();
    assert_eq!(m.retune(&q, &sliced, &cancel).unwrap(), crate::families::Retuned::Read(vec![]));
    assert!(m.retune(&sliced, &Knobs::default(), &cancel).unwrap() == crate::families::Retuned::Read(vec!["lm".into()]));
    let cond = m.conditioning(&prompt()).unwrap();
    let codes = m.generate_codes(&cond, 1, 3.0, 20, Sampling::GREEDY, 0, &mut Notes::default()).unwrap();
    assert_eq!(codes[0], code_rows(&refs()["greedy_codes_cfg"]));
}

/// An edit of a config.json.
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

/// A copy of the fixture with `config.json` edited by `edit`.
fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut j);
    std::fs::write(&path, j.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match super::load(dir, &Knobs::default(), &crate::CancelCheck::never()) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

/// Bad folders are refused in one line naming config.json and the field: an unknown codec,
/// codebook counts that disagree between decoder and codec, a codebook size that is not the
/// decoder's vocabulary; seconds past the decoder's positions name the maximum.
#[test]
fn bad_input_one_line() {
    let cases: [(Edit, &str); 3] = [
        (Box::new(|j| j["audio_encoder"]["model_type"] = "dac".into()), "audio_encoder.model_type = 'dac'"),
        (Box::new(|j| j["decoder"]["num_codebooks"] = 8.into()), "decoder.num_codebooks = 8 but the codec (audio_encoder) has 4 quantizers"),
        (Box::new(|j| j["decoder"]["vocab_size"] = 128.into()), "decoder.vocab_size = 128 but audio_encoder.codebook_size = 64"),
    ];
    for (edit, words) in cases {
        let dir = edited(edit);
        let e = load_err(dir.path());
        assert!(e.contains("config.json: ") && e.contains(words) && !e.contains('\n'), "{e}");
    }
    let mut m = model(&Knobs::default());
    let req = Request { prompt: "x".into(), seconds: Some(30.0), ..Request::default() };
    let e = m.generate(&req, &mut Notes::default()).unwrap_err().to_string();
    assert!(e.contains("config.json: seconds = 30: at most 5.10 s") && e.contains("max_position_embeddings = 256") && !e.contains('\n'), "{e}");
    let e = m.generate(&Request { seconds: Some(0.02), ..req }, &mut Notes::default()).unwrap_err().to_string();
    assert!(e.contains("at least 4"), "{e}");
}

/// The folder is recognised as MusicGen surely, with its three components; SD folders are not.
#[test]
fn recognised_by_config() {
    let insp = crate::formats::inspect(&fixture()).unwrap();
    let (r, f) = crate::families::recognise(&insp).unwrap();
    assert_eq!((r.family, f.name, r.confidence), ("musicgen", "musicgen", 1.0));
    assert_eq!(r.components.iter().map(|c| c.name).collect::<Vec<_>>(), ["text", "lm", "codec"]);
    let sd = crate::formats::inspect(&root().join("../sd/tiny-sd1")).unwrap();
    assert!(super::recognise(&sd).is_none());
}
