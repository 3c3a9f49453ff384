//! The CLIP BPE tokenizer, built with the `tokenizers` crate from a diffusers folder's
//! `tokenizer/vocab.json` and `merges.txt` the way transformers' `CLIPTokenizer` builds it, or
//! read from a `tokenizer.json` alone (as transformers 5 saves a tokenizer), with the pad token
//! and length from `tokenizer_config.json` / `special_tokens_map.json`.

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as Normalizers};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// CLIP's pre-tokenizer pattern (transformers' `CLIPTokenizer`).
const CLIP_SPLIT: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A prompt as token ids, padded to the model's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// `max_length` ids: start, the prompt's tokens, end, then padding.
    pub ids: Vec<u32>,
    /// Set when the prompt was cut to fit, saying how much was dropped.
    pub warning: Option<String>,
}

/// A CLIP tokenizer with its special tokens and length.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    /// Tokens per sequence, start and end included (77 for SD).
    pub max_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("max_length", &self.max_length)
            .finish()
    }
}

/// A special token as configs write it: a string, or an object with `content`.
fn token_name(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Loads `dir/vocab.json` and `dir/merges.txt`, or else `dir/tokenizer.json`; the pad token
    /// and `model_max_length` come from `special_tokens_map.json` / `tokenizer_config.json` when
    /// present (SD 1.x pads with `<|endoftext|>`, SD 2.x and SDXL's second tokenizer with `!`).
    ///
    /// # Errors
    /// Missing or malformed files, or special tokens absent from the vocabulary, naming the file.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let json = dir.join("tokenizer.json");
        if !vocab.is_file() && !merges.is_file() && json.is_file() {
            // transformers' own serialization: normalizer, pre-tokenizer and BPE as it runs them;
            // the special tokens are added here, as for the vocabulary files
            let tokenizer = Tokenizer::from_file(&json)
                .map_err(|e| Error::file(&json, format!("not a tokenizer file: {}", e.to_string().lines().next().unwrap_or(""))))?;
            return Self::with_config(tokenizer, dir, &json);
        }
        for p in [&vocab, &merges] {
            if !p.is_file() {
                return Err(Error::file(p, "missing (a CLIP tokenizer needs vocab.json and merges.txt, or tokenizer.json)"));
            }
        }
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .end_of_word_suffix("</w>".into())
            .unk_token("<|endoftext|>".into())
            .build()
            .map_err(|e| Error::file(&vocab, format!("not a BPE vocabulary: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let bad = |e: tokenizers::Error| Error::file(dir, format!("tokenizer setup failed: {e}"));
        let normalizer = Normalizers::new(vec![
            NFC.into(),
            Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
                .map_err(bad)?
                .into(),
            Lowercase.into(),
        ]);
        tokenizer.with_normalizer(Some(normalizer)).map_err(bad)?;
        let split =
            Split::new(SplitPattern::Regex(CLIP_SPLIT.into()), SplitDelimiterBehavior::Removed, true).map_err(bad)?;
        tokenizer
            .with_pre_tokenizer(Some(PreTokenizers::new(vec![split.into(), ByteLevel::new(false, true, true).into()])));
        Self::with_config(tokenizer, dir, &vocab)
    }

    /// Reads the special tokens and length of the tokenizer in `dir` from its configs; `vocab`
    /// is the file an unknown token is blamed on.
    fn with_config(tokenizer: Tokenizer, dir: &Path, vocab: &Path) -> Result<Self> {
        let mut config = serde_json::Map::new();
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let p = dir.join(name);
            if p.is_file() {
                let v: serde_json::Value = super::folder::read_json(&p)?;
                if let serde_json::Value::Object(o) = v {
                    config.extend(o);
                }
            }
        }
        let id = |key: &str, default: &str| -> Result<u32> {
            let name = token_name(config.get(key)).unwrap_or_else(|| default.to_string());
            tokenizer
                .token_to_id(&name)
                .ok_or_else(|| Error::file(vocab, format!("{key} '{name}' is not in the vocabulary")))
        };
        let bos = id("bos_token", "<|startoftext|>")?;
        let eos = id("eos_token", "<|endoftext|>")?;
        let pad = id("pad_token", "<|endoftext|>")?;
        let max_length = config
            .get("model_max_length")
            .and_then(serde_json::Value::as_u64)
            .filter(|&n| (3..=4096).contains(&n))
            .unwrap_or(77) as usize;
        Ok(Self { tokenizer, bos, eos, pad, max_length })
    }

    /// Pads with `token` from now on (SD 2.x's OpenCLIP tokenizer pads with `!`).
    ///
    /// # Errors
    /// A token that is not in the vocabulary.
    pub fn set_pad_token(&mut self, token: &str) -> std::result::Result<(), String> {
        self.pad = self.tokenizer.token_to_id(token).ok_or_else(|| format!("pad token '{token}' is not in the vocabulary"))?;
        Ok(())
    }

    /// Tokenizes `text` to exactly `max_length` ids: start, up to `max_length − 2` tokens, end,
    /// padding. A longer prompt is cut, and [`Tokens::warning`] says so.
    ///
    /// # Errors
    /// A tokenizer failure (not expected for any UTF-8 text).
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::invalid(format!("tokenizing the prompt failed: {e}")))?;
        let body = enc.get_ids();
        let room = self.max_length - 2;
        let warning = (body.len() > room).then(|| {
            format!(
                "the prompt is {} tokens long; only the first {room} are used ({} dropped)",
                body.len(),
                body.len() - room
            )
        });
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..body.len().min(room)]);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(Tokens { ids, warning })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::latent_diffusion::parity_tests::{fixture, refs};

    fn ref_ids(r: &std::collections::HashMap<String, candle_core::Tensor>, key: &str) -> Vec<u32> {
        r[key].flatten_all().unwrap().to_vec1::<i64>().unwrap().iter().map(|&x| x as u32).collect()
    }

    /// Token ids equal transformers' CLIPTokenizer for SD1 (pad = end) and SD2 (pad = "!"),
    /// including the empty prompt and a prompt cut at 77 with a warning.
    #[test]
    fn ids_match_transformers() {
        let prompts: serde_json::Value =
            crate::families::latent_diffusion::folder::read_json(&fixture("tiny-sd1").join("refs.json")).unwrap();
        for name in ["tiny-sd1", "tiny-sd2"] {
            let tok = ClipTokenizer::from_dir(&fixture(name).join("tokenizer")).unwrap();
            let r = refs(name);
            for (key, text) in [
                ("ids_prompt", prompts["prompt"].as_str().unwrap()),
                ("ids_negative", prompts["negative"].as_str().unwrap()),
                ("ids_empty", ""),
            ] {
                let t = tok.encode(text).unwrap();
                assert_eq!(t.ids, ref_ids(&r, key), "{name} {key}");
                assert!(t.warning.is_none());
            }
            let long = tok.encode(prompts["long_prompt"].as_str().unwrap()).unwrap();
            assert_eq!(long.ids, ref_ids(&r, "ids_long"), "{name} long");
            assert!(long.warning.unwrap().contains("120 tokens"));
        }
    }

    /// A folder without merges.txt is an error naming the file.
    #[test]
    fn missing_merges_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("tiny-sd1").join("tokenizer/vocab.json"), dir.path().join("vocab.json")).unwrap();
        let e = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("merges.txt"), "{e}");
    }
}
