#!/usr/bin/env python3
"""Procedural training data for `builtin:melodies`: 2.048 s clips from small numpy synths, as mel images.

Five instruments (piano: decaying harmonics; organ: sustained additive drawbars; flute: sine with
vibrato and breath noise; guitar: Karplus-Strong plucked string; bass: low filtered saw) play a major
triad on a root key (C..B) in one of four patterns (a sustained note, an up arpeggio, a down arpeggio,
a chord). Captions read "flute playing an up arpeggio in D". Everything is deterministic from the seed.

Each clip becomes a mel spectrogram image the way Riffusion does it, with the exact mapping recorded
in `AUDIO` (and in the model's model.toml) so the engine's Griffin-Lim can invert it:
- STFT: periodic Hann window of n_fft samples, hop `hop`, frames centred at k*hop (reflect padding),
  the first `frames` frames; power = |X|^2.
- Mel: `n_mels` triangular filters on the HTK mel scale between f_min and f_max, unnormalised
  (torchaudio `melscale_fbanks(norm=None, mel_scale="htk")`).
- dB = 10*log10(max(mel power, 1e-10)); pixel = round(255 * clip((dB - db_min)/(db_max - db_min), 0, 1)).
- Image: row 0 is the highest mel band (low frequencies at the bottom), column k is frame k,
  grayscale replicated to R, G and B. Clips are peak-normalised to 0.5 before the STFT.
- Back to audio: the engine solves mel -> linear spectrum by non-negative least squares per frame
  (`inverse = "nnls"`), then Griffin-Lim.

Why these numbers: pitch has to survive mel -> audio. With 64 bands, n_fft 1024 and the
minimum-norm inverse, the root pitch class of these clips came back right only 8% of the time (chance
level): the inverse puts each note at a filter centre. With 128 bands, n_fft 2048 (hop 512, so the
image stays 64 frames wide), a -30..50 dB range and NNLS it comes back right 82% of the time (96
clips, no model in between; `tools/models/inverse_ceiling.py`) by the lowest-peak detector these
figures were taken with, and 98% by the harmonic-sum detector quality.py now uses.

    /work/venv/bin/python tools/models/melodies_data.py --seed 0 --n 8 --out /tmp/melodies.png
"""
import argparse

import numpy as np

SR = 16000
N_FFT = 2048
HOP = 512
FRAMES = 64
N_MELS = 128
F_MIN = 30.0
F_MAX = 8000.0
DB_MIN = -30.0
DB_MAX = 50.0
SAMPLES = FRAMES * HOP  # 32768 samples = 2.048 s
KEYS = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
INSTRUMENTS = ["piano", "organ", "flute", "guitar", "bass"]
OCTAVE = {"piano": 4, "organ": 4, "flute": 5, "guitar": 3, "bass": 2}
PATTERNS = {"sustained": "a sustained note", "up": "an up arpeggio", "down": "a down arpeggio", "chord": "a chord"}

AUDIO = {
    "sample_rate": SR,
    "seconds": SAMPLES / SR,
    "frames": FRAMES,
    "n_fft": N_FFT,
    "hop": HOP,
    "window": "hann-periodic",
    "center": True,
    "power": 2.0,
    "n_mels": N_MELS,
    "f_min": F_MIN,
    "f_max": F_MAX,
    "mel_scale": "htk",
    "mel_norm": "none",
    "db_min": DB_MIN,
    "db_max": DB_MAX,
    "pixel": "255 * clip((10*log10(max(mel_power, 1e-10)) - db_min) / (db_max - db_min), 0, 1)",
    "rows": "row 0 = highest mel band",
    "channels": "gray replicated to RGB",
    "peak": 0.5,
    "inverse": "nnls",
}
# Fields recorded in model.toml.
META = {"output": "mel-spectrogram", "width": FRAMES, "height": N_MELS, "channels": 3, "audio": AUDIO}


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filters():
    """(n_mels, n_fft//2+1) triangular HTK filters, unnormalised, as torchaudio.melscale_fbanks."""
    freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(F_MIN), hz_to_mel(F_MAX), N_MELS + 2))
    diff = np.diff(pts)
    slopes = pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).T


FB = mel_filters()
WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)


def mel_image(audio):
    """SAMPLES mono floats -> (N_MELS, FRAMES, 3) uint8 image, by the mapping in AUDIO."""
    x = np.pad(audio, N_FFT // 2, mode="reflect")
    idx = np.arange(FRAMES)[:, None] * HOP + np.arange(N_FFT)[None, :]
    spec = np.abs(np.fft.rfft(x[idx] * WINDOW, axis=1)) ** 2  # (frames, bins)
    mel = FB @ spec.T  # (n_mels, frames)
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    g = np.round(255 * np.clip((db - DB_MIN) / (DB_MAX - DB_MIN), 0, 1)).astype(np.uint8)
    return np.repeat(g[::-1, :, None], 3, axis=2)


def envelope(n, attack, release):
    e = np.ones(n)
    a, r = min(n, int(attack * SR)), min(n, int(release * SR))
    e[:a] = np.linspace(0, 1, a, endpoint=False)
    if r:
        e[n - r :] *= np.linspace(1, 0, r)
    return e


def karplus_strong(f, n, rng, decay=0.996):
    """Plucked string: a noise burst recirculated through a delay line with a two-tap average."""
    p = max(2, int(round(SR / f)))
    y = np.zeros(n + p + 1)
    y[: p + 1] = rng.uniform(-1, 1, p + 1)
    i = p + 1
    while i < len(y):
        j = min(len(y), i + p)
        y[i:j] = decay * 0.5 * (y[i - p : j - p] + y[i - p - 1 : j - p - 1])
        i = j
    return y[p + 1 :][:n]


def note(instrument, f, n, rng):
    """One note of n samples at frequency f."""
    t = np.arange(n) / SR
    if instrument == "piano":
        out = sum(np.sin(2 * np.pi * f * k * np.sqrt(1 + 0.0004 * k * k) * t) / k * np.exp(-t * (1.2 + 0.9 * k)) for k in range(1, 9))
        return out * envelope(n, 0.004, 0.03)
    if instrument == "organ":
        amps = {1: 1.0, 2: 0.6, 3: 0.4, 4: 0.3, 6: 0.15, 8: 0.1}
        out = sum(a * np.sin(2 * np.pi * f * k * t) for k, a in amps.items())
        return out * envelope(n, 0.02, 0.03)
    if instrument == "flute":
        vib = 1 + 0.004 * np.sin(2 * np.pi * 5.0 * t)
        phase = 2 * np.pi * f * np.cumsum(vib) / SR
        tone = np.sin(phase) + 0.15 * np.sin(2 * phase) + 0.05 * np.sin(3 * phase)
        noise = rng.standard_normal(n)
        noise = np.convolve(noise, np.ones(4) / 4, mode="same") * 0.08
        return (tone + noise) * envelope(n, 0.06, 0.05)
    if instrument == "guitar":
        return karplus_strong(f, n, rng) * envelope(n, 0.0, 0.02)
    if instrument == "bass":
        out = sum((-1) ** (k + 1) * np.sin(2 * np.pi * f * k * t) / k * np.exp(-t * 0.8 * k) for k in range(1, 7))
        return out * envelope(n, 0.01, 0.04)
    raise ValueError(instrument)


def clip(rng):
    """Returns (SAMPLES-long audio, caption) for one random clip."""
    inst = INSTRUMENTS[rng.integers(len(INSTRUMENTS))]
    key = int(rng.integers(12))
    pattern = list(PATTERNS)[rng.integers(len(PATTERNS))]
    root = 12 * (OCTAVE[inst] + 1) + key
    triad = [root, root + 4, root + 7, root + 12]
    freq = lambda m: 440.0 * 2 ** ((m - 69) / 12) * (1 + rng.uniform(-0.002, 0.002))  # noqa: E731
    audio = np.zeros(SAMPLES)
    start = int(rng.uniform(0.0, 0.08) * SR)
    if pattern in ("sustained", "chord"):
        n = SAMPLES - start - int(rng.uniform(0.05, 0.25) * SR)
        for m in ([root] if pattern == "sustained" else triad[:3]):
            audio[start : start + n] += note(inst, freq(m), n, rng)
    else:
        seq = triad if pattern == "up" else triad[::-1]
        step = int((SAMPLES - start) / 4)
        for i, m in enumerate(seq):
            s = start + i * step
            n = min(SAMPLES - s, int(step * 1.1))
            audio[s : s + n] += note(inst, freq(m), n, rng) * rng.uniform(0.8, 1.0)
    audio *= AUDIO["peak"] / max(1e-9, np.abs(audio).max())
    caption = f"{inst} playing {PATTERNS[pattern]} in {KEYS[key]}"
    return audio, caption


def make_dataset(n: int, seed: int):
    """Returns (n x N_MELS x FRAMES x 3 uint8 mel images, list of n captions), deterministic from seed."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, N_MELS, FRAMES, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        audio, c = clip(rng)
        images[i] = mel_image(audio)
        captions.append(c)
    return images, captions


def main():
    from PIL import Image
    import wave

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out", default="/tmp/melodies.png")
    ap.add_argument("--wav", default=None, help="also write the first clip as a 16-bit WAV")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    clips = [clip(rng) for _ in range(a.n)]
    images = [mel_image(x) for x, _ in clips]
    grid = np.concatenate([np.concatenate(images[i : i + 2], axis=1) for i in range(0, a.n - a.n % 2, 2)], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(a.out)
    for i, (_, c) in enumerate(clips):
        print(i, c)
    if a.wav:
        with wave.open(a.wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SR)
            w.writeframes((clips[0][0] * 32767).astype("<i2").tobytes())


if __name__ == "__main__":
    main()
