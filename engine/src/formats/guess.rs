//! Guessing the model family from what the headers say, strongest evidence first: a GGUF's
//! `general.architecture`, a diffusers pipeline class, the UNet's cross-attention context width
//! (768 → SD 1.x, 1024 → SD 2.x, 2048 → SDXL), SDXL's extra embeddings, the LDM text-encoder
//! prefix (`cond_stage_model.transformer` → 1.x, `cond_stage_model.model` → 2.x,
//! `conditioner.embedders` → XL), and for tiny test models the text encoder's activation.

use std::collections::BTreeMap;

use super::{ComponentInfo, FamilyGuess, Format};
use crate::knobs::Component;

/// The label people see for a family id.
pub(crate) fn label(id: &str) -> String {
    match id {
        "sd1" => "Stable Diffusion 1.x".into(),
        "sd2" => "Stable Diffusion 2.x".into(),
        "sdxl" => "Stable Diffusion XL".into(),
        "musicgen" => "MusicGen (text to music)".into(),
        _ => match id.strip_prefix("llm:") {
            Some(arch) => format!("Language model ({arch})"),
            None => "Unknown".into(),
        },
    }
}

/// GGUF architectures of diffusion models (city96's ComfyUI-GGUF conversions) that are not a
/// family Headroom runs, so they must not be reported as language models.
const OTHER_DIFFUSION_ARCHS: &[&str] =
    &["flux", "sd3", "aura", "hyvid", "ltxv", "wan", "cosmos", "lumina2", "hidream", "chroma", "qwen_image"];

fn guess(id: &str, reason: impl Into<String>) -> FamilyGuess {
    FamilyGuess { id: id.to_string(), label: label(id), reason: reason.into() }
}

/// The family id for a UNet cross-attention context width, if it is one of the standard ones.
fn by_context_dim(dim: u64) -> Option<&'static str> {
    match dim {
        768 => Some("sd1"),
        1024 => Some("sd2"),
        2048 => Some("sdxl"),
        _ => None,
    }
}

/// Guesses the family of a model from its components and metadata.
pub(crate) fn family(format: Format, components: &[ComponentInfo], metadata: &BTreeMap<String, String>) -> FamilyGuess {
    let names = || components.iter().flat_map(|c| c.tensors.iter());
    let has_unet = components.iter().any(|c| c.component == Some(Component::Unet))
        || names().any(|t| t.name.contains("attn2.to_k"));
    if format == Format::Gguf
        && let Some(arch) = metadata.get("general.architecture")
    {
        if matches!(arch.as_str(), "sd1" | "sd2" | "sdxl") {
            return guess(arch, format!("general.architecture = {arch}"));
        }
        if OTHER_DIFFUSION_ARCHS.contains(&arch.as_str()) {
            return FamilyGuess {
                id: "unknown".into(),
                label: format!("Diffusion model ({arch})"),
                reason: format!("general.architecture = {arch}, a diffusion model family Headroom does not run"),
            };
        }
        if !has_unet {
            return guess(&format!("llm:{arch}"), format!("general.architecture = {arch}"));
        }
    }
    // a Hugging Face folder's config.json says what it is
    if metadata.iter().any(|(k, v)| k.ends_with("model_type") && v.as_str() == "musicgen") {
        return guess("musicgen", "config.json model_type = musicgen");
    }
    if let Some(class) = metadata.get("_class_name")
        && class.contains("XL")
    {
        return guess("sdxl", format!("model_index.json _class_name = {class}"));
    }
    // UNet cross-attention: to_k maps the text context (in-dim) to the attention width.
    let ctx = names().find(|t| t.name.ends_with("attn2.to_k.weight") && t.shape.len() == 2).map(|t| (t.name.clone(), t.shape[1]));
    if let Some((name, dim)) = &ctx
        && let Some(id) = by_context_dim(*dim)
    {
        return guess(id, format!("UNet cross-attention context width {dim} ({name})"));
    }
    if let Some(dim) = metadata.get("unet.cross_attention_dim").and_then(|d| d.parse().ok())
        && let Some(id) = by_context_dim(dim)
    {
        return guess(id, format!("unet/config.json cross_attention_dim = {dim}"));
    }
    if let Some(t) = names().find(|t| t.name.contains("add_embedding.") || t.name.contains("label_emb.")) {
        return guess("sdxl", format!("UNet has SDXL's extra conditioning embedding ({})", t.name));
    }
    if names().any(|t| t.name.starts_with("conditioner.embedders.")) {
        return guess("sdxl", "LDM keys conditioner.embedders.* (SDXL's two text encoders)");
    }
    if names().any(|t| t.name.starts_with("cond_stage_model.transformer.")) {
        return guess("sd1", "LDM keys cond_stage_model.transformer.* (OpenAI CLIP text encoder)");
    }
    if names().any(|t| t.name.starts_with("cond_stage_model.model.")) {
        return guess("sd2", "LDM keys cond_stage_model.model.* (OpenCLIP text encoder)");
    }
    if components.iter().any(|c| c.name == "text_encoder_2") {
        return guess("sdxl", "two text encoders (text_encoder_2), as SDXL has");
    }
    // A real-size text encoder's width: CLIP ViT-L (768) for 1.x, OpenCLIP ViT-H (1024) for 2.x.
    let text_width = metadata.get("text_encoder.hidden_size").and_then(|h| h.parse().ok()).or_else(|| {
        components
            .iter()
            .filter(|c| c.component == Some(Component::Text))
            .flat_map(|c| c.tensors.iter())
            .find(|t| t.name.ends_with("final_layer_norm.weight") || t.name.ends_with("ln_final.weight"))
            .and_then(|t| t.shape.first().copied())
    });
    match text_width {
        Some(768) => return guess("sd1", "text encoder width 768 (CLIP ViT-L, as SD 1.x)"),
        Some(1024) => return guess("sd2", "text encoder width 1024 (OpenCLIP ViT-H, as SD 2.x)"),
        _ => {}
    }
    match metadata.get("text_encoder.hidden_act").map(String::as_str) {
        Some("quick_gelu") if has_unet => {
            return guess("sd1", "text encoder uses quick_gelu (OpenAI CLIP, as SD 1.x)");
        }
        Some("gelu") if has_unet => return guess("sd2", "text encoder uses gelu (OpenCLIP, as SD 2.x)"),
        _ => {}
    }
    if has_unet {
        let why = match &ctx {
            Some((_, dim)) => format!("a latent-diffusion UNet with a non-standard context width {dim}"),
            None => "a latent-diffusion UNet, but nothing tells SD 1.x, 2.x and XL apart".into(),
        };
        return FamilyGuess { id: "unknown".into(), label: "Stable Diffusion-like (version unclear)".into(), reason: why };
    }
    if let Some(arch) = metadata.get("general.architecture") {
        return guess(&format!("llm:{arch}"), format!("general.architecture = {arch}"));
    }
    guess("unknown", "no UNet cross-attention, text-encoder prefix or architecture key found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{TensorInfo, components};

    fn comp(name: &str, tensors: &[(&str, &[u64])]) -> ComponentInfo {
        let t = tensors
            .iter()
            .map(|(n, s)| TensorInfo { name: n.to_string(), dtype: "F16".into(), shape: s.to_vec(), bytes: None })
            .collect();
        components::component(name, components::component_of(name), t)
    }

    /// The context width of attn2.to_k tells 1.x, 2.x and XL apart.
    #[test]
    fn context_width_decides() {
        for (dim, id) in [(768, "sd1"), (1024, "sd2"), (2048, "sdxl")] {
            let c = [comp("unet", &[("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", &[640, dim])])];
            let g = family(Format::Diffusers, &c, &BTreeMap::new());
            assert_eq!(g.id, id);
            assert!(g.reason.contains(&dim.to_string()), "{}", g.reason);
        }
    }

    /// LDM text-encoder prefixes decide when the context width is not a standard one.
    #[test]
    fn ldm_prefixes_decide() {
        let c = components::split(vec![
            TensorInfo { name: "model.diffusion_model.x.attn2.to_k.weight".into(), dtype: "F32".into(), shape: vec![8, 32], bytes: None },
            TensorInfo { name: "cond_stage_model.model.ln_final.weight".into(), dtype: "F32".into(), shape: vec![32], bytes: None },
        ]);
        assert_eq!(family(Format::Ckpt, &c, &BTreeMap::new()).id, "sd2");
    }

    /// Tiny models: SDXL's extra embedding, a second text encoder, or a standard text width decide.
    #[test]
    fn tiny_model_signals() {
        let none = BTreeMap::new();
        let unet = comp("unet", &[("add_embedding.linear_1.weight", &[32, 40]), ("mid_block.attn2.to_k.weight", &[8, 16])]);
        assert_eq!(family(Format::Diffusers, std::slice::from_ref(&unet), &none).id, "sdxl");
        let plain = comp("unet", &[("mid_block.attn2.to_k.weight", &[8, 16])]);
        let te2 = comp("text_encoder_2", &[("text_model.final_layer_norm.weight", &[16])]);
        assert_eq!(family(Format::Diffusers, &[plain.clone(), te2], &none).id, "sdxl");
        let te = comp("text_encoder", &[("text_model.final_layer_norm.weight", &[1024])]);
        assert_eq!(family(Format::Diffusers, &[plain.clone(), te], &none).id, "sd2");
        let g = family(Format::Diffusers, &[plain], &none);
        assert_eq!((g.id.as_str(), g.label.as_str()), ("unknown", "Stable Diffusion-like (version unclear)"));
    }

    /// A GGUF's architecture names an LLM unless its tensors are a UNet.
    #[test]
    fn gguf_architecture() {
        let mut m = BTreeMap::new();
        m.insert("general.architecture".to_string(), "llama".to_string());
        let c = [comp("model", &[("blk.0.attn_q.weight", &[32, 32])])];
        let g = family(Format::Gguf, &c, &m);
        assert_eq!((g.id.as_str(), g.label.as_str()), ("llm:llama", "Language model (llama)"));
        m.insert("general.architecture".to_string(), "sdxl".to_string());
        assert_eq!(family(Format::Gguf, &c, &m).id, "sdxl");
        m.insert("general.architecture".to_string(), "flux".to_string());
        assert_eq!(family(Format::Gguf, &c, &m).label, "Diffusion model (flux)");
        // A UNet in a GGUF with an unexpected architecture is judged by its tensors.
        m.insert("general.architecture".to_string(), "whatever".to_string());
        let unet = [comp("unet", &[("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", &[320, 768])])];
        assert_eq!(family(Format::Gguf, &unet, &m).id, "sd1");
    }
}
