//! Peak activation bytes of a latent-diffusion run, per stage, from a formula.
//!
//! The terms follow what the family allocates: the denoiser keeps every down-path output for its
//! skip connections, works on a few feature maps at a time, and at each attention level holds
//! Q/K/V and a block of scores: on the CPU each thread's kernel scratch (a score block or an
//! im2col tile, [`crate::nn::cpu::scratch_bytes_per_thread`]), elsewhere one block of at most
//! [`crate::nn::attention::DEVICE_BLOCK_SCORES`] (or `attention_slice` query rows per head) and
//! its softmax; the decoder's peak is at its highest resolution, where an upsampled wide feature
//! map meets a narrower output; tiled, a layer's input and output are held in full as tiles and
//! its temporaries one tile at a time (`vae_tiling`). Every term is held against
//! a measured peak by `headroom bench`, which prints planned against measured (target ±10%).

use crate::knobs::{DeviceKind, Precision};
use crate::request::Request;

use super::shape::ModelShape;

/// Bytes per activation element when weights are stored at `p` on `device`.
/// Quantized weights compute in f32, and so do f16 and bf16 on the CPU.
pub fn activation_elem_bytes(p: Precision, device: DeviceKind) -> u64 {
    match p.resolve(device) {
        Precision::F16 | Precision::Bf16 if device.is_gpu() => 2,
        _ => 4,
    }
}

/// Bytes of score blocks alive at once in one attention of `bh` heads, `lq` queries and `lk` keys
/// with slicing `slice` (0 = the engine's own block), on `device` at `elem` bytes: the CPU
/// kernel's are in its per-thread scratch (counted once per run, not here); elsewhere one block
/// of rows for every head, and its softmax.
fn score_block_bytes(bh: u64, lq: u64, lk: u64, slice: u32, device: DeviceKind, elem: u64) -> u64 {
    if !device.is_gpu() {
        return 0;
    }
    let cap = (crate::nn::attention::DEVICE_BLOCK_SCORES as u64 / (bh * lk).max(1)).max(1);
    let rows = if slice == 0 { cap } else { cap.min(slice as u64) }.min(lq);
    2 * bh * rows * lk * elem
}

/// Scratch the CPU kernels hold at once (one block per thread); 0 off the CPU.
pub fn kernel_scratch_bytes(device: DeviceKind) -> u64 {
    if device.is_gpu() { 0 } else { crate::nn::cpu::threads() as u64 * crate::nn::cpu::scratch_bytes_per_thread() }
}

/// Tokens of the text encoder's context.
const CONTEXT_TOKENS: u64 = 77;

/// Batch the denoiser sees: doubled by classifier-free guidance.
pub fn unet_batch(req: &Request) -> u64 {
    req.batch as u64 * if req.guidance > 1.0 { 2 } else { 1 }
}

/// Peak bytes of the text encoder stage (both prompts, all layers' working set).
pub fn text_bytes(shape: &ModelShape, req: &Request, elem: u64) -> u64 {
    let b = unet_batch(req);
    let heads = (shape.text_hidden / 64).max(1);
    b * (16 * CONTEXT_TOKENS * shape.text_hidden + 2 * heads * CONTEXT_TOKENS * CONTEXT_TOKENS) * elem
}

/// Peak bytes of one denoiser step on `device`.
pub fn unet_bytes(shape: &ModelShape, req: &Request, attention_slice: u32, device: DeviceKind, elem: u64) -> u64 {
    let u = &shape.unet;
    let b = unet_batch(req);
    let l0 = (req.width as u64 / 8).max(1) * (req.height as u64 / 8).max(1);
    let level_len = |i: usize| (l0 >> (2 * i)).max(1);
    // Skip connections: conv_in plus every resnet/downsample output on the way down.
    let skips: u64 = u
        .block_channels
        .iter()
        .enumerate()
        .map(|(i, &c)| (u.layers_per_block + 1) * c * level_len(i))
        .sum::<u64>()
        * b;
    // Working set per level: the resnet in the up path sees concatenated inputs (≈2C) and keeps
    // about four maps alive; attention levels add Q/K/V/out, GEGLU's 8C projection, and scores.
    let mut worst = 0u64;
    for (i, &c) in u.block_channels.iter().enumerate() {
        let l = level_len(i);
        let resnet = 6 * c * l * b * elem;
        let mut level = resnet;
        if u.attention_levels.get(i).copied().unwrap_or(false) {
            let heads = u.heads.get(i).copied().unwrap_or(8);
            let scores = score_block_bytes(b * heads, l, l, attention_slice, device, elem);
            let qkv = 4 * c * l * b * elem;
            let ff = 12 * c * l * b * elem;
            level = level.max(qkv + scores).max(ff);
        }
        worst = worst.max(level);
    }
    skips * elem + worst
}

/// Peak bytes of the decode stage (one image at a time), with tiling `vae_tile` latent pixels
/// (0 = off) and attention slicing.
pub fn vae_bytes(shape: &ModelShape, req: &Request, slicing: (u32, u32), device: DeviceKind, elem: u64) -> u64 {
    let (attention_slice, vae_tile) = slicing;
    let (lw, lh) = ((req.width as u64 / 8).max(1), (req.height as u64 / 8).max(1));
    let t = vae_tile as u64;
    let tiled = t > 0 && (t < lw || t < lh);
    let tile = t.min(lw) * t.min(lh);
    let chans = &shape.vae.block_channels;
    let n = chans.len().max(1);
    let latent = lw * lh;
    // Up path: level j runs at latent × 4^j pixels with channels chans[n-1-j]; its input is the
    // previous level's channels upsampled.
    let mut worst = 0u64;
    for j in 0..n {
        let pixels = latent << (2 * j);
        let c_out = chans[n - 1 - j];
        let c_in = if j == 0 { c_out } else { chans[n - j] };
        if !tiled {
            // a resnet holds its input, the input's norm and a conv output of c_out at once
            // (measured at SD 1.5's 512² top level: 0.80 GB for this term's 0.81 GB)
            worst = worst.max((2 * c_in + 2 * c_out) * pixels);
            continue;
        }
        // Tiled (`vae_tiling`): a resnet holds its input and its first convolution's output in
        // full as tiles, plus one tile's bordered input, its norm and the convolution's output.
        let tile_px = tile << (2 * j);
        let resnet = (c_in + c_out) * pixels + (3 * c_in + c_out) * tile_px;
        // The upsampler to the next level holds its input and its output (4× the pixels) in
        // full, plus one tile's bordered input, its upsampled, cropped and padded copies and
        // the convolution's output there.
        let up = if j + 1 < n { 5 * c_out * pixels + 17 * c_out * tile_px } else { 0 };
        worst = worst.max(resnet).max(up);
    }
    // Pasting the picture (3 channels at the top level) holds its tiles, a row of them pasted
    // and the whole: never the peak at real channel counts.
    if tiled {
        worst = worst.max(9 * (latent << (2 * (n - 1))));
    }
    // Mid-block attention: one head over all latent pixels (the mid block is never tiled).
    let c_mid = chans.last().copied().unwrap_or(512);
    let attn = 4 * c_mid * latent * elem + score_block_bytes(1, latent, latent, attention_slice, device, elem);
    (worst * elem).max(attn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::sd15;

    /// On a GPU, slicing attention shrinks the denoiser's peak, and the engine's own block caps
    /// the scores even unsliced; on the CPU the scores live in the kernels' per-thread scratch,
    /// so the step's peak is the feature maps alone and slicing does not move it.
    #[test]
    fn attention_scores_in_the_unet_peak() {
        let req = Request { width: 512, height: 512, ..Request::default() };
        let gpu = DeviceKind::Cuda(0);
        let full = unet_bytes(&sd15(), &req, 0, gpu, 2);
        let sliced = unet_bytes(&sd15(), &req, 256, gpu, 2);
        assert!(sliced * 2 < full, "{sliced} vs {full}");
        // 512², batch 2, 8 heads: one capped block is 2²⁷ scores and its softmax in f16 (512 MiB)
        assert!(full > 512 << 20 && full < 900 << 20, "{full}");
        let cpu = unet_bytes(&sd15(), &req, 0, DeviceKind::Cpu, 4);
        assert_eq!(cpu, unet_bytes(&sd15(), &req, 256, DeviceKind::Cpu, 4));
        assert!(cpu < 400 << 20, "{cpu}");
    }

    /// Tiling the decode lowers its peak: at SD 1.5's 1024² the whole decode's top level holds
    /// about four full maps (3.1 GB), the tiled one a resnet's input and first output as tiles plus
    /// one tile's temporaries (1.8 GB at 32, less at 16).
    #[test]
    fn vae_tile_lowers_decode_peak() {
        let req = Request { width: 1024, height: 1024, ..Request::default() };
        let plain = vae_bytes(&sd15(), &req, (0, 0), DeviceKind::Cpu, 4);
        let tiled = vae_bytes(&sd15(), &req, (0, 32), DeviceKind::Cpu, 4);
        let finer = vae_bytes(&sd15(), &req, (0, 16), DeviceKind::Cpu, 4);
        assert!(tiled * 10 < plain * 6, "{tiled} vs {plain}");
        assert!(finer < tiled && finer * 2 > tiled, "{finer} vs {tiled}");
        // Tiling an image no larger than the tile changes nothing.
        let small = Request { width: 256, height: 256, ..Request::default() };
        let cpu = DeviceKind::Cpu;
        assert_eq!(vae_bytes(&sd15(), &small, (0, 32), cpu, 4), vae_bytes(&sd15(), &small, (0, 0), cpu, 4));
    }
}
