#!/usr/bin/env python3
"""Builds tiny random-weight Stable Diffusion 1-style and 2-style pipelines and reference tensors.

Writes tests/fixtures/sd/tiny-sd1/ and tiny-sd2/ in the diffusers folder layout (safetensors,
config.json per component, a CLIP BPE vocabulary made here) and, inside each folder,
`refs.safetensors` with the reference outputs the engine's parity tests compare against:
token ids, text embeddings, one UNet forward, one VAE decode, and final images for DDIM, Euler,
Euler ancestral and DPM++ 2M (Karras) at 4 steps, guidance 7.5, seed 42 (CPU generator).

Run: /work/venv/bin/python tools/make_sd_fixtures.py   (no network needed)

`--batch-refs` instead loads the committed tiny-sd1 folder as it is and writes only
`refs_batch.safetensors` beside it: batches of two at 4 steps, guidance 7.5, seed 42, drawn by
diffusers itself (no latents passed in) for Euler and Euler ancestral, once with one CPU generator
(`image_<key>_b2`: diffusers draws randn((2, 4, h, w)) for the whole batch, the request's
`noise = "batch"`) and once with a list of generators seeded 42 and 43 (`image_<key>_b2_per_image`:
one per image, `noise = "per-image"`, as A1111 seeds seed + i).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sd")
PROMPT = "a photo of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"
WORDS = (
    "a photo of an astronaut riding horse on the moon red cat dog painting blurry low quality "
    "in style city at night portrait"
).split()
SEED = 42
STEPS = 4
SIZE = 32


def bytes_to_unicode():
    """CLIP's (GPT-2's) reversible byte → printable character table, in its order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_vocab(dst):
    """A small real CLIP BPE vocabulary: all bytes, bytes+</w>, merges spelling WORDS, specials."""
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for w in WORDS:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            merged = parts[0] + parts[1]
            if f"{pair[0]} {pair[1]}" not in merges:
                merges.append(f"{pair[0]} {pair[1]}")
            if merged not in vocab:
                vocab.append(merged)
            parts = [merged] + parts[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(vocab)}
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(ids, f, ensure_ascii=False)
    with open(os.path.join(dst, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def write_tokenizer_configs(dst, pad):
    """tokenizer_config.json and special_tokens_map.json as the SD 1.x / 2.x hub folders have them."""
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad,
        "unk_token": "<|endoftext|>",
    }
    cfg = dict(special, model_max_length=77, do_lower_case=True, tokenizer_class="CLIPTokenizer")
    with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(dst, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)


def build(name, sd2):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    tok_dir = os.path.join(out, "tokenizer")
    vocab_size = make_vocab(tok_dir)
    pad = "!" if sd2 else "<|endoftext|>"
    write_tokenizer_configs(tok_dir, pad)
    tokenizer = CLIPTokenizer(
        vocab=os.path.join(tok_dir, "vocab.json"), merges=os.path.join(tok_dir, "merges.txt"), pad_token=pad
    )
    tokenizer.model_max_length = 77

    torch.manual_seed(0)
    text_cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3 if sd2 else 2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu" if sd2 else "quick_gelu",
        projection_dim=32,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=0 if sd2 else vocab_size - 1,
    )
    text_encoder = CLIPTextModel(text_cfg).eval()
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32) if sd2 else (32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 4,
        use_linear_projection=sd2,
        norm_num_groups=8 if sd2 else 32,
        upcast_attention=sd2,
    ).eval()
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=SIZE,
    ).eval()
    # Random init leaves some norms at identity; perturb every parameter a little so each one matters.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in (text_encoder, unet, vae):
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)

    pred = "v_prediction" if sd2 else "epsilon"
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  prediction_type=pred, steps_offset=1)
    if sd2:
        scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common)
    else:
        scheduler = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **common)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # keep the hub layout for the tokenizer: vocab.json + merges.txt + configs, as written above
    for extra in ("tokenizer.json",):
        p = os.path.join(tok_dir, extra)
        if os.path.exists(p):
            os.remove(p)
    make_vocab(tok_dir)
    write_tokenizer_configs(tok_dir, pad)
    if not sd2:
        # SD 1.x hub folders predate `timestep_spacing`: each scheduler then uses its own default
        sp = os.path.join(out, "scheduler", "scheduler_config.json")
        with open(sp) as f:
            sc = json.load(f)
        del sc["timestep_spacing"]
        with open(sp, "w") as f:
            json.dump(sc, f, indent=2)
    # everything below runs on the pipeline as loaded back from the folder, as a user would
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    assert tokenizer.pad_token == pad, tokenizer.pad_token

    refs = {}
    with torch.no_grad():
        long_prompt = " ".join(["a red cat"] * 40)
        for key, text in (("prompt", PROMPT), ("negative", NEGATIVE), ("empty", ""), ("long", long_prompt)):
            ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            refs[f"ids_{key}"] = ids.to(torch.int64)
        emb = text_encoder(refs["ids_prompt"])[0]
        refs["emb_prompt"] = emb
        refs["emb_negative"] = text_encoder(refs["ids_negative"])[0]
        # clip skip 1: the penultimate layer through the final layer norm (diffusers' clip_skip=1)
        hs = text_encoder(refs["ids_prompt"], output_hidden_states=True).hidden_states[-2]
        refs["emb_prompt_skip1"] = text_encoder.final_layer_norm(hs)

        g = torch.Generator().manual_seed(7)
        x = torch.randn((2, 4, SIZE // 2, SIZE // 2), generator=g)
        ctx = torch.cat([refs["emb_negative"], emb])
        refs["unet_in"] = x
        refs["unet_t"] = torch.tensor([500.0])
        refs["unet_out"] = unet(x, 500, encoder_hidden_states=ctx).sample
        z = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=g)
        refs["vae_in"] = z
        refs["vae_out"] = vae.decode(z / vae.config.scaling_factor).sample
        # tiled decode as diffusers does it, with tiles of 8 latent pixels (the vae_tile knob = 8)
        vae.enable_tiling()
        vae.tile_latent_min_size = 8
        vae.tile_sample_min_size = 8 * (2 ** (len(vae.config.block_out_channels) - 1))
        vae.tile_overlap_factor = 0.25
        refs["vae_tiled_out"] = vae.decode(z / vae.config.scaling_factor).sample
        vae.disable_tiling()
        img = torch.rand((1, 3, SIZE, SIZE), generator=g) * 2 - 1
        refs["vae_enc_in"] = img
        refs["vae_enc_mean"] = vae.encode(img).latent_dist.mean

    shape = (1, 4, SIZE // 2, SIZE // 2)
    gen = torch.Generator().manual_seed(SEED)
    latents = torch.randn(shape, generator=gen)
    refs["latents"] = latents
    noises = [torch.randn(shape, generator=gen) for _ in range(STEPS)]
    refs["step_noise"] = torch.stack(noises)
    runs = {
        "ddim": (DDIMScheduler, {}),
        "euler": (EulerDiscreteScheduler, {}),
        "euler_a": (EulerAncestralDiscreteScheduler, {}),
        "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
        "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    }
    base_cfg = dict(pipe.scheduler.config)
    for key, (cls, extra) in runs.items():
        pipe.scheduler = cls.from_config(base_cfg, **extra)
        gen = torch.Generator().manual_seed(SEED)
        torch.randn(shape, generator=gen)  # the latents above came first from this stream
        img = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5,
                   height=SIZE, width=SIZE, latents=latents.clone(), generator=gen, output_type="np").images
        refs[f"image_{key}"] = torch.from_numpy(np.ascontiguousarray(img))
        refs[f"timesteps_{key}"] = pipe.scheduler.timesteps.to(torch.float32)
    refs = {k: v.contiguous() for k, v in refs.items()}
    save_file(refs, os.path.join(out, "refs.safetensors"))
    with open(os.path.join(out, "refs.json"), "w") as f:
        json.dump({"prompt": PROMPT, "negative": NEGATIVE, "seed": SEED, "steps": STEPS, "size": SIZE,
                   "guidance": 7.5, "long_prompt": long_prompt}, f, indent=2)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"{name}: {total / 1e6:.2f} MB", file=sys.stderr)


def batch_refs(name):
    out = os.path.join(ROOT, name)
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    base_cfg = dict(pipe.scheduler.config)
    refs = {}
    for key, cls in (("euler", EulerDiscreteScheduler), ("euler_a", EulerAncestralDiscreteScheduler)):
        pipe.scheduler = cls.from_config(base_cfg)
        for suffix, generator in (
            ("b2", torch.Generator().manual_seed(SEED)),
            ("b2_per_image", [torch.Generator().manual_seed(SEED + i) for i in range(2)]),
        ):
            img = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5,
                       height=SIZE, width=SIZE, num_images_per_prompt=2, generator=generator,
                       output_type="np").images
            refs[f"image_{key}_{suffix}"] = torch.from_numpy(np.ascontiguousarray(img)).contiguous()
    save_file(refs, os.path.join(out, "refs_batch.safetensors"))
    print(f"{name}: refs_batch.safetensors", file=sys.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:] == ["--batch-refs"]:
        batch_refs("tiny-sd1")
    else:
        build("tiny-sd1", sd2=False)
        build("tiny-sd2", sd2=True)
