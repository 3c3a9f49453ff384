#!/usr/bin/env python3
"""Trains the embedded default models (`builtin:shapes`, `builtin:melodies`) from generated data.

Three stages, one process, one CPU thread:
1. a small AutoencoderKL (64x64x3 -> 4x8x8, 8x smaller per side, as Stable Diffusion's VAE), trained
   with L1 + MSE reconstruction (pixels off the image's background weigh 5x: with even weights the
   small shapes' colours and the thin harmonics that carry pitch are what a small VAE gives up) and
   a small KL term; its `scaling_factor` is set to 1/std of the latents so the UNet sees
   unit-variance latents;
2. a tiny CLIPTextModel (full 49408-token CLIP vocabulary, small hidden size) and a small
   UNet2DConditionModel with cross-attention, trained jointly with the standard epsilon-prediction
   DDPM loss (scaled_linear betas 0.00085..0.012, 1000 steps), captions dropped 10% of the time so
   classifier-free guidance works;
3. export in the diffusers Stable Diffusion layout with safetensors weights, plus model.toml.
The exported UNet and text encoder are an exponential moving average of the trained weights.

`--resume` continues stage 2 from the model already in `--out` (its VAE, and so its latent space,
is kept); the manifest's command is then the chain of commands that built the model.

    /work/venv/bin/python tools/models/train.py --model shapes --seed 0 --minutes 20
    /work/venv/bin/python tools/models/train.py --model shapes --seed 1 --minutes 70 --resume
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread: numpy's BLAS threads only contend on a busy machine

import argparse  # noqa: E402
import importlib  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402

sys.modules.setdefault("torchaudio", None)  # unused; a build for another CUDA than torch's breaks transformers' imports

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

import model_toml  # noqa: E402

BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SETTINGS = {
    # samples, share of the time for the VAE, its batch and foreground weight (see train_vae), hidden
    # size of the text encoder, UNet widths
    "shapes": dict(samples=20000, vae_share=0.2, vae_batch=8, vae_fg_weight=4.0, text_hidden=32, unet_channels=(32, 64, 64)),
    "melodies": dict(samples=8000, vae_share=0.2, vae_batch=16, vae_fg_weight=4.0, text_hidden=32, unet_channels=(32, 64, 64)),
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_vae(meta):
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=meta["height"],
    )


def make_text_encoder(hidden):
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(cfg)


def make_unet(meta, channels, cross_dim):
    n = len(channels)
    return UNet2DConditionModel(
        sample_size=meta["height"] // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=channels,
        layers_per_block=1,
        cross_attention_dim=cross_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def to_tensor(images):
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae, images, seconds, rng, batch=16, lr=1e-3, fg_weight=0.0):
    """Trains for `seconds`; returns stats. With `fg_weight` > 0, pixels that differ from their
    image's background (its per-channel median) weigh 1 + fg_weight in the loss, so small shapes are
    not traded for a slightly better background."""
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    t0, step, ema = time.time(), 0, float("nan")
    while time.time() - t0 < seconds:
        idx = rng.integers(0, len(images), batch)
        x = to_tensor(images[idx])
        if x.shape[3] > x.shape[2]:  # wide mel images: square crops at a multiple of 8 (half the cost)
            c = 8 * int(rng.integers(0, (x.shape[3] - x.shape[2]) // 8 + 1))
            x = x[:, :, :, c : c + x.shape[2]]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        w = torch.ones_like(x[:, :1])
        if fg_weight > 0:
            bg = x.flatten(2).median(dim=2).values[:, :, None, None]
            w = w + fg_weight * ((x - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()
        err = rec - x
        l1 = (w * err.abs()).mean() / w.mean()
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + (w * err.square()).mean() / w.mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema = mse.item() if math.isnan(ema) else 0.98 * ema + 0.02 * mse.item()
        if step % 100 == 0:
            log(f"vae step {step} mse {ema:.4f} kl {kl.item():.3f}")
    return dict(steps=step, final_mse=ema, seconds=time.time() - t0, batch=batch)


@torch.no_grad()
def encode_all(vae, images, batch=64):
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(to_tensor(images[i : i + batch])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def train_diffusion(text_encoder, unet, ids, mean, std, scale, seconds, rng, batch=32, lr=1e-3, ema_decay=0.999,
                    extra=None):
    """Trains for `seconds`; returns stats. On return the modules hold the moving average of their
    weights (decay `ema_decay`, ramped up over the first steps as (1 + n) / (10 + n)).
    `extra` = (ids, mean, std, batch, share): a second set of latents (larger images) that a random
    `share` of the steps train on instead, `batch` at a time."""
    sched = DDPMScheduler(**BETAS)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    ema = [p.detach().clone() for p in params]
    empty = ids[-1]  # the tokenized empty caption, appended last
    t0, step, avg = time.time(), 0, float("nan")
    sets, extra_steps = (ids, mean, std, batch), 0
    while time.time() - t0 < seconds:
        big = extra is not None and rng.random() < extra[4]
        ids, mean, std, batch = extra[:4] if big else sets
        extra_steps += big
        idx = torch.from_numpy(rng.integers(0, len(mean), batch))
        lat = (mean[idx] + std[idx] * torch.randn_like(mean[idx])) * scale
        tok = ids[idx].clone()
        tok[torch.from_numpy(rng.random(batch) < 0.1)] = empty
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (batch,))
        noisy = sched.add_noise(lat, noise, t)
        cond = text_encoder(tok)[0]
        pred = unet(noisy, t, cond).sample
        loss = F.mse_loss(pred, noise)
        # linear warm-up over 200 steps, then cosine decay to 10% over the expected budget
        frac = min(1.0, (time.time() - t0) / seconds)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - min(ema_decay, (1 + step) / (10 + step)))
        step += 1
        avg = loss.item() if math.isnan(avg) else 0.99 * avg + 0.01 * loss.item()
        if step % 200 == 0:
            log(f"diffusion step {step} loss {avg:.4f}")
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return dict(steps=step, final_loss=avg, seconds=time.time() - t0, batch=sets[3], ema_decay=ema_decay,
                extra_steps=extra_steps)


def install_tokenizer(out: Path):
    """Replaces the saved tokenizer/ with the project's CLIP vocabulary files (vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json), the layout Stable Diffusion checkpoints ship."""
    tok = out / "tokenizer"
    shutil.rmtree(tok, ignore_errors=True)
    tok.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(REPO / "assets" / "clip" / name, tok / name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(SETTINGS), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=20.0, help="training time, both stages together")
    ap.add_argument("--samples", type=int, default=None, help="override the number of generated samples")
    ap.add_argument("--out", default=None, help="default: models/<model>")
    ap.add_argument("--resume", action="store_true", help="continue stage 2 from the model in --out, keeping its VAE")
    ap.add_argument("--extra-size", type=int, default=None,
                    help="also train the UNet on scenes drawn at this size (shapes: 128), so larger outputs look right")
    ap.add_argument("--extra-share", type=float, default=0.3, help="share of the UNet's steps on --extra-size scenes")
    a = ap.parse_args()
    command = "/work/venv/bin/python tools/models/train.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    s = dict(SETTINGS[a.model])
    if a.samples:
        s["samples"] = a.samples
    data = importlib.import_module(f"{a.model}_data")
    meta = data.META
    out = Path(a.out) if a.out else REPO / "models" / a.model
    started = time.time()

    log(f"generating {s['samples']} samples")
    images, captions = data.make_dataset(s["samples"], a.seed)
    tokenizer = CLIPTokenizer.from_pretrained(REPO / "assets" / "clip")
    ids = tokenizer(captions + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    gen_s = time.time() - started

    previous = {}
    if a.resume:
        previous = tomllib.loads((out / "model.toml").read_text())
        vae = AutoencoderKL.from_pretrained(out / "vae")
        vae.eval()
        mean, std = encode_all(vae, images)
        scale = float(vae.config.scaling_factor)
        prev = previous["training"]
        vae_stats = dict(steps=prev["vae_steps"], batch=prev["vae_batch"], final_mse=prev["vae_final_mse"])
        text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder")
        unet = UNet2DConditionModel.from_pretrained(out / "unet")
        log(f"resuming from {out} ({prev['steps']} steps), scaling_factor {scale:.4f}")
    else:
        vae = make_vae(meta)
        vae_stats = train_vae(vae, images, a.minutes * 60 * s["vae_share"], rng, batch=s["vae_batch"], fg_weight=s["vae_fg_weight"])
        vae.eval()
        mean, std = encode_all(vae, images)
        scale = float(1.0 / mean.std())
        vae.register_to_config(scaling_factor=scale)
        log(f"latents {tuple(mean.shape[1:])}, scaling_factor {scale:.4f}")
        text_encoder = make_text_encoder(s["text_hidden"])
        unet = make_unet(meta, s["unet_channels"], s["text_hidden"])
    extra = None
    if a.extra_size:
        t_extra = time.time()
        n = s["samples"] // 4
        log(f"generating {n} samples at {a.extra_size}x{a.extra_size}")
        big, big_captions = data.make_dataset(n, a.seed + 1000, side=a.extra_size)
        big_ids = tokenizer(big_captions + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        big_mean, big_std = encode_all(vae, big, batch=16)
        # a quarter of the batch: the same pixels per step as the native size
        extra = (big_ids, big_mean, big_std, max(1, 32 * meta["width"] ** 2 // a.extra_size**2), a.extra_share)
        del big
        gen_s += time.time() - t_extra
    text_encoder.train()
    unet.train()
    remaining = a.minutes * 60 - (time.time() - started - gen_s)
    diff_stats = train_diffusion(text_encoder, unet, ids, mean, std, scale, remaining, rng, extra=extra)
    text_encoder.eval()
    unet.eval()

    scheduler = PNDMScheduler(**BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    for sub in ("text_encoder", "tokenizer", "unet", "vae", "scheduler"):
        shutil.rmtree(out / sub, ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    for cfg in out.glob("*/config.json"):  # a resumed model's configs would name this machine's path
        lines = cfg.read_text().splitlines(keepends=True)
        cfg.write_text("".join(l for l in lines if '"_name_or_path"' not in l))
    install_tokenizer(out)
    minutes = (time.time() - started) / 60
    prev = previous.get("training", {})
    if previous:  # one command that rebuilds the model: the chain that built it
        command = previous["command"] + " && " + command
    model_toml.write(
        out, a.model, meta, command,
        training=dict(
            samples=s["samples"], data_seconds=round(gen_s, 1),
            vae_steps=vae_stats["steps"], vae_batch=vae_stats["batch"], vae_final_mse=round(vae_stats["final_mse"], 5),
            steps=prev.get("steps", 0) + diff_stats["steps"], batch=diff_stats["batch"],
            final_loss=round(diff_stats["final_loss"], 5), ema_decay=diff_stats["ema_decay"],
            minutes=round(prev.get("minutes", 0) + minutes, 2), threads=1, torch=torch.__version__,
            **({"extra_size": a.extra_size or prev.get("extra_size"), "extra_steps": prev.get("extra_steps", 0) + diff_stats["extra_steps"]}
               if a.extra_size or "extra_size" in prev else {}),
        ),
    )
    log(f"wrote {out} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
