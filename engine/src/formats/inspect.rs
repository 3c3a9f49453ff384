//! Summaries of an [`Inspection`]: parameter counts, the dtype histogram, and the bytes the
//! weights would take at each precision, counted the way llama.cpp and our loaders store them:
//! integer tensors keep their stored size, float ones follow [`Precision::for_tensor`] (1-D
//! tensors f32 under quantized types, embedding tables f16, rows that are not whole blocks fall
//! back to a type that fits, or f16).

use std::collections::BTreeMap;

use super::{Inspection, TensorInfo};
use crate::knobs::{Component, Precision};

/// True for dtypes that hold integers or booleans (ids, masks), which are never converted.
fn is_integer(dtype: &str) -> bool {
    matches!(dtype, "I8" | "I16" | "I32" | "I64" | "U8" | "U16" | "U32" | "U64" | "BOOL")
}

/// Bytes one tensor takes when its component is stored at precision `p`: integer tensors keep
/// their stored size, float ones take the type [`Precision::for_tensor`] picks for them (the rule
/// the loaders follow, so a plan predicts what is really resident).
pub fn tensor_bytes_at(t: &TensorInfo, p: Precision) -> u64 {
    let elements = t.elements();
    if is_integer(&t.dtype) {
        return t.bytes.unwrap_or(elements);
    }
    let (n, b) = p.for_tensor(&t.name, &t.shape).block();
    elements.div_ceil(n).saturating_mul(b)
}

impl Inspection {
    /// Every tensor of every component.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.components.iter().flat_map(|c| c.tensors.iter())
    }

    /// Total elements of all tensors.
    pub fn parameters(&self) -> u64 {
        self.components.iter().map(|c| c.parameters).fold(0, u64::saturating_add)
    }

    /// Bytes stored in the files for all tensors whose size is known.
    pub fn stored_bytes(&self) -> u64 {
        self.tensors().filter_map(|t| t.bytes).fold(0, u64::saturating_add)
    }

    /// Bytes stored in the files per stored type (GGML type names for a GGUF, dtype names for
    /// safetensors and checkpoints): the model as it is on disk, before any precision knob.
    /// Tensors of a type whose size is unknown (`unknown(N)`) are not counted here or in
    /// [`Inspection::stored_bytes`]; [`Inspection::uncounted_tensors`] says how many there are.
    pub fn stored_bytes_by_type(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for t in self.tensors() {
            if let Some(b) = t.bytes {
                let n = by.entry(t.dtype.clone()).or_insert(0u64);
                *n = n.saturating_add(b);
            }
        }
        by
    }

    /// How many tensors have a type whose stored size is unknown (left out of the stored bytes).
    pub fn uncounted_tensors(&self) -> usize {
        self.tensors().filter(|t| t.bytes.is_none()).count()
    }

    /// Parameter count per stored dtype (`F32`, `Q4_K`, `unknown(N)` …).
    pub fn dtype_histogram(&self) -> BTreeMap<String, u64> {
        let mut h = BTreeMap::new();
        for t in self.tensors() {
            let n = h.entry(t.dtype.clone()).or_insert(0u64);
            *n = n.saturating_add(t.elements());
        }
        h
    }

    /// Bytes the whole model's weights take at each concrete precision, keyed by precision name
    /// (`f32`, `f16`, `bf16`, `q8_0`, `q6k`, `q5k`, `q4k`, `q4_0`).
    pub fn bytes_by_precision(&self) -> BTreeMap<String, u64> {
        Precision::CONCRETE
            .iter()
            .map(|&p| (p.name().to_string(), self.tensors().map(|t| tensor_bytes_at(t, p)).fold(0, u64::saturating_add)))
            .collect()
    }

    /// Bytes one component's weights take at precision `p` (`auto` counts as f32); 0 if the model
    /// has no such component.
    pub fn component_bytes(&self, c: Component, p: Precision) -> u64 {
        self.components
            .iter()
            .filter(|ci| ci.component == Some(c))
            .flat_map(|ci| ci.tensors.iter())
            .map(|t| tensor_bytes_at(t, p))
            .fold(0, u64::saturating_add)
    }

    /// The `n` largest tensors by stored bytes (then by elements), largest first.
    pub fn largest(&self, n: usize) -> Vec<&TensorInfo> {
        let mut all: Vec<&TensorInfo> = self.tensors().collect();
        all.sort_by_key(|t| std::cmp::Reverse((t.bytes.unwrap_or(0), t.elements())));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{FamilyGuess, Format, components};

    fn t(name: &str, dtype: &str, shape: &[u64]) -> TensorInfo {
        TensorInfo { name: name.into(), dtype: dtype.into(), shape: shape.to_vec(), bytes: Some(0) }
    }

    fn sample() -> Inspection {
        let comps = components::split(vec![
            t("model.diffusion_model.w", "F32", &[4, 256]),
            t("model.diffusion_model.b", "F32", &[4]),
            t("first_stage_model.w", "F16", &[3, 320]),
            t("cond_stage_model.transformer.position_ids", "I64", &[1, 77]),
        ]);
        Inspection {
            path: "x".into(),
            format: Format::Safetensors,
            family: FamilyGuess { id: "unknown".into(), label: String::new(), reason: String::new() },
            components: comps,
            metadata: BTreeMap::new(),
            warnings: Vec::new(),
            files: Vec::new(),
        }
    }

    /// 1-D tensors stay f32 under quantization, rows fall back per tensor, integer tensors keep
    /// their size.
    #[test]
    fn bytes_follow_the_storage_rules() {
        let mut i = sample();
        i.components[0].tensors[0].bytes = Some(616);
        let unet_q4k = 4 * 144 + 4 * 4; // 4 rows of one Q4_K block, plus the f32 bias
        assert_eq!(i.component_bytes(Component::Unet, Precision::Q4K), unet_q4k);
        assert_eq!(i.component_bytes(Component::Unet, Precision::F16), 1024 * 2 + 4 * 2);
        // 320-element rows are not whole q4k blocks: q4_0 (32 per 18 bytes) instead
        assert_eq!(i.component_bytes(Component::Vae, Precision::Q4K), 960 / 32 * 18);
        let by = i.bytes_by_precision();
        assert_eq!(by.len(), 8);
        assert_eq!(by["q4k"], unet_q4k + 960 / 32 * 18 + 616);
        assert_eq!(by["f32"], 1028 * 4 + 960 * 4 + 616);
    }

    /// Parameters, histogram and largest agree with the tensors.
    #[test]
    fn counts_and_largest() {
        let mut i = sample();
        i.components[1].tensors[0].bytes = Some(9999);
        assert_eq!(i.parameters(), 1024 + 4 + 960 + 77);
        assert_eq!(i.dtype_histogram()["F32"], 1028);
        assert_eq!(i.largest(1)[0].name, "model.diffusion_model.w");
        assert_eq!(i.largest(10).len(), 4);
        i.components.retain(|c| c.component != Some(Component::Text));
        assert_eq!(i.component_bytes(Component::Text, Precision::F32), 0);
    }
}
