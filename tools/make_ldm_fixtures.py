#!/usr/bin/env python3
"""Builds tiny random-weight SD 1-style and SD 2-style checkpoints in the original single-file LDM
layout, and reference tensors computed by diffusers after *its own* single-file conversion.

Writes tests/fixtures/sd/ldm/:
  tiny-ldm1.safetensors            SD 1.x layout (cond_stage_model.transformer.*), f16 weights
  tiny-ldm2.ckpt + tiny-ldm2.yaml  SD 2.x layout (OpenCLIP cond_stage_model.model.*, fused q/k/v,
                                   one extra text layer SD 2 skips), torch zip, f16; the yaml holds
                                   what shapes cannot tell (heads, v-prediction) as SD 2's does
  tiny-ldm{1,2}.refs.safetensors   token ids, embeddings, one UNet forward, one VAE decode,
                                   DDIM and Euler images (4 steps, guidance 7.5, seed 42)

The checkpoints use the real CLIP vocabulary from assets/clip (as single files have no tokenizer),
so the text encoder's token table has 49408 rows; its width is 8 to keep the files small.

The LDM files are written by this script's diffusers → LDM renaming; the references come from
pipelines rebuilt with diffusers' converters (`diffusers.loaders.single_file_utils`) from those
files, so the renaming is checked against diffusers' and the Rust loader is held to diffusers'.

Also tiny-sd1-text_encoder-pytorch_model.bin: tiny-sd1's text encoder as a torch zip `.bin`.

Run: /work/venv/bin/python tools/make_ldm_fixtures.py [bin]   (no network needed; `bin`: only the .bin)
"""
import os
import sys

# torchaudio is not used here, and one built for another torch breaks transformers' imports
sys.modules.setdefault("torchaudio", None)

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(REPO, "tests", "fixtures", "sd", "ldm")
VOCAB = os.path.join(REPO, "assets", "clip")
PROMPT = "a photo of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"
SEED = 42
STEPS = 4
SIZE = 32
WIDTH = 8  # text encoder width


def perturb(*modules):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)


def unet_to_ldm(sd, layers, attn_levels, levels):
    """diffusers UNet names → LDM names (the inverse of diffusers' convert_ldm_unet_checkpoint)."""
    res = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]

    def resnet(rest):
        for a, b in res:
            if rest.startswith(a + "."):
                return b + rest[len(a):]
        return rest

    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if k.startswith("time_embedding.linear_1."):
            n = "time_embed.0." + p[-1]
        elif k.startswith("time_embedding.linear_2."):
            n = "time_embed.2." + p[-1]
        elif k.startswith("conv_in."):
            n = "input_blocks.0.0." + p[-1]
        elif k.startswith("conv_norm_out."):
            n = "out.0." + p[-1]
        elif k.startswith("conv_out."):
            n = "out.2." + p[-1]
        elif k.startswith("down_blocks."):
            b, kind = int(p[1]), p[2]
            rest = ".".join(p[4:])
            if kind == "downsamplers":
                n = f"input_blocks.{1 + b * (layers + 1) + layers}.0.op.{p[-1]}"
            else:
                j = int(p[3])
                i = 1 + b * (layers + 1) + j
                n = f"input_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
        elif k.startswith("mid_block."):
            kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
            n = f"middle_block.1.{rest}" if kind == "attentions" else f"middle_block.{2 * j}.{resnet(rest)}"
        elif k.startswith("up_blocks."):
            b, kind = int(p[1]), p[2]
            if kind == "upsamplers":
                i = b * (layers + 1) + layers  # the up block's last output block
                sub = 2 if attn_levels[levels - 1 - b] else 1
                n = f"output_blocks.{i}.{sub}.{'.'.join(p[4:])}"
            else:
                j, rest = int(p[3]), ".".join(p[4:])
                i = b * (layers + 1) + j
                n = f"output_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
        else:
            raise KeyError(k)
        out["model.diffusion_model." + n] = v
    return out


def vae_to_ldm(sd, levels):
    res = [("conv_shortcut", "nin_shortcut")]
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in sd.items():
        n = k
        for side in ("encoder", "decoder"):
            if not k.startswith(side + "."):
                continue
            r = k[len(side) + 1:]
            p = r.split(".")
            if r.startswith("conv_norm_out."):
                r = "norm_out." + p[-1]
            elif r.startswith("mid_block.resnets."):
                rest = ".".join(p[3:])
                for a, b in res:
                    rest = rest.replace(a, b)
                r = f"mid.block_{int(p[2]) + 1}.{rest}"
            elif r.startswith("mid_block.attentions.0."):
                rest = ".".join(p[3:])
                for a, b in attn.items():
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        break
                r = "mid.attn_1." + rest
                if v.ndim == 2:
                    v = v[:, :, None, None]
            elif r.startswith("down_blocks."):
                i = int(p[1])
                if p[2] == "downsamplers":
                    r = f"down.{i}.downsample.{'.'.join(p[4:])}"
                else:
                    rest = ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
                    r = f"down.{i}.block.{p[3]}.{rest}"
            elif r.startswith("up_blocks."):
                i = levels - 1 - int(p[1])
                if p[2] == "upsamplers":
                    r = f"up.{i}.upsample.{'.'.join(p[4:])}"
                else:
                    rest = ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
                    r = f"up.{i}.block.{p[3]}.{rest}"
            n = f"{side}.{r}"
        out["first_stage_model." + n] = v
    return out


def clip_to_ldm(sd):
    sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()}
    return {"cond_stage_model.transformer." + k: v for k, v in sd.items() if not k.endswith("position_ids")}


def openclip_to_ldm(sd, layers):
    """transformers CLIPTextModel → OpenCLIP names, fusing q/k/v, plus one extra random layer
    (SD 2.x's tower has one more layer than it uses)."""
    P = "cond_stage_model.model."
    sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()}
    out = {
        P + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        P + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        P + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        P + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        P + "text_projection": torch.randn(WIDTH, WIDTH) * 0.02,
        P + "logit_scale": torch.tensor(4.6052),
    }
    g = torch.Generator().manual_seed(9)
    for i in range(layers + 1):
        L = f"text_model.encoder.layers.{i}."
        R = f"{P}transformer.resblocks.{i}."

        def get(name, shape):
            return sd[L + name] if i < layers else torch.randn(shape, generator=g) * 0.05

        for w in ("weight", "bias"):
            shape = (WIDTH, WIDTH) if w == "weight" else (WIDTH,)
            out[R + f"attn.in_proj_{w}"] = torch.cat([get(f"self_attn.{x}_proj.{w}", shape) for x in "qkv"])
            out[R + f"attn.out_proj.{w}"] = get(f"self_attn.out_proj.{w}", shape)
            out[R + f"ln_1.{w}"] = get(f"layer_norm1.{w}", (WIDTH,))
            out[R + f"ln_2.{w}"] = get(f"layer_norm2.{w}", (WIDTH,))
            out[R + f"mlp.c_fc.{w}"] = get(f"mlp.fc1.{w}", (4 * WIDTH, WIDTH) if w == "weight" else (4 * WIDTH,))
            out[R + f"mlp.c_proj.{w}"] = get(f"mlp.fc2.{w}", (WIDTH, 4 * WIDTH) if w == "weight" else (WIDTH,))
    return out


def build(name, sd2):
    torch.manual_seed(0)
    layers_text = 2
    text_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                              num_hidden_layers=layers_text, num_attention_heads=1, max_position_embeddings=77,
                              hidden_act="gelu" if sd2 else "quick_gelu", projection_dim=WIDTH,
                              bos_token_id=49406, eos_token_id=49407, pad_token_id=0 if sd2 else 49407)
    text = CLIPTextModel(text_cfg).eval()
    torch.manual_seed(1)
    levels, layers = 2, 1
    attn_levels = [True, False]
    unet_cfg = dict(sample_size=SIZE // 8, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                    layers_per_block=layers, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=WIDTH,
                    # SD 1: 8 heads everywhere; SD 2: 8 channels per head (the yaml says so)
                    attention_head_dim=(4, 4) if sd2 else 8, use_linear_projection=sd2, norm_num_groups=32)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    torch.manual_seed(2)
    vae_cfg = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
                   latent_channels=4, norm_num_groups=32, sample_size=SIZE)
    vae = AutoencoderKL(**vae_cfg).eval()
    perturb(text, unet, vae)

    ckpt = {}
    ckpt.update(unet_to_ldm(unet.state_dict(), layers, attn_levels, levels))
    ckpt.update(vae_to_ldm(vae.state_dict(), levels))
    ckpt.update(openclip_to_ldm(text.state_dict(), layers_text) if sd2 else clip_to_ldm(text.state_dict()))
    ckpt = {k: v.detach().to(torch.float16).contiguous() for k, v in ckpt.items()}
    os.makedirs(OUT, exist_ok=True)
    if sd2:
        path = os.path.join(OUT, f"{name}.ckpt")
        torch.save({"state_dict": ckpt, "global_step": 1}, path)
        with open(os.path.join(OUT, f"{name}.yaml"), "w") as f:
            f.write("model:\n  params:\n    parameterization: \"v\"\n    scale_factor: 0.18215\n"
                    "    unet_config:\n      params:\n        num_head_channels: 8\n        num_heads: -1\n"
                    "        use_linear_in_transformer: True\n        context_dim: 8\n")
        loaded = torch.load(path, weights_only=True)["state_dict"]
    else:
        path = os.path.join(OUT, f"{name}.safetensors")
        save_file(ckpt, path)
        loaded = load_file(path)
    loaded = {k: v.to(torch.float32) for k, v in loaded.items()}

    # rebuild every component with diffusers' own single-file converters
    unet2 = UNet2DConditionModel(**unet_cfg).eval()
    unet2.load_state_dict(sfu.convert_ldm_unet_checkpoint(loaded, unet2.config))
    vae2 = AutoencoderKL(**vae_cfg).eval()
    vae2.load_state_dict(sfu.convert_ldm_vae_checkpoint(loaded, vae2.config))
    text2 = CLIPTextModel(text_cfg).eval()
    if sd2:
        conv = sfu.convert_open_clip_checkpoint(text2, loaded)
    else:
        conv = sfu.convert_ldm_clip_checkpoint(loaded)
    if not any(k.startswith("text_model.") for k in text2.state_dict()):  # transformers 5 names
        conv = {k.removeprefix("text_model."): v for k, v in conv.items()}
    missing, unexpected = text2.load_state_dict(conv, strict=False)
    # SD 2's tower carries one layer more than it uses; diffusers' converter returns it too
    unexpected = [u for u in unexpected if not u.startswith(f"encoder.layers.{layers_text}.")]
    assert not [m for m in missing if "position_ids" not in m] and not unexpected, (missing, unexpected)
    # the renaming above is the inverse of diffusers': every weight comes back (as f16 values)
    for a, b in ((unet, unet2), (vae, vae2), (text, text2)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va.to(torch.float16).float(), vb), ka

    tokenizer = CLIPTokenizer(vocab=os.path.join(VOCAB, "vocab.json"), merges=os.path.join(VOCAB, "merges.txt"),
                              pad_token="!" if sd2 else "<|endoftext|>")
    tokenizer.model_max_length = 77
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  prediction_type="v_prediction" if sd2 else "epsilon", steps_offset=1, set_alpha_to_one=False,
                  clip_sample=False, timestep_spacing="leading")
    pipe = StableDiffusionPipeline(vae=vae2, text_encoder=text2, tokenizer=tokenizer, unet=unet2,
                                   scheduler=DDIMScheduler(**common), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    refs = {}
    with torch.no_grad():
        for key, t in (("prompt", PROMPT), ("negative", NEGATIVE)):
            ids = tokenizer(t, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            refs[f"ids_{key}"] = ids.to(torch.int64)
            refs[f"emb_{key}"] = text2(ids)[0]
        g = torch.Generator().manual_seed(7)
        x = torch.randn((2, 4, SIZE // 2, SIZE // 2), generator=g)
        refs["unet_in"] = x
        refs["unet_out"] = unet2(x, 500, encoder_hidden_states=torch.cat([refs["emb_negative"], refs["emb_prompt"]])).sample
        z = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=g)
        refs["vae_in"] = z
        refs["vae_out"] = vae2.decode(z / vae2.config.scaling_factor).sample
    for key, cls in (("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler)):
        pipe.scheduler = cls.from_config(DDIMScheduler(**common).config)
        gen = torch.Generator().manual_seed(SEED)
        img = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE,
                   width=SIZE, generator=gen, output_type="np").images
        refs[f"image_{key}"] = torch.from_numpy(np.ascontiguousarray(img))
    save_file({k: v.contiguous() for k, v in refs.items()}, os.path.join(OUT, f"{name}.refs.safetensors"))
    print(f"{name}: {os.path.getsize(path) / 1e6:.2f} MB", file=sys.stderr)


def write_bin_text_encoder():
    """tiny-sd1's text encoder saved by torch.save as a diffusers folder's `pytorch_model.bin`
    (a torch zip), for the test that a folder with .bin weights loads like the safetensors one."""
    sd = load_file(os.path.join(REPO, "tests", "fixtures", "sd", "tiny-sd1", "text_encoder", "model.safetensors"))
    torch.save(sd, os.path.join(OUT, "tiny-sd1-text_encoder-pytorch_model.bin"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:] == ["bin"]:
        write_bin_text_encoder()
        sys.exit(0)
    build("tiny-ldm1", sd2=False)
    build("tiny-ldm2", sd2=True)
    write_bin_text_encoder()
