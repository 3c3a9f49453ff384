"""Writes torchaudio's references for the engine's spectrogram tests:
tests/fixtures/spectrogram/refs.safetensors (float32 tensors, about 0.9 MB).

Run from the repository root: /work/venv/bin/python tools/make_spectrogram_fixtures.py

Small STFT (16 kHz, n_fft 512, window 400, hop 160, 40 HTK mels 30-7600 Hz, power 2):
- wave: 0.5 s test signal (a 440 Hz tone plus a 200->2000 Hz linear chirp), 8000 samples
- small_fb, small_fb_slaney: melscale_fbanks (257 x 40), HTK/no norm and Slaney scale/Slaney norm
- small_mel: MelSpectrogram(wave) (40 x 51)
- small_linear: InverseMelScale(small_mel) (257 x 51), the least-squares inverse then relu
- small_gl: GriffinLim(small_linear, power=2, 32 iterations, momentum 0.99, rand_init=False)
- small_gl_sc: spectral convergence of small_gl against sqrt(small_linear)
builtin:melodies (16 kHz, n_fft 2048, hop 512, 128 HTK mels 30-8000 Hz; read from melodies_data):
- melodies_fb: its filterbank (1025 x 128)
- melodies_image: tools/models/melodies_data.mel_image of the first 2.048 s of wave tiled (128 x 64, 0..255)
Riffusion (44.1 kHz, n_fft 17640, 512 HTK mels 0-10 kHz):
- riffusion_fb_cols: columns 0, 1, 255, 511 of its filterbank over bins 0..4095 (4096 x 4)
"""

import sys
from pathlib import Path

import numpy as np
import torch

# torchaudio refuses to import when its CUDA build differs from torch's; these transforms are pure
# Python on the CPU, so hide torch's CUDA version from that check.
torch.version.cuda = None
import torchaudio.functional as F  # noqa: E402
import torchaudio.transforms as T  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "models"))
import melodies_data  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "spectrogram"
SR = 16000


def test_wave(n):
    t = np.arange(n) / SR
    chirp = np.sin(2 * np.pi * (200 * t + 0.5 * (2000 - 200) / (n / SR) * t * t))
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * chirp).astype(np.float32)


def spectral_convergence(wave, target_mag, n_fft, win, hop):
    s = torch.stft(wave, n_fft, hop, win, torch.hann_window(win), center=True, pad_mode="reflect",
                   return_complex=True).abs()
    return float(torch.linalg.norm(s - target_mag) / torch.linalg.norm(target_mag))


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    wave = torch.from_numpy(test_wave(8000))
    n_fft, win, hop, n_mels, fmin, fmax = 512, 400, 160, 40, 30.0, 7600.0
    small_fb = F.melscale_fbanks(n_fft // 2 + 1, fmin, fmax, n_mels, SR, None, "htk")
    small_fb_slaney = F.melscale_fbanks(n_fft // 2 + 1, fmin, fmax, n_mels, SR, "slaney", "slaney")
    mel = T.MelSpectrogram(SR, n_fft=n_fft, win_length=win, hop_length=hop, f_min=fmin, f_max=fmax,
                           n_mels=n_mels, power=2.0, norm=None, mel_scale="htk")(wave)
    linear = T.InverseMelScale(n_fft // 2 + 1, n_mels, SR, fmin, fmax, norm=None, mel_scale="htk")(mel)
    gl = T.GriffinLim(n_fft=n_fft, n_iter=32, win_length=win, hop_length=hop, power=2.0, momentum=0.99,
                      rand_init=False)(linear)
    sc = spectral_convergence(gl, linear.sqrt(), n_fft, win, hop)
    print(f"torchaudio griffin-lim spectral convergence: {sc:.4f}")

    md = melodies_data
    mfb = F.melscale_fbanks(md.N_FFT // 2 + 1, md.F_MIN, md.F_MAX, md.N_MELS, md.SR, None, "htk")
    assert np.abs(mfb.numpy() - melodies_data.FB.T).max() < 2e-5  # float32 band edges in torchaudio
    clip = np.tile(test_wave(8000).astype(np.float64), 5)[: melodies_data.SAMPLES]
    image = melodies_data.mel_image(clip)[:, :, 0].astype(np.float32)

    rfb = F.melscale_fbanks(17640 // 2 + 1, 0.0, 10000.0, 512, 44100, None, "htk")
    cols = rfb[:4096, [0, 1, 255, 511]].contiguous()

    tensors = {
        "wave": wave,
        "small_fb": small_fb,
        "small_fb_slaney": small_fb_slaney,
        "small_mel": mel,
        "small_linear": linear,
        "small_gl": gl,
        "small_gl_sc": torch.tensor([sc]),
        "melodies_fb": mfb,
        "melodies_image": torch.from_numpy(image),
        "riffusion_fb_cols": cols,
    }
    tensors = {k: v.contiguous().float() for k, v in tensors.items()}
    save_file(tensors, OUT / "refs.safetensors")
    print({k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
