#!/usr/bin/env python3
"""Procedural training data for `builtin:shapes`: 64x64 RGB scenes of one to three coloured shapes.

Each scene has a named background colour and one to three shapes (circle, square, triangle, star,
ring), each with a colour, a size (small, large) and a position (left, right, top, bottom, center),
all positions distinct. The caption names them, e.g. "a large red circle on the left and a small blue
star at the top, on a yellow background". Some captions leave out a size, a position or the
background, so short prompts ("a red circle") also mean something. Everything is deterministic from
the seed. Scenes are drawn at 4x and box-filtered down, so edges are anti-aliased. At another `side` (128
for the UNet's larger-image training) the same layout is scaled to fit.

    /work/venv/bin/python tools/models/shapes_data.py --seed 0 --n 16 --out /tmp/shapes.png
"""
import argparse
import math

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SS = 4  # supersampling factor
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ["circle", "square", "triangle", "star", "ring"]
SIZES = {"small": 7, "large": 14}  # radius in output pixels
POSITIONS = {"left": (14, 32), "right": (50, 32), "top": (32, 14), "bottom": (32, 50), "center": (32, 32)}
POSITION_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom", "center": "in the center"}

# Fields recorded in model.toml.
META = {"output": "image", "width": SIZE, "height": SIZE, "channels": 3}


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, bg):
    """Draws one shape centred at (cx, cy) with radius r (supersampled coordinates)."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        s = r * 0.85
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)], fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=fill)
    elif shape == "ring":
        d.ellipse(box, fill=fill)
        q = r * 0.55
        d.ellipse([cx - q, cy - q, cx + q, cy + q], fill=bg)
    else:
        raise ValueError(shape)


def article(word: str) -> str:
    """"a" or "an" for the word that follows."""
    return "an" if word[0] in "aeiou" else "a"


def scene(rng: np.random.Generator, side: int = SIZE):
    """Returns (side x side x 3 uint8 image, caption) for one random scene."""
    k = side / SIZE  # positions and radii are in 64x64 pixels
    names = list(COLOURS)
    bg = names[rng.integers(len(names))]
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    positions = list(rng.permutation(list(POSITIONS))[:n])
    img = Image.new("RGB", (side * SS, side * SS), COLOURS[bg])
    d = ImageDraw.Draw(img)
    phrases = []
    for pos in positions:
        colour = names[rng.integers(len(names))]
        while colour == bg:
            colour = names[rng.integers(len(names))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = ["small", "large"][rng.integers(2)]
        x, y = POSITIONS[pos]
        jx, jy = rng.uniform(-2.5, 2.5, size=2)
        r = SIZES[size] * rng.uniform(0.9, 1.1)
        _draw_shape(d, shape, (x + jx) * k * SS, (y + jy) * k * SS, r * k * SS, COLOURS[colour], COLOURS[bg])
        words = []
        if rng.random() > 0.15:
            words.append(size)
        words += [colour, shape]
        words.insert(0, article(words[0]))
        if rng.random() > 0.15:
            words.append(POSITION_WORDS[pos])
        phrases.append(" ".join(words))
    caption = " and ".join(phrases)
    if rng.random() > 0.15:
        caption += f", on {article(bg)} {bg} background"
    img = img.resize((side, side), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8), caption


def make_dataset(n: int, seed: int, side: int = SIZE):
    """Returns (n x side x side x 3 uint8 array, list of n captions), deterministic from seed."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, side, side, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        images[i], c = scene(rng, side)
        captions.append(c)
    return images, captions


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--out", default="/tmp/shapes.png")
    a = ap.parse_args()
    images, captions = make_dataset(a.n, a.seed)
    cols = 4
    rows = (a.n + cols - 1) // cols
    grid = np.zeros((rows * SIZE, cols * SIZE, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        grid[(i // cols) * SIZE : (i // cols + 1) * SIZE, (i % cols) * SIZE : (i % cols + 1) * SIZE] = im
    Image.fromarray(grid).resize((cols * SIZE * 2, rows * SIZE * 2), Image.Resampling.NEAREST).save(a.out)
    for i, c in enumerate(captions):
        print(i, c)


if __name__ == "__main__":
    main()
