#!/usr/bin/env python3
"""Builds a tiny random-weight Stable Diffusion XL pipeline and reference tensors.

Writes tests/fixtures/sdxl/tiny-sdxl/ in the diffusers folder layout of SDXL base: two text
encoders (`text_encoder`: CLIPTextModel with quick_gelu as CLIP ViT-L, `text_encoder_2`:
CLIPTextModelWithProjection with gelu as OpenCLIP ViT-bigG; one attention head each, what a
single file's shapes imply at these widths), every weight an f16 value held in f32, two
tokenizers (`tokenizer/` as vocab.json + merges.txt padded with the end token; `tokenizer_2/` as
tokenizer.json + tokenizer_config.json padded with "!", as SDXL's second tokenizer is), a UNet
with SDXL's conditioning (`addition_embed_type = "text_time"`, no attention at the first level,
`transformer_layers_per_block` per level with depth 2 at the middle one, linear projections, context =
both encoders' widths concatenated), an AutoencoderKL with SDXL's `scaling_factor` 0.13025 and
`force_upcast`, SDXL's EulerDiscreteScheduler config, and `force_zeros_for_empty_prompt` true in
model_index.json. The CLIP vocabulary is the small real BPE one `make_sd_fixtures.py` makes.

Beside it, `refs.safetensors` holds what the engine's parity tests compare against: token ids of
both tokenizers, `encode_prompt`'s outputs (both encoders' penultimate hidden states
concatenated, the pooled projection) for the prompt, for a negative prompt and for no negative
prompt (zeros), one UNet forward with `text_embeds`/`time_ids`, one VAE decode, and final
images (f32, 64×64, 4 steps, guidance 5, no negative prompt) for DDIM, Euler, Euler ancestral
and DPM++ 2M drawn by diffusers itself from `torch.Generator("cpu").manual_seed(42)`, plus
Euler with the negative prompt.

Then tools/make_sdxl_single_fixture.py writes the same weights as one LDM-layout single file,
tests/fixtures/sdxl/tiny-sdxl.safetensors.

Run: HF_HUB_OFFLINE=1 /work/venv/bin/python tools/make_sdxl_fixtures.py   (no network needed)
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
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sd_fixtures import make_vocab, write_tokenizer_configs  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sdxl")
PROMPT = "a photo of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"
SEED = 42
STEPS = 4
SIZE = 64
GUIDANCE = 5.0


def text_config(vocab_size, hidden, layers, pad_id, act):
    # one head: what a single file's shapes imply for widths under 64 (CLIP's heads are 64 wide),
    # so that tiny-sdxl.safetensors (tools/make_sdxl_single_fixture.py) is the same model
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=1,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=32,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=pad_id,
    )


def build(name):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    tok_dir = os.path.join(out, "tokenizer")
    tok2_dir = os.path.join(out, "tokenizer_2")
    vocab_size = make_vocab(tok_dir)
    write_tokenizer_configs(tok_dir, "<|endoftext|>")
    tokenizer = CLIPTokenizer(
        vocab=os.path.join(tok_dir, "vocab.json"), merges=os.path.join(tok_dir, "merges.txt"), pad_token="<|endoftext|>"
    )
    tokenizer.model_max_length = 77
    tokenizer_2 = CLIPTokenizer(
        vocab=os.path.join(tok_dir, "vocab.json"), merges=os.path.join(tok_dir, "merges.txt"), pad_token="!"
    )
    tokenizer_2.model_max_length = 77

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(text_config(vocab_size, 32, 2, vocab_size - 1, "quick_gelu")).eval()
    text_encoder_2 = CLIPTextModelWithProjection(text_config(vocab_size, 48, 2, 0, "gelu")).eval()
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 1),
        attention_head_dim=(2, 2, 4),
        cross_attention_dim=32 + 48,
        use_linear_projection=True,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    ).eval()
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SIZE,
        scaling_factor=0.13025,
        force_upcast=True,
    ).eval()
    # Random init leaves some norms at identity; perturb every parameter a little so each one matters.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in (text_encoder, text_encoder_2, unet, vae):
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
                # f16 values kept in f32: the single file stores f16 as released SDXL files do,
                # and loads back to these exact values
                p.copy_(p.half().float())

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
        use_karras_sigmas=False,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # tokenizer/: the hub layout (vocab.json + merges.txt + configs); tokenizer_2/: tokenizer.json
    # and tokenizer_config.json alone
    for extra in ("tokenizer.json",):
        p = os.path.join(tok_dir, extra)
        if os.path.exists(p):
            os.remove(p)
    make_vocab(tok_dir)
    write_tokenizer_configs(tok_dir, "<|endoftext|>")
    assert os.path.exists(os.path.join(tok2_dir, "tokenizer.json")), os.listdir(tok2_dir)
    for extra in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        p = os.path.join(tok2_dir, extra)
        if os.path.exists(p):
            os.remove(p)
    with open(os.path.join(out, "model_index.json")) as f:
        assert json.load(f)["force_zeros_for_empty_prompt"] is True
    # SDXL base's scheduler_config.json also says these (DDIM made from it then does not clip)
    sched_path = os.path.join(out, "scheduler", "scheduler_config.json")
    with open(sched_path) as f:
        sched = json.load(f)
    sched.update(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0)
    with open(sched_path, "w") as f:
        json.dump(sched, f, indent=2, sort_keys=True)

    # everything below runs on the pipeline as loaded back from the folder, as a user would
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer_2.pad_token == "!"
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.vae.config.force_upcast

    refs = {}
    with torch.no_grad():
        for key, text in (("prompt", PROMPT), ("negative", NEGATIVE), ("empty", "")):
            for suffix, tok in (("", pipe.tokenizer), ("_2", pipe.tokenizer_2)):
                ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
                refs[f"ids{suffix}_{key}"] = ids.to(torch.int64)
        emb, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True,
                                                          negative_prompt=NEGATIVE)
        refs.update(emb_prompt=emb, pooled_prompt=pooled, emb_negative=neg, pooled_negative=neg_pooled)
        _, zero, _, zero_pooled = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True)
        assert zero.abs().max() == 0 and zero_pooled.abs().max() == 0
        refs.update(emb_no_negative=zero, pooled_no_negative=zero_pooled)
        # the per-encoder pieces, for a failing test to say which one drifted
        out1 = pipe.text_encoder(refs["ids_prompt"], output_hidden_states=True)
        refs["emb_prompt_1"] = out1.hidden_states[-2]
        out2 = pipe.text_encoder_2(refs["ids_2_prompt"], output_hidden_states=True)
        refs["emb_prompt_2"] = out2.hidden_states[-2]

        g = torch.Generator().manual_seed(7)
        lat = SIZE // 4
        x = torch.randn((2, 4, lat, lat), generator=g)
        ctx = torch.cat([neg, emb])
        text_embeds = torch.cat([neg_pooled, pooled])
        time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)
        refs.update(unet_in=x, unet_t=torch.tensor([500.0]), unet_text_embeds=text_embeds,
                    unet_time_ids=time_ids)
        refs["unet_out"] = pipe.unet(x, 500, encoder_hidden_states=ctx,
                                     added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
        z = torch.randn((1, 4, lat, lat), generator=g)
        refs["vae_in"] = z
        refs["vae_out"] = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample

    shape = (1, 4, SIZE // 4, SIZE // 4)
    refs["latents"] = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(SEED))
    runs = {
        "ddim": (DDIMScheduler, {}),
        "euler": (EulerDiscreteScheduler, {}),
        "euler_a": (EulerAncestralDiscreteScheduler, {}),
        "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    }
    base_cfg = dict(pipe.scheduler.config)
    for key, (cls, extra) in runs.items():
        pipe.scheduler = cls.from_config(base_cfg, **extra)
        img = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
        refs[f"image_{key}"] = torch.from_numpy(np.ascontiguousarray(img))
        refs[f"timesteps_{key}"] = pipe.scheduler.timesteps.to(torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(base_cfg)
    img = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE,
               width=SIZE, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    refs["image_euler_negative"] = torch.from_numpy(np.ascontiguousarray(img))
    refs = {k: v.contiguous() for k, v in refs.items()}
    save_file(refs, os.path.join(out, "refs.safetensors"))
    with open(os.path.join(out, "refs.json"), "w") as f:
        json.dump({"prompt": PROMPT, "negative": NEGATIVE, "seed": SEED, "steps": STEPS, "size": SIZE,
                   "guidance": GUIDANCE}, f, indent=2)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"{name}: {total / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    build("tiny-sdxl")
    from make_sdxl_single_fixture import main as single  # noqa: E402

    single()
