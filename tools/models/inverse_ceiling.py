#!/usr/bin/env python3
"""How much pitch the melodies representation can carry, with no model in between: each clip of the
quality prompts goes clip -> mel image (melodies_data.mel_image) -> linear spectrum (minimum-norm
least squares, or non-negative least squares) -> 32 Griffin-Lim iterations (zero initial phase) ->
quality.py's detector. With `--vae`, the mel image first goes through a model's autoencoder
(encode, posterior mean, decode): about what a perfect UNet could reach. Prints the share of clips
whose root pitch class and pattern come back right: the ceiling for `quality.py melodies`. A numpy
stand-in for the engine's path (whose Griffin-Lim differs in detail, so the engine can land a few
points either side), for trying representations before training on one; the defaults are
melodies_data's own.

    /work/venv/bin/python tools/models/inverse_ceiling.py --clips 96                     # as trained
    /work/venv/bin/python tools/models/inverse_ceiling.py --clips 60 --n-mels 64 --n-fft 1024 --hop 256 \\
        --frames 128 --db -40 40 --inverse lstsq                                          # the old one
    /work/venv/bin/python tools/models/inverse_ceiling.py --clips 96 --vae models/melodies/vae  # + the VAE
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.optimize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import melodies_data as md  # noqa: E402
import quality  # noqa: E402


def to_audio(img, inverse, iters=32):
    g = img[::-1, :, 0].astype(np.float64) / 255
    mel = 10 ** ((g * (md.DB_MAX - md.DB_MIN) + md.DB_MIN) / 10)
    if inverse == "lstsq":
        spec = np.maximum(np.linalg.pinv(md.FB) @ mel, 0)
    else:
        spec = np.stack([scipy.optimize.nnls(md.FB, mel[:, k])[0] for k in range(md.FRAMES)], 1)
    mag, ang = np.sqrt(spec), np.zeros_like(spec)
    n, w, h, nfft = md.FRAMES * md.HOP, md.WINDOW, md.HOP, md.N_FFT
    idx = np.arange(md.FRAMES)[:, None] * h + np.arange(nfft)[None, :]
    for _ in range(iters):
        frames = np.fft.irfft((mag * np.exp(1j * ang)).T, n=nfft, axis=1) * w
        y, wsum = np.zeros(n + nfft), np.zeros(n + nfft)
        for k in range(md.FRAMES):
            y[k * h : k * h + nfft] += frames[k]
            wsum[k * h : k * h + nfft] += w**2
        y = (y / np.maximum(wsum, 1e-8))[nfft // 2 : nfft // 2 + n]
        ang = np.angle(np.fft.rfft(np.pad(y, nfft // 2, mode="reflect")[idx] * w, axis=1)).T
    return y


def vae_roundtrip(vae_dir):
    """A function image -> image through the autoencoder in `vae_dir` (needs PyTorch and diffusers)."""
    sys.modules.setdefault("torchaudio", None)  # as train.py: the venv's torchaudio breaks diffusers' imports
    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()

    def roundtrip(img):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
        return (y.permute(1, 2, 0).add(1.0).mul(127.5).clamp(0, 255).round().byte().numpy())

    return roundtrip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--n-mels", type=int, default=md.N_MELS)
    ap.add_argument("--f-max", type=float, default=md.F_MAX)
    ap.add_argument("--n-fft", type=int, default=md.N_FFT)
    ap.add_argument("--hop", type=int, default=md.HOP)
    ap.add_argument("--frames", type=int, default=md.FRAMES)
    ap.add_argument("--db", type=float, nargs=2, default=(md.DB_MIN, md.DB_MAX), metavar=("MIN", "MAX"))
    ap.add_argument("--inverse", choices=["nnls", "lstsq"], default="nnls")
    ap.add_argument("--vae", default=None, help="a model's vae/ folder to pass each image through")
    a = ap.parse_args()
    md.N_MELS, md.F_MAX, md.N_FFT, md.HOP, md.FRAMES = a.n_mels, a.f_max, a.n_fft, a.hop, a.frames
    md.SAMPLES, (md.DB_MIN, md.DB_MAX) = a.frames * a.hop, a.db
    md.WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(a.n_fft) / a.n_fft)
    md.FB = md.mel_filters()
    through = vae_roundtrip(a.vae) if a.vae else (lambda img: img)
    items = quality.melody_prompts(a.clips, 4321)
    root = low = pattern = 0
    for _, key, pat, audio in items:
        pc, heard, lowest = quality.detect(to_audio(through(md.mel_image(audio)), a.inverse).astype(np.float32), md.SR)
        root, low = root + (pc == md.KEYS.index(key)), low + (lowest == md.KEYS.index(key))
        pattern += heard == pat
    n = len(items)
    print(f"{vars(a)}: root {root / n:.2f} (lowest-peak detector {low / n:.2f}), pattern {pattern / n:.2f} ({n} clips)")


if __name__ == "__main__":
    main()
