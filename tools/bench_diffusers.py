#!/usr/bin/env python3
"""Runs `headroom bench`'s request in diffusers on the same weights and prints the ratios.

    headroom bench --setting precision=f32 --json > /tmp/hr.json     # writes the mini model once
    /work/venv/bin/python tools/bench_diffusers.py ~/.local/share/headroom/bench/mini-sd /tmp/hr.json

Same folder, prompt, size, steps, guidance 7.5 and DDIM; f32 on the CPU with torch's default
threads. Prints load / step / decode milliseconds and peak RSS for diffusers, and Headroom's f32 row
divided by them (below 1.0 means Headroom is faster or leaner). Never run by CI.
"""
import json
import resource
import sys
import time

sys.modules.setdefault("torchaudio", None)  # not needed; a mismatched build breaks transformers

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline


def main():
    folder, hr_json = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    hr = json.load(open(hr_json)) if hr_json else None
    steps = hr["steps"] if hr else 3
    size = hr["size"] if hr else 256
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_ms = (time.perf_counter() - t0) * 1e3

    def timed(obj, attr):
        """Wraps obj.attr so that each call's milliseconds are appended to the returned list."""
        times, inner = [], getattr(obj, attr)

        def wrapper(*a, **k):
            t = time.perf_counter()
            out = inner(*a, **k)
            times.append((time.perf_counter() - t) * 1e3)
            return out

        setattr(obj, attr, wrapper)
        return times

    step_times = timed(pipe.unet, "forward")
    decode_ms = timed(pipe.vae, "decode")
    with torch.no_grad():
        pipe("a photograph of a lighthouse on a cliff at sunset", num_inference_steps=steps, guidance_scale=7.5,
             height=size, width=size, generator=torch.Generator().manual_seed(0), output_type="np")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    d = {"load_ms": load_ms, "step_ms": sum(step_times) / len(step_times), "decode_ms": sum(decode_ms),
         "peak_rss_bytes": rss, "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps({"diffusers": d}, indent=1))
    if hr:
        f32 = next((r for r in hr["rows"] if r["setting"] == "precision=f32"), hr["rows"][0])
        print(f"headroom {f32['setting']} / diffusers f32:")
        for k in ("load_ms", "step_ms", "decode_ms", "peak_rss_bytes"):
            print(f"  {k:<15} {f32[k]:>14.1f} / {d[k]:>14.1f} = {f32[k] / d[k]:.2f}x")


if __name__ == "__main__":
    main()
