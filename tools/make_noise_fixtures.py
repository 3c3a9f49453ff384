#!/usr/bin/env python3
"""Write the reference noise that engine/src/rng must reproduce bit for bit.

Uses real torch: `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` in float32 on
the CPU. Writes into tests/fixtures/noise/:

- `seed_<seed>.safetensors`: one tensor per case, named `n<numel>` (flat float32). For seeds other
  than 0 and 42 the 1x4x64x64 case is stored only as its first 64 values (`n16384_head64`); its
  sha256 is in `index.json`.
- `stream.safetensors`: one generator seeded with 42, then randn(3), randn(1000), randn(5),
  randn(17) in that order, stored as `call0`..`call3`. This pins the cached second normal of the
  small-tensor path and the generator state across calls.
- `batch.safetensors`: a batch's noise as diffusers draws it and as A1111 does. `b2_4x16x16_call0`,
  `b2_4x16x16_call1`: one generator seeded with 42, randn((2, 4, 16, 16)) twice (a batch of two's
  initial latents, then an ancestral step's noise, as diffusers' `prepare_latents` and its
  schedulers draw with one generator); `b2_4x3x5`: a fresh generator seeded with 42,
  randn((2, 4, 3, 5)) (120 values, not a multiple of 16). Per image: `s42_4x16x16_call0/1`,
  `s43_4x16x16_call0/1` (generators seeded with 42 and 43, randn((1, 4, 16, 16)) twice) and
  `s43_4x3x5`.
- `index.json`: torch version, CPU capability, and for every case its shape and the sha256 of its
  little-endian float32 bytes.

Run: /work/venv/bin/python tools/make_noise_fixtures.py   (from the repository root)

`--sweep DIR` instead writes a large, uncommitted comparison set into DIR (`sweep.txt`: one line
per generator, "seed n1 n2 ...", the sizes of its successive randn calls; `sweep.bin`: all outputs,
little-endian float32, in order), for the ignored Rust test `rng::tests::sweep_against_torch_dump`
(`HEADROOM_NOISE_SWEEP=DIR cargo test -p headroom-engine --lib sweep -- --ignored`).
"""

import hashlib
import json
import os
import random
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

SEEDS = [0, 1, 42, 2**32 + 5, 2**63]
SHAPES = [(1,), (7,), (16,), (17,), (1000,), (1, 4, 64, 64)]
FULL_BIG_SEEDS = {0, 42}
STREAM_SEED = 42
STREAM_CALLS = [3, 1000, 5, 17]
BATCH_SEED = 42
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "noise")


def le_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().astype("<f4").tobytes()


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    index = {
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "call": "torch.randn(shape, generator=torch.Generator().manual_seed(seed)), float32, CPU",
        "seeds": {},
        "stream": {},
    }
    for seed in SEEDS:
        tensors = {}
        cases = {}
        for shape in SHAPES:
            g = torch.Generator().manual_seed(seed)
            t = torch.randn(shape, generator=g, dtype=torch.float32)
            numel = t.numel()
            raw = le_bytes(t)
            flat = t.reshape(-1).numpy().astype(np.float32)
            name = f"n{numel}"
            if numel >= 4096 and seed not in FULL_BIG_SEEDS:
                tensors[f"{name}_head64"] = flat[:64].copy()
            else:
                tensors[name] = flat.copy()
            cases[name] = {"shape": list(shape), "sha256": hashlib.sha256(raw).hexdigest()}
        save_file(tensors, os.path.join(OUT, f"seed_{seed}.safetensors"))
        index["seeds"][str(seed)] = cases

    g = torch.Generator().manual_seed(STREAM_SEED)
    stream = {}
    for i, n in enumerate(STREAM_CALLS):
        t = torch.randn((n,), generator=g, dtype=torch.float32)
        stream[f"call{i}"] = t.numpy().astype(np.float32).copy()
        index["stream"][f"call{i}"] = {"numel": n, "sha256": hashlib.sha256(le_bytes(t)).hexdigest()}
    index["stream"]["seed"] = STREAM_SEED
    save_file(stream, os.path.join(OUT, "stream.safetensors"))

    index["batch"] = batch()

    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", OUT, "torch", torch.__version__)


def batch() -> dict:
    """Writes batch.safetensors (see the module doc) and returns its index entries."""
    tensors, cases = {}, {}

    def draws(name: str, seed: int, shape: tuple, calls: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for i in range(calls):
            t = torch.randn(shape, generator=g, dtype=torch.float32)
            key = f"{name}_call{i}" if calls > 1 else name
            tensors[key] = t.reshape(-1).numpy().astype(np.float32).copy()
            cases[key] = {"seed": seed, "shape": list(shape), "call": i, "sha256": hashlib.sha256(le_bytes(t)).hexdigest()}

    draws("b2_4x16x16", BATCH_SEED, (2, 4, 16, 16), 2)
    draws("b2_4x3x5", BATCH_SEED, (2, 4, 3, 5), 1)
    draws("s42_4x16x16", BATCH_SEED, (1, 4, 16, 16), 2)
    draws("s43_4x16x16", BATCH_SEED + 1, (1, 4, 16, 16), 2)
    draws("s43_4x3x5", BATCH_SEED + 1, (1, 4, 3, 5), 1)
    save_file(tensors, os.path.join(OUT, "batch.safetensors"))
    return cases


def sweep(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    rnd = random.Random(1234)
    lines = []
    with open(os.path.join(out_dir, "sweep.bin"), "wb") as out:
        # Many seeds with a big tensor each, then streams of mixed sizes (small and large calls).
        for seed in range(60):
            sizes = [65536 + rnd.randrange(0, 16)]
            lines.append((seed, sizes))
        for k in range(300):
            seed = rnd.randrange(0, 2**64)
            sizes = [rnd.choice([rnd.randrange(1, 16), rnd.randrange(16, 40), rnd.randrange(40, 3000)])
                     for _ in range(rnd.randrange(1, 8))]
            lines.append((seed, sizes))
        for seed, sizes in lines:
            g = torch.Generator().manual_seed(seed)
            for n in sizes:
                out.write(le_bytes(torch.randn((n,), generator=g, dtype=torch.float32)))
    with open(os.path.join(out_dir, "sweep.txt"), "w") as f:
        for seed, sizes in lines:
            f.write(" ".join(str(v) for v in [seed, *sizes]) + "\n")
    print("wrote sweep to", out_dir)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sweep":
        sweep(sys.argv[2])
    else:
        main()
