#!/usr/bin/env python3
"""Measures builtin:shapes against issue 4's quality bars by running the real `headroom` binary.

    python3 tools/models/quality.py shapes [--prompts 200] [--seeds 2] [--binary target/release/headroom]

Prompts come from the training caption grammar (`shapes_data.scene`), always naming a background.
For each output, every pixel is assigned the nearest of the grammar's eight named colours; then
- background: the requested background colour is the most frequent class;
- colours: each requested shape colour forms a 4-connected region of plausible size (at least
  MIN_AREA pixels at 64×64, scaled with the image area, and not the background's class).
Prints the two rates, the mean generation time per image (the run's load + text + denoise +
decode from `--json`), and the worst prompts. Needs numpy and Pillow only; no PyTorch.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_data import COLOURS, scene  # noqa: E402

REPO = Path(__file__).resolve().parent.parent.parent
MIN_AREA = 12  # pixels at 64×64; a small shape covers about 50–150


def prompts(n, seed):
    """n captions that name a background, with (background, [shape colours])."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        _, caption = scene(rng)
        m = re.search(r", on an? (\w+) background$", caption)
        if not m:
            continue
        shapes_part = caption[: m.start()]
        colours = [w for w in re.findall(r"\w+", shapes_part) if w in COLOURS]
        out.append((caption, m.group(1), colours))
    return out


def classify(rgb):
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    d = ((rgb[:, :, None, :].astype(np.float32) - palette[None, None]) ** 2).sum(-1)
    return d.argmin(-1), names


def largest_region(mask):
    """Size of the largest 4-connected region of True pixels."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, size = [(y0, x0)], 0
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        best = max(best, size)
    return best


def score(png, background, colours):
    rgb = np.asarray(Image.open(png).convert("RGB"))
    cls, names = classify(rgb)
    counts = np.bincount(cls.ravel(), minlength=len(names))
    bg_ok = names[int(counts.argmax())] == background
    min_area = MIN_AREA * rgb.shape[0] * rgb.shape[1] / (64 * 64)
    present = [largest_region(cls == names.index(c)) >= min_area for c in colours if c != background]
    return bg_ok, all(present)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["shapes"])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--binary", default=None)
    args = ap.parse_args()
    binary = args.binary or next(
        (str(p) for p in (REPO / "target/release/headroom", REPO / "target/debug/headroom") if p.is_file()), "headroom"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (caption, bg, colours) in enumerate(prompts(args.prompts, 1234)):
            for seed in range(args.seeds):
                out = Path(tmp) / f"{i}-{seed}"
                t0 = time.perf_counter()
                res = subprocess.run(
                    [binary, "run", f"builtin:{args.model}", "--prompt", caption, "--seed", str(seed),
                     "--steps", str(args.steps), "--out", str(out), "--json"],
                    capture_output=True, text=True,
                )
                wall = time.perf_counter() - t0
                if res.returncode != 0:
                    sys.exit(f"quality: headroom failed on '{caption}': {res.stderr.strip()}")
                v = json.loads(res.stdout)
                ms = sum(v["timings_ms"].get(k, 0) for k in ("load", "text", "denoise", "decode"))
                bg_ok, col_ok = score(v["outputs"][0], bg, colours)
                rows.append((caption, seed, bg_ok, col_ok, ms, wall))
            if (i + 1) % 20 == 0:
                print(f"quality: {i + 1}/{args.prompts} prompts", file=sys.stderr)
    n = len(rows)
    bg_rate = sum(r[2] for r in rows) / n
    col_rate = sum(r[3] for r in rows) / n
    print(json.dumps({
        "model": args.model, "binary": binary, "images": n, "steps": args.steps,
        "background_dominant": round(bg_rate, 4), "background_bar": 0.90,
        "shape_colours_present": round(col_rate, 4), "colours_bar": 0.80,
        "mean_generation_ms": round(sum(r[4] for r in rows) / n, 1),
        "mean_process_wall_s": round(sum(r[5] for r in rows) / n, 3),
        "failures": [f"seed {r[1]}: {r[0]} (background {'ok' if r[2] else 'wrong'}, colours {'ok' if r[3] else 'missing'})"
                     for r in rows if not (r[2] and r[3])][:10],
    }, indent=1))


if __name__ == "__main__":
    main()
