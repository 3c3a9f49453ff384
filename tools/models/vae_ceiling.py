#!/usr/bin/env python3
"""How much of the shapes quality bars the autoencoder alone lets through: each of quality.py's
prompts is drawn as the scene it describes (the same scenes, from the same seed), passed through the
model's VAE (encode, posterior mean, decode) and scored by quality.py's colour checks. A UNet that
made perfect latents would score this; a generated image scores at most about this. (The melodies
counterpart is `inverse_ceiling.py --vae`.)

    /work/venv/bin/python tools/models/vae_ceiling.py models/shapes/vae [--prompts 200]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.modules.setdefault("torchaudio", None)  # as train.py: the venv's torchaudio breaks diffusers' imports

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vae", help="a model's vae/ folder")
    ap.add_argument("--prompts", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(a.vae).eval()
    items = quality.prompts(a.prompts, 1234)
    bg_ok = col_ok = 0
    misses = []
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "roundtrip.png"
        for caption, bg, colours, img in items:
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
            with torch.no_grad():
                y = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
            Image.fromarray(y.permute(1, 2, 0).add(1).mul(127.5).clamp(0, 255).round().byte().numpy()).save(png)
            b, c, _ = quality.score(png, bg, colours)
            bg_ok, col_ok = bg_ok + b, col_ok + c
            if not (b and c):
                misses.append(caption)
    n = len(items)
    print(json.dumps({
        "vae": a.vae, "scenes": n, "background_dominant": round(bg_ok / n, 4),
        "shape_colours_present": round(col_ok / n, 4), "misses": misses[:10],
    }, indent=1))


if __name__ == "__main__":
    main()
