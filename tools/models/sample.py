#!/usr/bin/env python3
"""Samples an exported model with diffusers' StableDiffusionPipeline (Euler, 20 steps) into a PNG grid.

    /work/venv/bin/python tools/models/sample.py models/shapes --out /tmp/shapes_samples.png \
        "a large red circle on the left" "a small blue star, on a yellow background"
"""
import argparse
import sys

sys.modules.setdefault("torchaudio", None)  # unused; a build for another CUDA than torch's breaks transformers' imports

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3, help="images per prompt (seeds 0..n-1)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--zoom", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    h = a.height or pipe.unet.config.sample_size * 8
    w = a.width or h
    rows = []
    for p in a.prompts:
        row = []
        for seed in range(a.seeds):
            g = torch.Generator().manual_seed(seed)
            im = pipe(p, num_inference_steps=a.steps, guidance_scale=a.guidance, generator=g, height=h, width=w).images[0]
            row.append(np.asarray(im))
        rows.append(np.concatenate(row, axis=1))
        print(p, file=sys.stderr)
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid.resize((grid.width * a.zoom, grid.height * a.zoom), Image.Resampling.NEAREST).save(a.out)
    print(a.out)


if __name__ == "__main__":
    main()
