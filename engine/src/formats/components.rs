//! Splitting one file's tensors into components by key prefix: LDM checkpoints
//! (`model.diffusion_model.*` → unet, `first_stage_model.*` → vae, `cond_stage_model.*` /
//! `conditioner.*` → text encoder), diffusers-style prefixes (`unet.*`, `vae.*`, `text_encoder.*`),
//! or, for a file holding one component, its key signature; else one component `model`.

use super::{ComponentInfo, TensorInfo};
use crate::knobs::Component;

/// Key prefixes that name a component, most specific first.
const PREFIXES: &[(&str, &str, Option<Component>)] = &[
    ("model.diffusion_model.", "unet", Some(Component::Unet)),
    ("first_stage_model.", "vae", Some(Component::Vae)),
    ("cond_stage_model.", "text_encoder", Some(Component::Text)),
    ("conditioner.embedders.0.", "text_encoder", Some(Component::Text)),
    ("conditioner.embedders.1.", "text_encoder_2", Some(Component::Text)),
    ("conditioner.", "text_encoder", Some(Component::Text)),
    ("unet.", "unet", Some(Component::Unet)),
    ("vae.", "vae", Some(Component::Vae)),
    ("text_encoder_2.", "text_encoder_2", Some(Component::Text)),
    ("text_encoder.", "text_encoder", Some(Component::Text)),
];

/// The knob component a component (folder or prefix) name stands for.
pub(crate) fn component_of(name: &str) -> Option<Component> {
    match name {
        "unet" | "transformer" | "prior" | "decoder" => Some(Component::Unet),
        "vae" => Some(Component::Vae),
        n if n.starts_with("text_encoder") => Some(Component::Text),
        _ => None,
    }
}

/// Builds a component from its tensors.
pub(crate) fn component(name: &str, comp: Option<Component>, tensors: Vec<TensorInfo>) -> ComponentInfo {
    let parameters = tensors.iter().map(TensorInfo::elements).fold(0u64, u64::saturating_add);
    ComponentInfo { name: name.to_string(), component: comp, parameters, tensors }
}

/// What a file holding a single component looks like, from its key names.
fn whole_file_guess(tensors: &[TensorInfo]) -> (&'static str, Option<Component>) {
    let any = |p: &dyn Fn(&str) -> bool| tensors.iter().any(|t| p(&t.name));
    if any(&|n| n.starts_with("text_model.") || n.starts_with("transformer.text_model.")) {
        ("text_encoder", Some(Component::Text))
    } else if any(&|n| n.starts_with("time_embedding.") || n.starts_with("time_embed.")) {
        ("unet", Some(Component::Unet))
    } else if any(&|n| n.starts_with("decoder.")) && any(&|n| n.starts_with("encoder.")) && any(&|n| n.contains("quant_conv")) {
        ("vae", Some(Component::Vae))
    } else {
        ("model", None)
    }
}

/// Splits a flat tensor list into components; tensors no prefix claims go to `other` when some
/// prefix matched, or everything forms one component when none did.
pub(crate) fn split(tensors: Vec<TensorInfo>) -> Vec<ComponentInfo> {
    let mut groups: Vec<(&str, Option<Component>, Vec<TensorInfo>)> = Vec::new();
    let mut other = Vec::new();
    for t in tensors {
        match PREFIXES.iter().find(|(p, _, _)| t.name.starts_with(p)) {
            Some(&(_, name, comp)) => match groups.iter_mut().find(|g| g.0 == name) {
                Some(g) => g.2.push(t),
                None => groups.push((name, comp, vec![t])),
            },
            None => other.push(t),
        }
    }
    if groups.is_empty() {
        if other.is_empty() {
            return Vec::new();
        }
        let (name, comp) = whole_file_guess(&other);
        return vec![component(name, comp, other)];
    }
    let rank = |c: Option<Component>| c.map_or(3, |c| Component::ALL.iter().position(|&x| x == c).unwrap_or(3));
    groups.sort_by(|a, b| (rank(a.1), a.0).cmp(&(rank(b.1), b.0)));
    let mut out: Vec<ComponentInfo> = groups.into_iter().map(|(n, c, t)| component(n, c, t)).collect();
    if !other.is_empty() {
        out.push(component("other", None, other));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TensorInfo {
        TensorInfo { name: name.into(), dtype: "F32".into(), shape: vec![2, 3], bytes: Some(24) }
    }

    /// LDM prefixes go to unet/vae/text, leftovers to `other`, in pipeline order.
    #[test]
    fn ldm_keys_split_by_prefix() {
        let c = split(vec![
            t("model.diffusion_model.input_blocks.0.0.weight"),
            t("first_stage_model.decoder.conv_in.weight"),
            t("cond_stage_model.transformer.text_model.final_layer_norm.weight"),
            t("betas"),
        ]);
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["text_encoder", "unet", "vae", "other"]);
        assert_eq!(c[1].component, Some(Component::Unet));
        assert_eq!(c[1].parameters, 6);
        assert_eq!(c[3].component, None);
    }

    /// A file of diffusers UNet keys is one `unet` component; unknown keys are one `model`.
    #[test]
    fn single_component_files() {
        let c = split(vec![t("time_embedding.linear_1.weight"), t("conv_in.weight")]);
        assert_eq!((c.len(), c[0].name.as_str()), (1, "unet"));
        let c = split(vec![t("blk.0.attn_q.weight")]);
        assert_eq!((c[0].name.as_str(), c[0].component), ("model", None));
    }
}
