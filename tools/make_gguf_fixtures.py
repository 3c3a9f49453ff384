#!/usr/bin/env python3
"""Builds tiny Stable Diffusion 1.x GGUFs with stable-diffusion.cpp's own converter, from the
tiny SD 1.x LDM single file (tests/fixtures/sd/ldm/tiny-ldm1.safetensors, made by
tools/make_ldm_fixtures.py; f16 weights), and one GGUF whose names match no layout.

Writes tests/fixtures/gguf/:
  tiny-sd1-f16.gguf, -q8_0.gguf, -q4_0.gguf, -q4_k.gguf
      sd.cpp's `convert` (through PyPI cyllama, which bundles stable-diffusion.cpp) at that type.
      sd.cpp quantizes a tensor only when its innermost dimension (ggml's ne[0], PyTorch's last) is
      a whole number of blocks; every other tensor keeps its source type (f16 here). So the
      q8_0/q4_0 files hold their linear weights (and some 1-D norm weights) quantized and the
      3×3 convolutions f16, and q4_k holds no Q4_K tensor at all: this model's rows are at most
      128 long, shorter than one 256-element K block (q5_k and q6_k are the same bytes, so they
      are not kept). sd.cpp writes no metadata: the tensor names are the only evidence.
  tiny-sd1-unet-q8_0.gguf
      a denoiser-only GGUF as ComfyUI-GGUF users have them: the q8_0 file's
      `model.diffusion_model.*` tensors, their blocks copied byte for byte, under the names with
      that prefix stripped and `general.architecture = sd1`, as ComfyUI-GGUF's convert.py names
      them (written with the `gguf` package; its own converter quantizes through a patched
      llama.cpp and reshapes rows that are not multiples of 256, which this file does not).
  tiny-sdxl-q8_0.gguf
      sd.cpp's `convert` at q8_0 of the tiny SDXL single file (tests/fixtures/sdxl/tiny-sdxl.safetensors,
      made by tools/make_sdxl_single_fixture.py): it keeps SDXL's LDM names (conditioner.embedders.*,
      label_emb) and drops OpenCLIP's logit_scale; rows of 32 are quantized, rows of 48 (the
      second text encoder's) stay f16. Most of its bytes are the two 49408-row token tables.
  unknown-names.gguf
      two small f32 tensors under names no layout uses (written with the `gguf` package).
  SOURCE.txt
      the tools and versions that made them, and each file's tensor types.

Run: /work/venv/bin/python tools/make_gguf_fixtures.py   (no network; needs `cyllama==0.2.18` and `gguf`)
"""
import collections
import hashlib
import importlib.metadata as md
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "tests" / "fixtures" / "sd" / "ldm" / "tiny-ldm1.safetensors"
SDXL = REPO / "tests" / "fixtures" / "sdxl" / "tiny-sdxl.safetensors"
OUT = REPO / "tests" / "fixtures" / "gguf"
TYPES = ["f16", "q8_0", "q4_0", "q4_k"]


def convert(src, out, qtype):
    """sd.cpp's converter, as tools/peer_bench.py calls it. cyllama 0.2.18 passes a missing
    tensor_type_rules to sd.cpp as NULL, which aborts; "," is an empty rule list."""
    from cyllama import sd

    tmp = Path(str(out) + ".tmp")
    if not sd.convert_model(input_path=str(src), output_path=str(tmp), output_type=sd.SDType[qtype.upper()],
                            tensor_type_rules=","):
        sys.exit(f"sd.cpp could not convert {src} to {qtype}")
    tmp.rename(out)


def types_of(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    return collections.Counter(t.tensor_type.name for t in r.tensors), len(r.fields) - 3


def unknown_names(out):
    import gguf

    w = gguf.GGUFWriter(str(out), arch="none")
    # the writer always adds general.architecture; sd.cpp's files have no metadata, nor this one
    for kv in w.kv_data:
        kv.pop("general.architecture", None)
    w.add_tensor("encoder.layer0.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.add_tensor("decoder.head.bias", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def denoiser_only(src, out):
    """The denoiser's tensors of sd.cpp's file `src`, as stored, prefix stripped, arch sd1."""
    import gguf

    prefix = "model.diffusion_model."
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(out), arch="sd1")
    for t in r.tensors:
        if t.name.startswith(prefix):
            w.add_tensor(t.name[len(prefix):], t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [
        f"made by tools/make_gguf_fixtures.py from {SRC.relative_to(REPO)} "
        f"(sha256 {hashlib.sha256(SRC.read_bytes()).hexdigest()[:16]}…)",
        f"converter: stable-diffusion.cpp's convert, bundled in PyPI cyllama {md.version('cyllama')}",
        f"unknown-names.gguf: PyPI gguf {md.version('gguf')}",
    ]
    for q in TYPES:
        out = OUT / f"tiny-sd1-{q}.gguf"
        convert(SRC, out, q)
        counts, kv = types_of(out)
        lines.append(f"{out.name}: {out.stat().st_size} bytes, {kv} metadata keys, tensors "
                     + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    denoiser_only(OUT / "tiny-sd1-q8_0.gguf", OUT / "tiny-sd1-unet-q8_0.gguf")
    counts, kv = types_of(OUT / "tiny-sd1-unet-q8_0.gguf")
    lines.append(f"tiny-sd1-unet-q8_0.gguf: {(OUT / 'tiny-sd1-unet-q8_0.gguf').stat().st_size} bytes, {kv} metadata keys, "
                 "tensors " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    out = OUT / "tiny-sdxl-q8_0.gguf"
    convert(SDXL, out, "q8_0")
    counts, kv = types_of(out)
    lines.append(f"{out.name}: from {SDXL.relative_to(REPO)} (sha256 {hashlib.sha256(SDXL.read_bytes()).hexdigest()[:16]}…), "
                 f"{out.stat().st_size} bytes, {kv} metadata keys, tensors "
                 + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    unknown_names(OUT / "unknown-names.gguf")
    (OUT / "SOURCE.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
