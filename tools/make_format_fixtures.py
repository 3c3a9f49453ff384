#!/usr/bin/env python3
"""Make the tiny model files the `formats` tests read, and record what inspect must find.

Run with the tools venv:  /work/venv/bin/python tools/make_format_fixtures.py

Writes into tests/fixtures/formats/:
  tiny.safetensors            LDM-style keys (SD 2.x text encoder prefix), bf16/f16/f32/i64, __metadata__
  sharded/                    two shards + model.safetensors.index.json
  diffusers/                  model_index.json + unet (safetensors and an fp16 variant), vae (.bin, a
                              real torch.save zip), text_encoder (fp16 variant only), tokenizer, scheduler
  tiny.gguf                   gguf-py writer: f32, f16, q8_0, an iq4_nl tensor, and one tensor patched
                              to an unknown type id (200)
  ldm.ckpt                    real torch.save of {"state_dict": OrderedDict(LDM keys), "global_step": …}
  expected.json               parameter counts and facts the Rust tests check, computed here from the
                              tensors as written
Everything is seeded, so the tensors and the counts are the same on every run (torch.save's zips
also hold a random serialization id, so their bytes differ).
"""

import collections
import json
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "formats"


def numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def summary(tensors, components, fmt, family, **extra):
    """tensors: dict name -> (dtype name, shape); components: dict component -> list of names."""
    dtypes = collections.Counter()
    for dt, shape in tensors.values():
        dtypes[dt] += numel(shape)
    out = {
        "format": fmt,
        "family": family,
        "parameters": sum(numel(s) for _, s in tensors.values()),
        "tensors": len(tensors),
        "components": {c: sum(numel(tensors[n][1]) for n in names) for c, names in components.items()},
        "dtypes": dict(dtypes),
    }
    out.update(extra)
    return out


DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def torch_tensors(sd):
    return {k: (DT[v.dtype], list(v.shape)) for k, v in sd.items()}


def by_prefix(names, table):
    comps = collections.defaultdict(list)
    for n in names:
        for prefix, comp in table:
            if n.startswith(prefix):
                comps[comp].append(n)
                break
        else:
            comps["other"].append(n)
    return dict(comps)


LDM = [
    ("model.diffusion_model.", "unet"),
    ("first_stage_model.", "vae"),
    ("cond_stage_model.", "text_encoder"),
]


def make_safetensors(expected):
    g = torch.Generator().manual_seed(1)
    sd = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3, generator=g),
        "model.diffusion_model.input_blocks.0.0.bias": torch.randn(8, generator=g),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(
            16, 24, generator=g
        ).half(),
        "first_stage_model.decoder.conv_in.weight": torch.randn(8, 4, 3, 3, generator=g).to(torch.bfloat16),
        "cond_stage_model.model.ln_final.weight": torch.randn(24, generator=g),
        "cond_stage_model.model.positional_embedding": torch.randn(77, 24, generator=g),
        "cond_stage_model.model.token_ids": torch.arange(77, dtype=torch.int64).reshape(1, 77),
    }
    save_file(sd, OUT / "tiny.safetensors", metadata={"format": "pt", "title": "tiny fixture"})
    t = torch_tensors(sd)
    expected["tiny.safetensors"] = summary(
        t, by_prefix(t, LDM), "safetensors", "sd2", metadata={"title": "tiny fixture", "format": "pt"}
    )


def make_sharded(expected):
    d = OUT / "sharded"
    d.mkdir()
    g = torch.Generator().manual_seed(2)
    shards = [
        {"model.embed_tokens.weight": torch.randn(32, 16, generator=g), "model.norm.weight": torch.randn(16, generator=g)},
        {"model.layers.0.mlp.up_proj.weight": torch.randn(24, 16, generator=g).half(), "lm_head.weight": torch.randn(32, 16, generator=g)},
    ]
    weight_map, all_t, total = {}, {}, 0
    for i, sd in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(sd, d / name, metadata={"format": "pt"})
        for k, v in sd.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
        all_t.update(torch_tensors(sd))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
    )
    facts = summary(all_t, {"model": list(all_t)}, "safetensors", "unknown", metadata={"total_size": str(total), "shards": "2"})
    expected["sharded"] = facts
    expected["sharded/model.safetensors.index.json"] = facts
    expected["sharded/model-00002-of-00002.safetensors"] = facts


def make_diffusers(expected):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    d = OUT / "diffusers"
    d.mkdir()
    torch.manual_seed(3)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 8),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    unet.save_pretrained(d / "unet")
    unet.half().save_pretrained(d / "unet", variant="fp16")
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=2,
        layers_per_block=1,
    )
    vae.save_pretrained(d / "vae", safe_serialization=False)
    cfg = CLIPTextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=16,
    )
    te = CLIPTextModel(cfg).half()
    te.save_pretrained(d / "text_encoder", variant="fp16")
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": 77}\n')
    (d / "scheduler").mkdir()
    (d / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "EulerDiscreteScheduler"}\n')
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.0.0-fixture",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "safety_checker": [None, None],
    }
    (d / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    from safetensors.torch import load_file

    parts = {
        "unet": torch_tensors(load_file(d / "unet" / "diffusion_pytorch_model.safetensors")),
        "vae": torch_tensors(torch.load(d / "vae" / "diffusion_pytorch_model.bin", weights_only=True)),
        "text_encoder": torch_tensors(load_file(d / "text_encoder" / "model.fp16.safetensors")),
    }
    all_t = {f"{c}/{k}": v for c, t in parts.items() for k, v in t.items()}
    comps = {c: [f"{c}/{k}" for k in t] for c, t in parts.items()}
    expected["diffusers"] = summary(
        all_t, comps, "diffusers", "sd1",
        metadata={
            "_class_name": "StableDiffusionPipeline",
            "unet": "diffusers.UNet2DConditionModel",
            "unet.weights": "diffusion_pytorch_model.safetensors",
            "vae.weights": "diffusion_pytorch_model.bin",
            "text_encoder.weights": "model.fp16.safetensors",
            "text_encoder.variant": "fp16",
        },
    )
    expected["diffusers/model_index.json"] = expected["diffusers"]


def make_gguf(expected):
    path = OUT / "tiny.gguf"
    rng = np.random.default_rng(4)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny fixture")
    w.add_context_length(64)
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(10)])
    w.add_array("tokenizer.ggml.scores", [0.5, 1.5])
    tensors = {}

    def add(name, arr, ggml_name, shape, raw_dtype=None):
        if raw_dtype is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw_dtype)
        tensors[name] = (ggml_name, shape)

    add("token_embd.weight", rng.standard_normal((16, 32), dtype=np.float32), "F32", [16, 32])
    add("blk.0.attn_norm.weight", rng.standard_normal(32, dtype=np.float32), "F32", [32])
    add("blk.0.ffn_up.weight", rng.standard_normal((8, 32)).astype(np.float16), "F16", [8, 32])
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    add("blk.0.attn_q.weight", q8, "Q8_0", [4, 64], gguf.GGMLQuantizationType.Q8_0)
    iq = rng.integers(0, 255, size=(2, 2 * 18), dtype=np.uint8)  # 2 rows of 64 = 2 blocks of 18 bytes
    add("blk.0.attn_k.weight", iq, "IQ4_NL", [2, 64], gguf.GGMLQuantizationType.IQ4_NL)
    add("blk.0.weird.weight", rng.standard_normal((2, 8), dtype=np.float32), "unknown(200)", [2, 8])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # Patch the last tensor's type id to 200, a type no ggml has: its info is name, n_dims,
    # dims (u64 each), then the u32 type.
    data = bytearray(path.read_bytes())
    name = b"blk.0.weird.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    type_at = at + 4 + 8 * n_dims
    assert struct.unpack_from("<I", data, type_at)[0] == 0
    struct.pack_into("<I", data, type_at, 200)
    path.write_bytes(bytes(data))
    expected["tiny.gguf"] = summary(
        tensors, {"model": list(tensors)}, "gguf", "llm:llama",
        metadata={"general.architecture": "llama", "general.name": "tiny fixture", "llama.block_count": "1"},
        unknown=["blk.0.weird.weight"],
    )


def make_ckpt(expected):
    g = torch.Generator().manual_seed(5)
    sd = collections.OrderedDict()
    sd["betas"] = torch.linspace(0.1, 0.2, 10)
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3, generator=g)
    sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.nn.Parameter(
        torch.randn(8, 32, generator=g)
    )
    base = torch.randn(6, 32, generator=g).to(torch.bfloat16)
    sd["model.diffusion_model.out.2.weight"] = base[2:4]  # a view: shares storage, non-zero offset
    sd["first_stage_model.decoder.conv_out.weight"] = torch.randn(3, 4, 3, 3, generator=g).half()
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).reshape(1, 77)
    sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.randn(32, generator=g)
    torch.save({"state_dict": sd, "global_step": 1234, "epoch": 7}, OUT / "ldm.ckpt")
    t = torch_tensors(sd)
    expected["ldm.ckpt"] = summary(
        t, by_prefix(t, LDM), "ckpt", "sd1", metadata={"global_step": "1234", "epoch": "7"}
    )


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    expected = {}
    make_safetensors(expected)
    make_sharded(expected)
    make_diffusers(expected)
    make_gguf(expected)
    make_ckpt(expected)
    (OUT / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {len(expected)} expectations, {total} bytes of fixtures in {OUT}")
    assert total < 1_000_000, "fixtures must stay under 1 MB"


if __name__ == "__main__":
    main()
