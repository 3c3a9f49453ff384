//! Load-time checks of the UNet, VAE and CLIP configs: values the model code cannot build from
//! (zero norm groups, attention heads that do not divide the channels, empty sizes) are refused
//! with the field named, before any constructor divides by them.
//!
//! Kept apart from `unet.rs`, `vae.rs` and `clip.rs` so their model code is untouched; the
//! checks read only the configs' public fields.

use super::clip::ClipConfig;
use super::unet::{PerBlock, UnetConfig};
use super::vae::VaeConfig;

/// The value of a per-block field for block `i`, read as the UNet reads it (one value for
/// all, or one per block with the last repeated).
fn per_block(v: &PerBlock, i: usize) -> usize {
    match v {
        PerBlock::One(v) => *v,
        PerBlock::Each(v) => v.get(i).or(v.last()).copied().unwrap_or(1),
    }
}

/// Every entry of `channels` must be a positive multiple of `groups`, itself positive.
fn check_groups(groups: usize, channels: &[usize]) -> Result<(), String> {
    if groups == 0 {
        return Err("norm_num_groups = 0: group normalization needs at least one group".into());
    }
    if let Some((i, c)) = channels.iter().enumerate().find(|(_, c)| **c == 0 || **c % groups != 0) {
        return Err(format!(
            "norm_num_groups = {groups} does not divide block_out_channels[{i}] = {c} (each block's channels are split into that many groups)"
        ));
    }
    Ok(())
}

impl UnetConfig {
    /// Everything [`UnetConfig::check`] refuses, and sizes the model code would divide by zero
    /// or mis-shape with: zero channels, zero norm groups or groups that do not divide a block's
    /// channels, attention heads (`num_attention_heads`, else `attention_head_dim`) that are zero
    /// or do not divide the channels of a block with attention.
    ///
    /// # Errors
    /// The first problem, as a sentence naming the field.
    pub fn validate(&self) -> Result<(), String> {
        self.check()?;
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("cross_attention_dim", self.cross_attention_dim),
        ] {
            if v == 0 {
                return Err(format!("{field} = 0: must be at least 1"));
            }
        }
        check_groups(self.norm_num_groups, &self.block_out_channels)?;
        let n = self.block_out_channels.len();
        let (heads_field, heads) = match &self.num_attention_heads {
            Some(h) => ("num_attention_heads", h),
            None => ("attention_head_dim", &self.attention_head_dim),
        };
        // Blocks with attention: cross-attention down blocks, the mid block (last channels),
        // cross-attention up blocks (in reverse channel order).
        let down = self.down_block_types.iter().enumerate().filter(|(_, t)| t.starts_with("CrossAttn")).map(|(i, _)| i);
        let mid = self.mid_block_type.is_some().then(|| n.saturating_sub(1));
        let up = self
            .up_block_types
            .iter()
            .enumerate()
            .filter(|(_, t)| t.starts_with("CrossAttn"))
            .map(|(j, _)| n.saturating_sub(1 + j));
        for i in down.chain(mid).chain(up) {
            let (h, ch) = (per_block(heads, i), self.block_out_channels.get(i).copied().unwrap_or(0));
            if h == 0 || ch % h != 0 {
                return Err(format!(
                    "{heads_field} = {h} for block {i} does not divide its {ch} channels (block_out_channels[{i}]) into attention heads"
                ));
            }
        }
        Ok(())
    }
}

impl VaeConfig {
    /// Everything [`VaeConfig::check`] refuses, and zero channels, zero norm groups or groups
    /// that do not divide a block's channels.
    ///
    /// # Errors
    /// The first problem, as a sentence naming the field.
    pub fn validate(&self) -> Result<(), String> {
        self.check()?;
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if v == 0 {
                return Err(format!("{field} = 0: must be at least 1"));
            }
        }
        check_groups(self.norm_num_groups, &self.block_out_channels)?;
        if !(self.scaling_factor.is_finite() && self.scaling_factor != 0.0) {
            return Err(format!("scaling_factor = {}: must be a finite non-zero number", self.scaling_factor));
        }
        Ok(())
    }
}

impl ClipConfig {
    /// Zero sizes, and attention heads that are zero or do not divide `hidden_size`.
    ///
    /// # Errors
    /// The first problem, as a sentence naming the field.
    pub fn validate(&self) -> Result<(), String> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("{field} = 0: must be at least 1"));
            }
        }
        let (h, d) = (self.num_attention_heads, self.hidden_size);
        if h == 0 || d % h != 0 {
            return Err(format!("num_attention_heads = {h} does not divide hidden_size = {d} into attention heads"));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use crate::knobs::Knobs;

    /// Copies folder `from` into `to`, recursively.
    pub(crate) fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    /// Loading a folder whose UNet, VAE or text encoder config has zero norm groups or heads that
    /// do not divide the channels is a one-line error naming the config file and the field, not a
    /// panic ("internal error") or a tensor-shape message.
    #[test]
    fn bad_configs_name_the_file_and_field() {
        let fixture = super::super::parity_tests::fixture("tiny-sd1");
        for (component, field, value) in [
            ("unet", "norm_num_groups", 0),
            ("unet", "attention_head_dim", 5),
            ("vae", "norm_num_groups", 0),
            ("vae", "norm_num_groups", 3),
            ("text_encoder", "num_attention_heads", 0),
            ("text_encoder", "num_attention_heads", 5),
        ] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(&fixture, dir.path());
            let cfg_path = dir.path().join(component).join("config.json");
            let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
            cfg[field] = value.into();
            std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
            let result = std::panic::catch_unwind(|| super::super::load(dir.path(), &Knobs::default()).map(|_| ()));
            let e = result.unwrap_or_else(|_| panic!("{component}.{field} = {value}: the loader panicked")).unwrap_err().to_string();
            let wanted = format!("{field} = {value}");
            assert!(
                e.contains(&format!("{component}/config.json")) && e.contains(&wanted) && !e.contains('\n'),
                "{component}.{field} = {value}: {e}"
            );
        }
    }
}
