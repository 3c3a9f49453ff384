#!/usr/bin/env python3
"""Writes the tiny SDXL fixture (tests/fixtures/sdxl/tiny-sdxl, made by make_sdxl_fixtures.py) as
one single-file checkpoint in the original SDXL layout, as A1111 and ComfyUI users have them:

  tests/fixtures/sdxl/tiny-sdxl.safetensors   f16, as released SDXL files are (the folder's weights
                                              are f16 values held in f32, so nothing is rounded)
    model.diffusion_model.*                         the UNet (SDXL's add_embedding as label_emb.0.*)
    first_stage_model.*                             the VAE
    conditioner.embedders.0.transformer.text_model.*    CLIP ViT-L in transformers' layout
    conditioner.embedders.1.model.*                 OpenCLIP ViT-bigG: fused q/k/v in_proj, ln_1/ln_2,
                                                    mlp.c_fc/c_proj, positional_embedding,
                                                    token_embedding, ln_final, text_projection
                                                    stored (width, projection) = the HF weight
                                                    transposed, logit_scale
  tests/fixtures/sdxl/tiny-sdxl.yaml          what shapes cannot tell, in sd_xl_base.yaml's keys:
                                              8 channels per attention head, scale factor 0.13025

A single file has no tokenizer: A1111, ComfyUI and Headroom tokenize with the standard CLIP
vocabulary (assets/clip, 49408 tokens). So the two token tables here have 49408 rows: the
folder's row of each token of its small vocabulary placed at that token's id in the standard
one, zeros elsewhere. A prompt whose words are one token in both vocabularies ("a photo of an
astronaut riding a horse", not "... on the moon": the small vocabulary splits "moon") is then
encoded by the single file exactly as by the folder.

The renaming is this script's own (the inverse of the engine's map); it is checked against
diffusers' single-file converters (`diffusers.loaders.single_file_utils`): converting the file
back gives the folder's state dicts exactly (token tables through the id map), and diffusers'
`StableDiffusionXLPipeline.from_single_file` (the folder's configs with the standard vocabulary)
gives the folder's Euler image for a prompt whose words are one token in both vocabularies.

Run: HF_HUB_OFFLINE=1 /work/venv/bin/python tools/make_sdxl_single_fixture.py   (no network needed)
"""
import json
import os
import sys

sys.modules.setdefault("torchaudio", None)

import torch  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextModelWithProjection  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_ldm_fixtures import unet_to_ldm, vae_to_ldm  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ROOT = os.path.join(REPO, "tests", "fixtures", "sdxl")
FOLDER = os.path.join(ROOT, "tiny-sdxl")
OUT = os.path.join(ROOT, "tiny-sdxl.safetensors")
YAML = os.path.join(ROOT, "tiny-sdxl.yaml")
CLIP_L = "conditioner.embedders.0.transformer."
CLIP_G = "conditioner.embedders.1.model."


def weights(sub):
    d = os.path.join(FOLDER, sub)
    if not sub.startswith("text"):
        return load_file(os.path.join(d, "diffusion_pytorch_model.safetensors"))
    # transformers 5 saves CLIPTextModel without its "text_model." prefix; the LDM layout has it
    sd = load_file(os.path.join(d, "model.safetensors"))
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in sd.items()}


def id_map():
    """The folder's token id → the standard vocabulary's id, for tokens in both."""
    with open(os.path.join(FOLDER, "tokenizer", "vocab.json"), encoding="utf-8") as f:
        small = json.load(f)
    with open(os.path.join(REPO, "assets", "clip", "vocab.json"), encoding="utf-8") as f:
        full = json.load(f)
    return {i: full[t] for t, i in small.items() if t in full}, len(full)


def widen(table, ids, rows):
    out = torch.zeros((rows, table.shape[1]), dtype=table.dtype)
    for small, big in ids.items():
        out[big] = table[small]
    return out


def narrow(table, ids, rows):
    out = torch.zeros((rows, table.shape[1]), dtype=table.dtype)
    for small, big in ids.items():
        out[small] = table[big]
    return out


def unet_ldm(sd, cfg):
    """diffusers' SDXL UNet → LDM names: make_ldm_fixtures' map plus add_embedding → label_emb."""
    add = {k: v for k, v in sd.items() if k.startswith("add_embedding.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("add_embedding.")}
    levels = len(cfg["block_out_channels"])
    attn = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
    out = unet_to_ldm(rest, cfg["layers_per_block"], attn, levels)
    for k, v in add.items():
        p = k.split(".")
        out[f"model.diffusion_model.label_emb.0.{0 if p[1] == 'linear_1' else 2}.{p[2]}"] = v
    return out


def clip_g_ldm(sd, layers):
    """transformers CLIPTextModelWithProjection → OpenCLIP names (fused q/k/v, projection transposed)."""
    t = "text_model."
    out = {
        CLIP_G + "token_embedding.weight": sd[t + "embeddings.token_embedding.weight"],
        CLIP_G + "positional_embedding": sd[t + "embeddings.position_embedding.weight"],
        CLIP_G + "ln_final.weight": sd[t + "final_layer_norm.weight"],
        CLIP_G + "ln_final.bias": sd[t + "final_layer_norm.bias"],
        CLIP_G + "text_projection": sd["text_projection.weight"].T.contiguous(),
        CLIP_G + "logit_scale": torch.tensor(4.6052).half().float(),
    }
    for i in range(layers):
        L = f"{t}encoder.layers.{i}."
        R = f"{CLIP_G}transformer.resblocks.{i}."
        for w in ("weight", "bias"):
            out[R + f"attn.in_proj_{w}"] = torch.cat([sd[L + f"self_attn.{x}_proj.{w}"] for x in "qkv"])
            out[R + f"attn.out_proj.{w}"] = sd[L + f"self_attn.out_proj.{w}"]
            out[R + f"ln_1.{w}"] = sd[L + f"layer_norm1.{w}"]
            out[R + f"ln_2.{w}"] = sd[L + f"layer_norm2.{w}"]
            out[R + f"mlp.c_fc.{w}"] = sd[L + f"mlp.fc1.{w}"]
            out[R + f"mlp.c_proj.{w}"] = sd[L + f"mlp.fc2.{w}"]
    return out


def check_with_diffusers(ckpt, parts, ids, rows):
    """diffusers' converters give back the folder's tensors from the file."""
    def same(name, got, want, token_key):
        got, want = dict(got), dict(want)
        if token_key in got:
            # rows of tokens the standard vocabulary lacks (partial merges) are not carried over
            got[token_key] = narrow(got[token_key], ids, want[token_key].shape[0])
            want[token_key] = narrow(widen(want[token_key], ids, rows), ids, want[token_key].shape[0])
        want = {k: v for k, v in want.items() if not k.endswith("position_ids")}
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        assert set(got) == set(want), (name, sorted(set(got) ^ set(want))[:8])
        for k in want:
            assert torch.equal(got[k].float(), want[k].float()), (name, k)
        print(f"{name}: {len(want)} tensors equal after diffusers' conversion", file=sys.stderr)

    with open(os.path.join(FOLDER, "unet", "config.json")) as f:
        unet_cfg = json.load(f)
    unet = sfu.convert_ldm_unet_checkpoint(ckpt, unet_cfg)
    same("unet", unet, parts["unet"], None)
    with open(os.path.join(FOLDER, "vae", "config.json")) as f:
        vae_cfg = json.load(f)
    vae = sfu.convert_ldm_vae_checkpoint(ckpt, vae_cfg)
    same("vae", vae, parts["vae"], None)
    # diffusers' SDXL path strips "conditioner.embedders.0.transformer." (convert_ldm_clip_checkpoint)
    l_sd = sfu.convert_ldm_clip_checkpoint(ckpt, remove_prefix=CLIP_L)
    same("text_encoder", l_sd, parts["text_encoder"], "text_model.embeddings.token_embedding.weight")
    te2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(FOLDER, "text_encoder_2"))
    g_sd = sfu.convert_open_clip_checkpoint(te2, ckpt, prefix=CLIP_G)
    same("text_encoder_2", g_sd, parts["text_encoder_2"], "text_model.embeddings.token_embedding.weight")


def check_pipeline():
    """diffusers' own `from_single_file` on the file gives the folder's image. With the folder as
    its config it refuses the 49408-row token tables (the folder's configs say 589), so the config
    is a copy of the folder with the standard vocabulary's size and tokenizers (assets/clip, the
    second padded with "!"), as SDXL base's are."""
    import shutil
    import tempfile

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    prompt = "a photo of an astronaut riding a horse"  # one token per word in both vocabularies
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "tiny-sdxl")
        shutil.copytree(FOLDER, cfg)
        for sub in ("text_encoder", "text_encoder_2"):
            path = os.path.join(cfg, sub, "config.json")
            with open(path) as f:
                c = json.load(f)
            c.update(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=0 if sub.endswith("2") else 49407)
            with open(path, "w") as f:
                json.dump(c, f)
        vocab = os.path.join(REPO, "assets", "clip")
        for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
            shutil.rmtree(os.path.join(cfg, sub))
            tok = CLIPTokenizer(os.path.join(vocab, "vocab.json"), os.path.join(vocab, "merges.txt"), pad_token=pad)
            tok.model_max_length = 77
            tok.save_pretrained(os.path.join(cfg, sub))
        single = StableDiffusionXLPipeline.from_single_file(OUT, config=cfg, local_files_only=True, torch_dtype=torch.float32)
        folder = StableDiffusionXLPipeline.from_pretrained(FOLDER)
        for p in (single, folder):
            p.set_progress_bar_config(disable=True)
            p.scheduler = EulerDiscreteScheduler.from_config(folder.scheduler.config)
        images = [
            p(prompt, num_inference_steps=4, guidance_scale=5.0, height=64, width=64,
              generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
            for p in (single, folder)
        ]
        d = float(abs(images[0] - images[1]).max())
        print(f"diffusers from_single_file against the folder, Euler: max abs difference {d:.2e}", file=sys.stderr)
        assert d <= 1e-5, d


def main():
    parts = {n: weights(n) for n in ("unet", "vae", "text_encoder", "text_encoder_2")}
    with open(os.path.join(FOLDER, "unet", "config.json")) as f:
        unet_cfg = json.load(f)
    with open(os.path.join(FOLDER, "text_encoder_2", "config.json")) as f:
        layers_2 = json.load(f)["num_hidden_layers"]
    ids, rows = id_map()
    print(f"token tables: {len(ids)} of the folder's tokens placed at their standard ids", file=sys.stderr)
    ckpt = {}
    ckpt.update(unet_ldm(parts["unet"], unet_cfg))
    ckpt.update(vae_to_ldm(parts["vae"], len(json.load(open(os.path.join(FOLDER, "vae", "config.json")))["block_out_channels"])))
    tok = "text_model.embeddings.token_embedding.weight"
    l_sd = dict(parts["text_encoder"])
    l_sd[tok] = widen(l_sd[tok], ids, rows)
    ckpt.update({CLIP_L + k: v for k, v in l_sd.items() if not k.endswith("position_ids")})
    g_sd = dict(parts["text_encoder_2"])
    g_sd[tok] = widen(g_sd[tok], ids, rows)
    ckpt.update(clip_g_ldm(g_sd, layers_2))
    for k, v in ckpt.items():
        # every value is an f16 value (make_sdxl_fixtures.py rounds them), so this is exact
        assert torch.equal(v.half().float(), v.float()), k
    ckpt = {k: v.half().contiguous() for k, v in ckpt.items()}
    check_with_diffusers({k: v.float() for k, v in ckpt.items()}, parts, ids, rows)
    save_file(ckpt, OUT)
    with open(YAML, "w") as f:
        f.write(
            "# what the tiny SDXL's shapes cannot tell, in sd_xl_base.yaml's keys\n"
            "model:\n  params:\n    scale_factor: 0.13025\n    network_config:\n      params:\n"
            "        num_head_channels: 8\n"
        )
    print(f"{OUT}: {len(ckpt)} tensors, {os.path.getsize(OUT) / 1e6:.2f} MB", file=sys.stderr)
    check_pipeline()


if __name__ == "__main__":
    main()
