#!/usr/bin/env python3
"""Headroom against its peers on one random-weight Stable Diffusion 1.5-shaped model.

    /work/venv/bin/python tools/peer_bench.py                          # SD 1.5 shapes, 512², 4 steps, 2 threads
    /work/venv/bin/python tools/peer_bench.py --shape mini --size 128 --steps 2    # the same in a few minutes
    /work/venv/bin/python tools/peer_bench.py --only headroom,sdcpp --settings f32 q8_0 --json /tmp/peers.json
    /work/venv/bin/python tools/peer_bench.py --settings headroom:precision=q4_0 sdcpp:f16

Builds the model once under --work (diffusers folder for Headroom and diffusers, an original-LDM
single .safetensors and GGUF conversions for stable-diffusion.cpp), then runs one request (the
prompt below, seed 0, guidance 7.5, DDIM, --steps, --size², one image) per runner and setting,
each in its own process, watched from outside for peak RSS. Prints one Markdown table per
precision group and one for Headroom's slicing settings, with Headroom ÷ peer ratios, then the
fairness notes.

--settings takes group names (f32, f16, q8_0, q4, slicing: every runner's default run in that
group) or RUNNER:SETTING (headroom:<knob list>, diffusers:f32|bf16, sdcpp:<sd.cpp --type>).
Runners: Headroom (HEADROOM_BIN or target/release/headroom), diffusers on torch's CPU, and
stable-diffusion.cpp through PyPI's cyllama (0.2.18 bundles sd.cpp master-612, which builds SD 1.x
at SD 1.5's fixed widths: its rows fail with --shape mini). Logs of every run are kept in
--work/SHAPE/logs. Python here is a measuring tool only; never run by CI.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP_VOCAB = REPO / "assets" / "clip"
PROMPT = "a photograph of a lighthouse on a cliff at sunset"
GUIDANCE = 7.5
SEED = 0

SHAPES = {
    "sd15": {"unet": [320, 640, 1280, 1280], "heads": 8, "text_hidden": 768, "text_layers": 12,
             "text_heads": 12, "vae": [128, 256, 512, 512]},
    "mini": {"unet": [64, 128, 256, 256], "heads": 8, "text_hidden": 256, "text_layers": 4,
             "text_heads": 4, "vae": [32, 64, 128, 128]},
}
LAYERS_PER_BLOCK = 2

GROUPS = ("f32", "f16", "q8_0", "q4", "slicing")
GROUP_TITLES = {"f32": "f32", "f16": "f16 / bf16", "q8_0": "q8_0", "q4": "q4k / q4_0",
                "slicing": "Headroom's slicing settings (f32) against the f32 peers"}
DEFAULT_SETTINGS = {
    "headroom": ["precision=f32", "precision=f16", "precision=bf16", "precision=q8_0", "precision=q4k",
                 "precision=f32,slicing.attention_slice=1024", "precision=f32,slicing.vae_tile=32"],
    "diffusers": ["f32", "bf16"],
    "sdcpp": ["f32", "q8_0", "q4_0", "q4_k"],
}


# ---------------------------------------------------------------- the model

def build_pipeline(shape):
    """A diffusers StableDiffusionPipeline of `shape`, random f32 weights from a fixed torch seed."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    s = SHAPES[shape]
    torch.manual_seed(SEED)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=s["text_hidden"], intermediate_size=4 * s["text_hidden"],
        num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"], max_position_embeddings=77,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=s["text_hidden"],
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=s["unet"],
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=LAYERS_PER_BLOCK, cross_attention_dim=s["text_hidden"], attention_head_dim=s["heads"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=s["vae"], layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512, scaling_factor=0.18215)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
        timestep_spacing="leading")
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(CLIP_VOCAB), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def ldm_resnet(rest, vae):
    """diffusers resnet sub-names → LDM's (UNet: in_layers/out_layers; VAE: norm/conv as they are)."""
    if vae:
        return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest
    for src, dst in (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                     ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")):
        if rest.startswith(src):
            return dst + rest[len(src):]
    raise KeyError(rest)


def ldm_unet_name(key, up_attention):
    """A diffusers UNet2DConditionModel name → its `model.diffusion_model.*` name.

    LDM numbers blocks flat: input block 0 is conv_in, then per level LAYERS_PER_BLOCK (resnet,
    attention) blocks and a downsampler; each up level has LAYERS_PER_BLOCK + 1 blocks, whose last
    also holds the upsampler after its attention, if the level has one (`up_attention`).
    """
    n = LAYERS_PER_BLOCK + 1
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for src, dst in fixed.items():
        if key.startswith(src):
            return dst + key[len(src):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + i * n + j}." + (f"0.{ldm_resnet(rest, False)}" if kind == "resnets" else f"1.{rest}")
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{ldm_resnet(m[2], False)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{i * n + j}." + (f"0.{ldm_resnet(rest, False)}" if kind == "resnets" else f"1.{rest}")
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        i = int(m[1])
        return f"output_blocks.{i * n + n - 1}.{2 if i in up_attention else 1}.{m[2]}"
    raise KeyError(key)


def ldm_vae_name(key, levels):
    """A diffusers AutoencoderKL name → its `first_stage_model.*` name (decoder levels count up from
    the lowest resolution in diffusers, from the highest in LDM)."""
    if m := re.match(r"(encoder|decoder)\.(.*)", key):
        side, rest = m[1], m[2]
        attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        if rest.startswith("conv_norm_out."):
            inner = "norm_out." + rest[len("conv_norm_out."):]
        elif a := re.match(r"mid_block\.resnets\.(\d)\.(.*)", rest):
            inner = f"mid.block_{int(a[1]) + 1}.{ldm_resnet(a[2], True)}"
        elif a := re.match(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", rest):
            inner = f"mid.attn_1.{attention[a[1]]}.{a[2]}"
        elif a := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
            inner = f"down.{a[1]}.block.{a[2]}.{ldm_resnet(a[3], True)}"
        elif a := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.(.*)", rest):
            inner = f"down.{a[1]}.downsample.{a[2]}"
        elif a := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
            inner = f"up.{levels - 1 - int(a[1])}.block.{a[2]}.{ldm_resnet(a[3], True)}"
        elif a := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest):
            inner = f"up.{levels - 1 - int(a[1])}.upsample.{a[2]}"
        else:
            inner = rest
        return f"{side}.{inner}"
    return key


def ldm_state_dict(pipe):
    """The pipeline's weights under the original LDM single-file names (what sd.cpp reads)."""
    up_attention = {i for i, t in enumerate(pipe.unet.config.up_block_types) if "CrossAttn" in t}
    out = {f"model.diffusion_model.{ldm_unet_name(k, up_attention)}": v for k, v in pipe.unet.state_dict().items()}
    levels = len(pipe.vae.config.block_out_channels)
    for k, v in pipe.vae.state_dict().items():
        if ".mid_block.attentions.0.to_" in k and k.endswith("weight") and v.dim() == 2:
            v = v.reshape(*v.shape, 1, 1)  # LDM's mid attention projections are 1×1 convolutions
        out[f"first_stage_model.{ldm_vae_name(k, levels)}"] = v
    for k, v in pipe.text_encoder.state_dict().items():  # transformers 5 drops the text_model. prefix
        out[f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}"] = v
    return {k: v.contiguous() for k, v in out.items()}


@dataclass
class ModelFiles:
    """Where one shape's model lives under --work."""
    root: Path

    @property
    def diffusers(self):
        return self.root / "diffusers"

    @property
    def ldm(self):
        return self.root / "ldm-f32.safetensors"

    def gguf(self, qtype):
        return self.root / f"sdcpp-{qtype}.gguf"

    @property
    def stamp(self):
        return self.root / "build.json"


def build_model(shape, files):
    """Writes the diffusers folder and the LDM file of `shape` (in this process; `_build` runs it)."""
    import torch
    from safetensors.torch import save_file

    tmp = files.root.with_name(files.root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe = build_pipeline(shape)
    pipe.save_pretrained(tmp / "diffusers", safe_serialization=True)
    for f in ("vocab.json", "merges.txt"):  # transformers 5 saves only tokenizer.json; Headroom reads these
        shutil.copy(CLIP_VOCAB / f, tmp / "diffusers" / "tokenizer" / f)
    save_file(ldm_state_dict(pipe), tmp / files.ldm.name, metadata={"format": "pt"})
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("text_encoder", "unet", "vae")}
    stamp = {"shape": shape, "config": SHAPES[shape], "seed": SEED, "params": params, "torch": torch.__version__}
    (tmp / files.stamp.name).write_text(json.dumps(stamp, indent=1))
    shutil.rmtree(files.root, ignore_errors=True)
    tmp.rename(files.root)


def ensure_model(shape, files):
    """Builds the model in a child process unless a finished build of the same shape is cached."""
    if files.stamp.is_file() and json.loads(files.stamp.read_text()).get("config") == SHAPES[shape]:
        return
    log(f"building the {shape} model into {files.root} (once)")
    subprocess.run([sys.executable, __file__, "_build", shape, str(files.root)], check=True)


def ensure_gguf(files, qtype, logs):
    """Converts the LDM file to sd.cpp's GGUF at `qtype` with its own converter unless cached;
    returns the path, or None if the conversion failed (its log is in `logs`)."""
    out = files.gguf(qtype)
    if not out.is_file():
        log(f"sd.cpp convert --type {qtype} → {out.name}")
        with open(logs / f"convert-{qtype}.log", "wb") as f:
            subprocess.run([sys.executable, __file__, "_convert", str(files.ldm), str(out), qtype], stdout=f, stderr=f)
    return out if out.is_file() else None


def convert_gguf(ldm, out, qtype):
    """sd.cpp's converter (what `python -m cyllama.sd convert --type` calls), written atomically.
    cyllama 0.2.18 passes a missing tensor_type_rules to sd.cpp as NULL, which aborts (the CLI's
    convert too); "," is an empty rule list."""
    from cyllama import sd

    tmp = Path(str(out) + ".tmp")
    if not sd.convert_model(input_path=str(ldm), output_path=str(tmp), output_type=sd.SDType[qtype.upper()],
                            tensor_type_rules=","):
        sys.exit(f"sd.cpp could not convert {ldm} to {qtype}")
    tmp.rename(out)


# ---------------------------------------------------------------- the workers (each its own process)

def rss_now():
    """This process's VmRSS in bytes."""
    return read_proc_status(os.getpid()).get("VmRSS", 0)


def diffusers_worker(folder, dtype, size, steps, threads):
    """Runs the request in diffusers on torch's CPU; returns seconds per stage."""
    sys.modules.setdefault("torchaudio", None)  # not needed; a mismatched build breaks transformers
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.set_num_threads(threads)
    imported = rss_now()
    t = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, dtype={"f32": torch.float32, "bf16": torch.bfloat16}[dtype], safety_checker=None,
        requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t
    text, unet, decode = timed(pipe.text_encoder, "forward"), timed(pipe.unet, "forward"), timed(pipe.vae, "decode")
    with torch.no_grad():
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, height=size, width=size,
             generator=torch.Generator().manual_seed(SEED), output_type="np")
    return {"load_s": load, "text_s": sum(text), "step_times_s": unet, "decode_s": sum(decode),
            "import_rss_bytes": imported, "torch": torch.__version__, "threads": torch.get_num_threads()}


def timed(obj, attr):
    """Wraps obj.attr so that each call's seconds are appended to the returned list."""
    times, inner = [], getattr(obj, attr)

    def wrapper(*a, **k):
        t = time.perf_counter()
        out = inner(*a, **k)
        times.append(time.perf_counter() - t)
        return out

    setattr(obj, attr, wrapper)
    return times


def sdcpp_worker(model, size, steps, threads):
    """Runs the request in stable-diffusion.cpp (cyllama's bindings); stage times from its log and
    per-step times from its progress callback."""
    from cyllama import sd

    imported = rss_now()
    lines, progress = [], []

    def on_log(level, text):
        lines.append(text)
        sys.stderr.write(text)

    sd.set_log_callback(on_log)
    sd.set_progress_callback(lambda step, total, secs: progress.append((step, secs)))
    params = sd.SDContextParams()
    params.model_path, params.n_threads = model, threads
    t = time.perf_counter()
    try:
        ctx = sd.SDContext(params)
    except RuntimeError:
        sys.exit(f"sd.cpp could not load the model: {lines[-1].strip() if lines else 'no log line'}")
    load = time.perf_counter() - t
    progress.clear()  # loading reports bytes through the same callback
    images = ctx.generate(prompt=PROMPT, negative_prompt="", width=size, height=size, seed=SEED, sample_steps=steps,
                          cfg_scale=GUIDANCE, sample_method=sd.SampleMethod.DDIM_TRAILING, batch_count=1)
    if not images or not images[0].is_valid:
        raise RuntimeError("sd.cpp returned no image")
    log_s = {key: sdcpp_log_seconds(lines, pattern) for key, pattern in SDCPP_LOG.items()}
    return {"load_s": load, "text_s": log_s["text"], "step_times_s": sdcpp_step_times(progress),
            "sampling_s": log_s["sampling"], "decode_s": log_s["decode"], "tensor_load_s": log_s["tensors"],
            "import_rss_bytes": imported, "system": sd.get_system_info().strip(),
            "params_memory": next((m[1] for m in map(SDCPP_PARAMS.search, lines) if m), None)}


SDCPP_LOG = {"tensors": r"loading tensors completed, taking ([\d.]+)s",
             "text": r"get_learned_condition completed, taking ([\d.]+)s",
             "sampling": r"sampling completed, taking ([\d.]+)s",
             "decode": r"decode_first_stage completed, taking ([\d.]+)s"}
SDCPP_PARAMS = re.compile(r"total params memory size = ([^:]*)")


def sdcpp_log_seconds(lines, pattern):
    """The last number of seconds sd.cpp logged for `pattern`, or None."""
    found = [float(m[1]) for m in map(re.compile(pattern).search, lines) if m]
    return found[-1] if found else None


def sdcpp_step_times(progress):
    """Per-step seconds from sd.cpp's progress reports, which give the mean seconds per step since
    sampling began (so step k ends at k × mean_k)."""
    ends = {abs(step): abs(step) * secs for step, secs in progress if step}
    ordered = [ends[k] for k in sorted(ends)]
    return [b - a for a, b in zip([0.0] + ordered, ordered)]


def worker_main(argv):
    """`peer_bench.py _diffusers|_sdcpp|_build|_convert ...`: one job in this process."""
    job, args = argv[0], argv[1:]
    if job == "_build":
        build_model(args[0], ModelFiles(Path(args[1])))
    elif job == "_convert":
        convert_gguf(args[0], args[1], args[2])
    elif job == "_diffusers":
        print(json.dumps(diffusers_worker(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))))
    else:
        print(json.dumps(sdcpp_worker(args[0], int(args[1]), int(args[2]), int(args[3]))))


# ---------------------------------------------------------------- measuring a run from outside

def read_proc_status(pid):
    """VmHWM, VmRSS, RssAnon and RssFile of `pid` in bytes ({} once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


@dataclass
class Measured:
    """A finished child process: exit code, wall time, memory and where its output went."""
    rc: int
    wall_s: float
    peak_rss: int = 0
    anon_at_peak: int = 0
    file_at_peak: int = 0
    maxrss: int = 0
    stdout: Path = None
    stderr: Path = None


def measure(cmd, env, logs, name):
    """Runs `cmd`, polling /proc every 50 ms. Peak RSS is the largest VmHWM or VmRSS seen (VmRSS
    too, as a process may reset its VmHWM); anon/file are from the sample with the largest VmRSS;
    maxrss is the kernel's ru_maxrss at exit (what `/usr/bin/time -v` prints)."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env)
        m = Measured(rc=-1, wall_s=0.0, stdout=out, stderr=err)
        best_rss = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            s = read_proc_status(proc.pid)
            m.peak_rss = max(m.peak_rss, s.get("VmHWM", 0), s.get("VmRSS", 0))
            if s.get("VmRSS", 0) > best_rss:
                best_rss, m.anon_at_peak, m.file_at_peak = s["VmRSS"], s.get("RssAnon", 0), s.get("RssFile", 0)
            time.sleep(0.05)
        proc.returncode = m.rc = os.waitstatus_to_exitcode(status)
        m.wall_s = time.perf_counter() - start
        m.maxrss = usage.ru_maxrss * 1024
        m.peak_rss = max(m.peak_rss, m.maxrss)
    return m


# ---------------------------------------------------------------- the runs

@dataclass
class Run:
    runner: str
    setting: str
    row: dict = field(default_factory=dict)

    @property
    def precision(self):
        """f32, f16, bf16, q8_0, q4k, q4_0, … as the runs name them."""
        if self.runner != "headroom":
            return self.setting.replace("_k", "k")
        m = re.search(r"(?:^|,)precision=([^,]+)", self.setting)
        return (m[1] if m else "f32").replace("_k", "k")

    @property
    def group(self):
        if "slicing" in self.setting:
            return "slicing"
        p = self.precision
        return {"bf16": "f16"}.get(p, "q4" if p.startswith("q4") else p)

    @property
    def label(self):
        return f"{self.runner} {self.setting}"


def select_runs(only, settings):
    """The runs asked for: default runs of the named groups, plus RUNNER:SETTING items."""
    runs = []
    for item in settings:
        if ":" in item:
            runner, setting = item.split(":", 1)
            if runner not in DEFAULT_SETTINGS:
                sys.exit(f"peer_bench: unknown runner '{runner}' in '{item}'")
            runs.append(Run(runner, setting))
        elif item in GROUPS:
            runs += [r for r in (Run(n, s) for n, ss in DEFAULT_SETTINGS.items() for s in ss) if r.group == item]
        else:
            sys.exit(f"peer_bench: '{item}' is neither a group ({', '.join(GROUPS)}) nor RUNNER:SETTING")
    seen, unique = set(), []
    for r in runs:
        if r.runner in only and r.label not in seen:
            seen.add(r.label)
            unique.append(r)
    return unique


def headroom_bin():
    return Path(os.environ.get("HEADROOM_BIN", REPO / "target" / "release" / "headroom"))


def headroom_takes_threads(binary):
    """Whether this `headroom bench` has a --threads flag."""
    help_text = subprocess.run([str(binary), "bench", "--help"], capture_output=True, text=True).stdout
    return "--threads" in help_text


def child_env(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("RAYON_NUM_THREADS", None)
    return env


def run_headroom(run, files, args, logs):
    """`headroom bench` on the diffusers folder, one setting, with its own temporary data folder."""
    binary = headroom_bin()
    cmd = [str(binary), "bench", "--model", str(files.diffusers), "--steps", str(args.steps), "--size",
           str(args.size), "--setting", run.setting, "--json"]
    env = child_env(args.threads)
    if headroom_takes_threads(binary):
        cmd += ["--threads", str(args.threads)]
    else:
        env["RAYON_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="headroom-data-") as data:
        env["HEADROOM_DATA"] = data
        m = measure(cmd, env, logs, slug(run.label))
    row = measured_row(m)
    if m.rc == 0:
        out = json.loads(m.stdout.read_text())
        r = out["rows"][0]
        row.update(load_s=r["load_ms"] / 1e3, step_s=r["step_ms"] / 1e3, decode_s=r["decode_ms"] / 1e3,
                   weight_bytes=r["weight_bytes"], own_peak_rss_bytes=r["peak_rss_bytes"],
                   own_peak_heap_bytes=r["peak_heap_bytes"], own_notes=r.get("notes"), threads=out.get("threads"),
                   threads_by="--threads" if "--threads" in cmd else "RAYON_NUM_THREADS")
    return row


def run_diffusers(run, files, args, logs):
    cmd = [sys.executable, __file__, "_diffusers", str(files.diffusers), run.setting, str(args.size),
           str(args.steps), str(args.threads)]
    row = worker_row(measure(cmd, child_env(args.threads), logs, slug(run.label)))
    row["weight_bytes"] = sum(f.stat().st_size for f in files.diffusers.glob("*/*.safetensors"))
    return row


def run_sdcpp(run, files, args, logs):
    model = files.ldm if run.setting == "f32" else ensure_gguf(files, run.setting, logs)
    if model is None:
        log_file = logs / f"convert-{run.setting}.log"
        return {"error": f"sd.cpp convert --type {run.setting} failed", "log": str(log_file)}
    cmd = [sys.executable, __file__, "_sdcpp", str(model), str(args.size), str(args.steps), str(args.threads)]
    row = worker_row(measure(cmd, child_env(args.threads), logs, slug(run.label)))
    row["weight_bytes"] = model.stat().st_size
    return row


RUNNERS = {"headroom": run_headroom, "diffusers": run_diffusers, "sdcpp": run_sdcpp}


def measured_row(m):
    """The outside measurements of a run, and its error (last stderr line) if it failed."""
    row = {"wall_s": m.wall_s, "peak_rss_bytes": m.peak_rss, "anon_at_peak_bytes": m.anon_at_peak,
           "file_at_peak_bytes": m.file_at_peak, "ru_maxrss_bytes": m.maxrss, "log": str(m.stderr)}
    if m.rc != 0:
        tail = [l.strip() for l in m.stderr.read_text(errors="replace").splitlines() if l.strip()][-1:]
        row["error"] = f"exit {m.rc}: {tail[0] if tail else 'no output'}"
    return row


def worker_row(m):
    """measured_row plus what a Python worker printed; the step is the mean after the first call."""
    row = measured_row(m)
    if m.rc == 0:
        r = json.loads(m.stdout.read_text().strip().splitlines()[-1])
        steps = r.pop("step_times_s")
        row.update(r, step_times_s=steps, first_step_s=steps[0] if steps else None,
                   step_s=sum(steps[1:]) / len(steps[1:]) if len(steps) > 1 else (steps[0] if steps else None))
    return row


def slug(text):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


# ---------------------------------------------------------------- reporting

def fmt_s(v):
    return "—" if v is None else f"{v:.0f}" if v >= 100 else f"{v:#.3g}"


def fmt_gb(v):
    return "—" if not v else f"{v / 1e9:.2f}"


def ratio(a, b):
    return "—" if not a or not b else f"{a / b:.2f}×"


def table(group, runs):
    """One group's Markdown table: every run's numbers, then Headroom ÷ peer on each peer row (vs the
    Headroom run of the same precision, else every Headroom run of the group)."""
    mine = [r for r in runs if r.group == group and r.runner == "headroom"]
    peer_group = "f32" if group == "slicing" else group
    peers = [r for r in runs if r.group == peer_group and r.runner != "headroom"]
    if not mine and not peers:
        return []
    lines = [f"### {GROUP_TITLES[group]}", "",
             "| runner | setting | load s | text s | step s | decode s | peak RSS GB (anon / file) | weight GB "
             "| Headroom ÷ peer: vs | step | decode | load | peak RSS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in mine + peers:
        refs = [None] if r.runner == "headroom" else [h for h in mine if h.precision == r.precision] or mine or [None]
        for h in refs:
            lines.append(table_line(r, h))
    return lines + [""]


def table_line(r, h):
    row = r.row
    if "error" in row:
        return f"| {r.runner} | `{r.setting}` | failed (see notes) |" + " |" * 10
    rss = f"{fmt_gb(row['peak_rss_bytes'])} ({fmt_gb(row['anon_at_peak_bytes'])} / {fmt_gb(row['file_at_peak_bytes'])})"
    cells = [r.runner, f"`{r.setting}`", fmt_s(row.get("load_s")), fmt_s(row.get("text_s")), fmt_s(row.get("step_s")),
             fmt_s(row.get("decode_s")), rss, fmt_gb(row.get("weight_bytes"))]
    if h is None or "error" in h.row:
        cells += ["", "", "", "", ""]
    else:
        cells += [f"`{h.setting}`"] + [ratio(h.row.get(k), row.get(k)) for k in ("step_s", "decode_s", "load_s", "peak_rss_bytes")]
    return "| " + " | ".join(cells) + " |"


def notes(runs, args):
    """The fairness notes, with what the runs themselves reported."""
    out = [
        f"- Request: \"{PROMPT}\", seed {SEED}, {args.steps} steps, guidance {GUIDANCE}, {args.size}×{args.size}, "
        f"one image, {args.threads} threads, shape `{args.shape}` (random weights; timing only, images differ).",
        "- Guidance: Headroom and diffusers run the UNet once per step at batch 2 (cond + uncond); sd.cpp runs "
        "cond and uncond as two batch-1 UNet calls. Step times are per denoising step for all.",
        "- Sampler: Headroom and diffusers DDIM (leading spacing, steps_offset 1); sd.cpp's only DDIM is "
        "`ddim_trailing` (trailing timesteps): same work per step, other timesteps.",
        "- step s: the mean step after the first (diffusers: each UNet call timed; sd.cpp: from its progress "
        "callback's running mean; Headroom: `headroom bench`'s step_ms, which older builds give as denoise ÷ steps). "
        "text s: diffusers both text-encoder calls; sd.cpp `get_learned_condition`; `headroom bench` reports none. "
        "load/decode: diffusers timed around from_pretrained and vae.decode; sd.cpp SDContext() wall time and its "
        "`decode_first_stage` log line; Headroom its own load and decode stages.",
        "- Peak RSS: the whole process polled from outside every 50 ms (max of VmHWM and VmRSS; anon/file from the "
        "sample with the largest VmRSS); the kernel's ru_maxrss at exit (`/usr/bin/time -v`'s figure) is in the "
        "JSON. diffusers and sd.cpp run inside a Python interpreter (RSS after imports below).",
        "- weight GB: peers the bytes of the weight files they read (diffusers reads the f32 files also for bf16); "
        "Headroom its own resident weight_bytes.",
        "- sd.cpp: its f32 keeps convolution weights in f16, and --type quantizes only linear layers (convolutions "
        "stay f16); cyllama frees each stage's weights after use (free_params_immediately) and does not mmap.",
    ]
    if args.shape != "sd15" and any(r.runner == "sdcpp" for r in runs):
        out.append(f"- sd.cpp (cyllama 0.2.18, sd.cpp master-612) takes a file for SD 1.x only if its CLIP is 768 wide, "
                   f"and then builds SD 1.5's fixed widths (UNet 320 channels, context 768, VAE 128): it cannot "
                   f"load `--shape {args.shape}` (\"get sd version from file failed\"); its rows need `--shape sd15`.")
    for r in runs:
        row = r.row
        if "error" in row:
            out.append(f"- {r.label}: FAILED, {row['error']} (log: {row['log']})")
        if "import_rss_bytes" in row:
            out.append(f"- {r.label}: RSS after imports {fmt_gb(row['import_rss_bytes'])} GB; first step "
                       f"{fmt_s(row.get('first_step_s'))} s")
        if r.runner == "sdcpp" and "system" in row:
            avx512 = "AVX512 = 1" in row["system"]
            out.append(f"- {r.label}: params memory {row.get('params_memory')}; "
                       f"{'with' if avx512 else 'without'} AVX-512 kernels in this build")
        if r.runner == "headroom" and "own_peak_rss_bytes" in row:
            out.append(f"- {r.label}: its own peak RSS {fmt_gb(row['own_peak_rss_bytes'])} GB, peak heap "
                       f"{fmt_gb(row['own_peak_heap_bytes'])} GB; {row['threads']} threads (set by {row['threads_by']})")
    return out


def log(msg):
    print(f"peer_bench: {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="sd15")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/work/peer-models"), help="model cache and run logs")
    p.add_argument("--only", default="headroom,diffusers,sdcpp", help="comma-separated runners")
    p.add_argument("--settings", nargs="+", default=list(GROUPS), metavar="ITEM",
                   help="groups (f32 f16 q8_0 q4 slicing) or RUNNER:SETTING items")
    p.add_argument("--json", type=Path, help="also write every number here")
    return p.parse_args()


def main():
    args = parse_args()
    only = set(args.only.split(","))
    if only - set(RUNNERS):
        sys.exit(f"peer_bench: --only takes {','.join(RUNNERS)}")
    runs = select_runs(only, args.settings)
    if any(r.runner == "headroom" for r in runs) and not headroom_bin().is_file():
        sys.exit(f"peer_bench: no {headroom_bin()} (cargo build --release, or set HEADROOM_BIN)")
    files = ModelFiles(args.work / args.shape)
    ensure_model(args.shape, files)
    logs = files.root / "logs"
    logs.mkdir(exist_ok=True)
    for run in runs:
        log(f"{run.label} ...")
        run.row = RUNNERS[run.runner](run, files, args, logs)
        log(f"{run.label}: {run.row.get('error') or 'done in %.1f s' % run.row['wall_s']}")
    report = [f"## Peers, {args.shape} shapes, {args.size}², {args.steps} steps, {args.threads} threads", ""]
    for group in GROUPS:
        report += table(group, runs)
    report += ["### Notes", ""] + notes(runs, args)
    print("\n".join(report))
    if args.json:
        model = json.loads(files.stamp.read_text())
        args.json.write_text(json.dumps({
            "shape": args.shape, "size": args.size, "steps": args.steps, "threads": args.threads, "prompt": PROMPT,
            "model": dict(model, diffusers=str(files.diffusers), ldm=str(files.ldm)),
            "rows": [{"runner": r.runner, "setting": r.setting, "group": r.group, **r.row} for r in runs],
            "notes": notes(runs, args)}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        worker_main(sys.argv[1:])
    else:
        main()
