#!/usr/bin/env python3
"""Make the bad-file corpus: small broken and hostile files that Headroom must refuse cleanly.

    python3 tools/make_bad_fixtures.py        # standard library only; rewrites tests/fixtures/bad/

Writes tests/fixtures/bad/ (files and a few folders) and tests/fixtures/bad/expected.txt, one line
per entry: its name, how it reaches Headroom, and a piece of the one-line error it must give:

    inspect     headroom inspect PATH            (model files and folders)
    reproduce   headroom reproduce PATH          (profiles, PNG and WAV outputs)
    restore     dropping the file into the app   (media::restore_from_file; A1111/ComfyUI PNGs)

tests/cli.rs (`bad_file_corpus_fails_in_one_line`) runs every entry and checks: exit status 1 (not
a signal), exactly one line on stderr, naming the file, containing the expected piece. Every byte
is fixed (zip timestamps too), so rerunning the script reproduces the same files.
"""

import io
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bad"

entries = []  # (name, how, expected substring)


def put(name, data, how, expect):
    """Writes `data` (bytes or str) to OUT/name and records the entry."""
    path = OUT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    entries.append((name, how, expect))


def put_files(folder, files, how, expect, entry=None):
    """Writes a folder of files; the entry is the folder (or `entry` inside it)."""
    for rel, data in files.items():
        path = OUT / folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    entries.append((entry or folder, how, expect))


# --- safetensors -------------------------------------------------------------------------------

def st(header, data=b""):
    """A safetensors file: 8-byte little-endian header length, the header, the data."""
    h = header if isinstance(header, bytes) else header.encode()
    return struct.pack("<Q", len(h)) + h + data


def tensor(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def good_st():
    return st(json.dumps({"w": tensor("F32", [2], 0, 8)}), b"\0" * 8)


def safetensors_cases():
    put("empty.safetensors", b"", "inspect", "empty file (0 bytes)")
    put("short.safetensors", b"\x05\0\0", "inspect", "truncated: 3 bytes")
    put("header_past_end.safetensors", struct.pack("<Q", 1 << 63) + b"{}", "inspect",
        "header length says 8.0 EiB (9223372036854775808 bytes) but the file has only 2 bytes after it")
    put("header_not_json.safetensors", st("{not json"), "inspect", "header is not valid JSON")
    put("header_array.safetensors", st("[1, 2, 3]"), "inspect", "header JSON is an array, expected an object")
    put("metadata_not_object.safetensors", st('{"__metadata__": 5}'), "inspect",
        "__metadata__ is not a JSON object")
    put("offsets_outside.safetensors", st(json.dumps({"a": tensor("F32", [4], 0, 16)}), b"\0" * 8),
        "inspect", "tensor 'a': data_offsets [0, 16] lie outside the data section of 8 bytes")
    put("overlap.safetensors",
        st(json.dumps({"a": tensor("F32", [2], 0, 8), "b": tensor("F32", [2], 4, 12)}), b"\0" * 12),
        "inspect", "tensors 'a' and 'b' overlap")
    # f16 data (8 bytes for 2×2) labelled F32: the sizes disagree, whatever the values.
    put("wrong_dtype.safetensors", st(json.dumps({"w": tensor("F32", [2, 2], 0, 8)}), b"\0\x3c" * 4),
        "inspect", "shape [2, 2] of F32 needs 16 bytes but data_offsets [0, 8] hold 8")
    put("unknown_dtype.safetensors", st(json.dumps({"a": tensor("Q7", [2], 0, 2)}), b"\0\0"),
        "inspect", "tensor 'a': unknown dtype 'Q7'")
    put("negative_shape.safetensors", st('{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}'),
        "inspect", "shape entry -1 is not a whole number")
    put("huge_shape.safetensors", st(json.dumps({"a": tensor("F32", [1 << 40, 1 << 40], 0, 0)})),
        "inspect", "has too many elements")
    put("no_dtype.safetensors", st('{"a": {"shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
        "inspect", "tensor 'a': no \"dtype\" string")
    # A tensor name with a newline: the error stays on one line (the newline is escaped).
    put("newline_in_name.safetensors", st(json.dumps({"evil\nname": tensor("Q7", [1], 0, 1)}), b"\0"),
        "inspect", "tensor 'evil\\nname': unknown dtype 'Q7'")


# --- GGUF --------------------------------------------------------------------------------------

def gguf(magic=b"GGUF", version=3, tensors=0, kvs=0):
    return magic + struct.pack("<IQQ", version, tensors, kvs)


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_cases():
    put("wrong_magic.gguf", gguf(b"GGUX"), "inspect", 'not a GGUF file: magic is "GGUX"')
    put("version_99.gguf", gguf(version=99), "inspect", "GGUF version 99 is not supported")
    put("truncated.gguf", b"GGUF\x03\0", "inspect", "version needs 4 bytes at offset 4 but only 2 bytes remain")
    put("absurd_tensor_count.gguf", gguf(tensors=1 << 40), "inspect", "header claims 1099511627776 tensors")
    put("absurd_array.gguf", gguf(kvs=1) + gstr("arr") + struct.pack("<IIQ", 9, 4, 1 << 62), "inspect",
        "key 'arr': array of 4611686018427387904 elements")
    put("string_past_end.gguf", gguf(kvs=1) + struct.pack("<Q", 1 << 60) + b"general.name", "inspect",
        "metadata key needs")
    put("bad_alignment.gguf", gguf(kvs=1) + gstr("general.alignment") + struct.pack("<II", 4, 3), "inspect",
        "general.alignment = 3 is not a power of two")
    put("too_many_dims.gguf", gguf(tensors=1) + gstr("t") + struct.pack("<I", 9) + b"\0" * 64, "inspect",
        "tensor 't': 9 dimensions")
    # One 1024-element f32 tensor (4 KiB) in a file that ends right after its description.
    put("tensor_past_end.gguf", gguf(tensors=1) + gstr("w") + struct.pack("<IQIQ", 1, 1024, 0, 0), "inspect",
        "tensor 'w': data at offset 0 (4096 bytes) runs past the end of the file (57 bytes)")
    put("bad_value_type.gguf", gguf(kvs=1) + gstr("k") + struct.pack("<I", 77) + b"\0" * 8, "inspect",
        "key 'k': unknown value type 77")


# --- PyTorch zip checkpoints and pickles -------------------------------------------------------

def zip_bytes(files, deflate=False):
    """A zip with fixed timestamps, so the bytes are the same on every run."""
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, data)
    return buf.getvalue()


def binunicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


# {"w": _rebuild_tensor_v2(persid(('storage', FloatStorage, '0', 'cpu', 4)), 0, (4,), (1,), False, OrderedDict())}
ONE_TENSOR = (b"\x80\x02}q\x00" + binunicode("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(("
              + binunicode("storage") + b"ctorch\nFloatStorage\n" + binunicode("0") + binunicode("cpu")
              + b"K\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs.")


def ckpt_cases():
    cmd = "touch /tmp/headroom-pwned"
    os_system = b"\x80\x02cos\nsystem\nq\x00" + binunicode(cmd) + b"\x85R."
    put("os_system.ckpt", zip_bytes({"archive/data.pkl": os_system}), "inspect",
        "refused global 'os.system' in the checkpoint's pickle")
    builtins_eval = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R."
    put("builtins_eval.pth", zip_bytes({"archive/data.pkl": builtins_eval}), "inspect",
        "refused global 'builtins.eval'")
    put("missing_storage.ckpt", zip_bytes({"archive/data.pkl": ONE_TENSOR}), "inspect",
        "tensor 'w': storage archive/data/0 is missing from the archive")
    put("storage_too_small.ckpt", zip_bytes({"archive/data.pkl": ONE_TENSOR, "archive/data/0": b"\0" * 8}),
        "inspect", "tensor 'w': storage archive/data/0 has 8 bytes, 16 expected")
    put("legacy_pickle.ckpt", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "inspect",
        "legacy (non-zip) PyTorch pickle format is not supported")
    put("not_zip.ckpt", b"hello world, no zip here", "inspect",
        "not a PyTorch zip checkpoint (no zip signature at the start)")
    put("zip_without_pickle.pt", zip_bytes({"readme.txt": b"no tensors here"}), "inspect",
        "zip archive has no <name>/data.pkl")
    put("truncated_zip.ckpt", zip_bytes({"archive/data.pkl": ONE_TENSOR})[:40], "inspect",
        "not a readable zip archive")
    put("unknown_opcode.ckpt", zip_bytes({"archive/data.pkl": b"\x80\x02\xff."}), "inspect",
        "pickle: opcode 0xff is not one torch.save writes (at byte 3)")
    # A set built from a 20000-element list, copied 5000 times: far more work than its size allows.
    bomb = bytearray(b"\x80\x02cbuiltins\nset\nq\x00](")
    bomb += b"K\x01" * 20_000 + b"eq\x01" + b"h\x00h\x01\x85R0" * 5_000 + b"N."
    put("pickle_bomb.ckpt", zip_bytes({"archive/data.pkl": bytes(bomb)}, deflate=True), "inspect",
        "builds far more data than its size allows (a pickle bomb?)")


# --- folders -----------------------------------------------------------------------------------

def folder_cases():
    put_files("empty_folder", {"README.txt": "no weights in here\n"}, "inspect",
              "folder has no model_index.json, *.safetensors.index.json or weight file")
    put_files("two_weights", {"a.safetensors": good_st(), "b.safetensors": good_st()}, "inspect",
              "folder has 2 weight files and no index saying how they belong together")
    index = {"weight_map": {"w": "../outside.safetensors"}}
    put_files("index_escapes", {"model.safetensors.index.json": json.dumps(index)}, "inspect",
              "shard name '../outside.safetensors' leaves the model's folder")
    index = {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}
    put_files("index_missing_shard",
              {"model.safetensors.index.json": json.dumps(index), "model-00001-of-00002.safetensors": good_st()},
              "inspect", "shard listed in model.safetensors.index.json is missing")
    put_files("shard_missing", {"model-00001-of-00002.safetensors": good_st()}, "inspect",
              "shard 2 of 2 is missing", entry="shard_missing/model-00001-of-00002.safetensors")
    put_files("diffusers_bad_index", {"model_index.json": '{"unet": ["diffusers", '}, "inspect",
              "model_index.json: not valid JSON")
    unet = {"model_index.json": json.dumps({"_class_name": "StableDiffusionPipeline",
                                            "unet": ["diffusers", "UNet2DConditionModel"]}),
            "unet/config.json": "{}",
            "unet/diffusion_pytorch_model.safetensors": good_st()[:20]}
    put_files("diffusers_truncated_unet", unet, "inspect", "header length says")
    put_files("diffusers_no_weights",
              {"model_index.json": json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]})},
              "inspect", "no component folder with weights")


# --- profiles ----------------------------------------------------------------------------------

PROFILE = """version = 1

[model]
source = "builtin:shapes"
family = "latent-diffusion"
name = "shapes"

[request]
prompt = "a red circle"
seed = 42
steps = 2
width = 64
height = 64

[knobs]
device = "cpu"
"""

RESULT = """
[result]
output = "x.png"
sha256 = "0000"
"""


def profile_cases():
    put("newer_version.toml", PROFILE.replace("version = 1", "version = 99") + RESULT, "reproduce",
        "written by a newer Headroom (profile version 99, this build reads 2)")
    put("unknown_component.toml", PROFILE + '\n[knobs.precision]\ntext_3 = "f16"\n' + RESULT, "reproduce",
        "precision.text_3: builtin:shapes has no component 'text_3' (it has text, unet, vae)")
    put("seed_not_a_number.toml", PROFILE.replace("seed = 42", 'seed = "forty-two"') + RESULT, "reproduce",
        '[request] seed = "forty-two": expected a whole number from 0 to 18446744073709551615')
    put("steps_wrong_type.toml", PROFILE.replace("steps = 2", 'steps = "two"') + RESULT, "reproduce",
        '[request] steps = "two"')
    put("bad_precision.toml", PROFILE + '\n[knobs.precision]\nunet = "q3"\n' + RESULT, "reproduce",
        "[knobs.precision]")
    put("version_is_text.toml", PROFILE.replace("version = 1", 'version = "1"') + RESULT, "reproduce",
        'version = "1": expected a whole number')
    put("no_version.toml", PROFILE.replace("version = 1\n", "") + RESULT, "reproduce",
        "no `version` key: this is not a Headroom profile")
    put("model_not_a_section.toml", "version = 1\nmodel = 5\n", "reproduce",
        "`model` should be a [model] section, found the integer 5")
    put("invalid_toml.toml", "version = 1\n[model\nsource = 1\n", "reproduce", "invalid TOML at line 2")
    put("no_result.toml", PROFILE, "reproduce", "the profile has no [result] to compare with")
    put("binary.toml", b"\xff\xfe\x00garbage\x80", "reproduce",
        "not a profile: neither TOML text nor a PNG or WAV file")
    put("comfy_garbage.json", '{"3": {"class_type": "KSampler", "inputs": {', "reproduce", "invalid TOML at line 1")


# --- PNG ---------------------------------------------------------------------------------------

SIG = b"\x89PNG\r\n\x1a\n"


def chunk(kind, data, crc=None):
    body = kind + data
    c = zlib.crc32(body) if crc is None else crc
    return struct.pack(">I", len(data)) + body + struct.pack(">I", c & 0xFFFFFFFF)


def png(*chunks, width=1, height=1):
    """A 1×1 RGB PNG (unless told otherwise) with `chunks` before its image data."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\0" + b"\x80" * 3))
    return SIG + ihdr + b"".join(chunks) + idat + chunk(b"IEND", b"")


def text(keyword, value):
    return chunk(b"tEXt", keyword.encode() + b"\0" + value.encode("latin-1"))


def itxt(keyword, raw):
    return chunk(b"iTXt", keyword.encode() + b"\0\0\0\0\0" + raw)


A1111_BAD = "a red circle\nNegative prompt: blurry\nSteps: many, Sampler: Foo, CFG scale: x, Seed: -3, Size: 64"


def png_cases():
    bad_crc = text("parameters", "a red circle\nSteps: 20, Seed: 1, Size: 64x64")
    bad_crc = bad_crc[:-4] + b"\0\0\0\0"
    put("bad_crc.png", png(bad_crc), "reproduce", "PNG tEXt chunk 'parameters' at byte 33 is corrupt (CRC mismatch)")
    put("truncated.png", png(text("parameters", "x"))[:60], "reproduce", "PNG is truncated")
    put("no_signature.png", b"\x89PNX" + png()[4:], "reproduce",
        "not a profile: neither TOML text nor a PNG or WAV file")
    # A ~33 KiB zTXt chunk that inflates to 33 MiB: refused at 32 MiB.
    bomb = chunk(b"zTXt", b"headroom\0\0" + zlib.compress(b"#" * (33 << 20), 9))
    put("ztxt_bomb.png", png(bomb), "reproduce", "PNG zTXt chunk 'headroom' inflates to more than 32 MiB of text")
    put("ztxt_not_zlib.png", png(chunk(b"zTXt", b"headroom\0\0not a zlib stream")), "reproduce",
        "PNG zTXt chunk 'headroom' could not be decompressed")
    put("itxt_not_utf8.png", png(itxt("headroom", b"version = 1\xff\xfe")), "reproduce",
        "'headroom' is not valid UTF-8 (at byte 11 of its text)")
    put("no_keyword.png", png(chunk(b"tEXt", b"\0no keyword")), "reproduce",
        "no valid keyword (1 to 79 bytes ending in a zero byte)")
    # A header claiming 100000×100000 pixels, with A1111 settings: never decoded; no profile.
    put("size_bomb.png", png(text("parameters", "a red circle\nSteps: 20, Seed: 7, Size: 64x64"),
                             width=100_000, height=100_000), "reproduce", "carries no Headroom profile")
    put("profile_from_the_future.png", png(itxt("headroom", (PROFILE.replace("version = 1", "version = 7")
                                                             + RESULT).encode())),
        "reproduce", "written by a newer Headroom (profile version 7")
    put("a1111_bad_fields.png", png(text("parameters", A1111_BAD)), "reproduce",
        "this PNG carries no Headroom profile")
    put("comfy_prompt_garbage.png", png(text("prompt", '{"3": {"class_type": "KSampler", "inputs": {')),
        "restore", "ComfyUI prompt is not valid JSON")
    prompt = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle"}}}
    put("comfy_no_sampler.png", png(text("prompt", json.dumps(prompt))), "restore",
        "ComfyUI graph has no KSampler or KSamplerAdvanced node")
    put("comfy_workflow_garbage.png", png(text("workflow", '{"nodes": 5}')), "restore",
        "ComfyUI workflow has no `nodes` list")
    put("no_settings.png", png(text("Software", "an image editor")), "restore",
        "no generation settings found (no headroom, parameters, prompt or workflow text)")


# --- WAV ---------------------------------------------------------------------------------------

def wav(*extra, samples=b"\0\0" * 8, data_len=None):
    """A mono 16-bit 8 kHz WAV with `extra` chunks after its samples."""
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    n = len(samples) if data_len is None else data_len
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", n) + samples
    body += b"".join(extra)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def riff_chunk(cid, data):
    pad = b"\0" if len(data) % 2 else b""
    return cid + struct.pack("<I", len(data)) + data + pad


def wav_cases():
    put("absurd_chunk.wav", wav(data_len=0xFFFFFFF0), "reproduce",
        "WAV is truncated: chunk 'data' at byte 36 declares 4294967280 bytes, 16 left")
    put("no_profile.wav", wav(), "reproduce", "this WAV carries no Headroom profile")
    put("profile_not_utf8.wav", wav(riff_chunk(b"hdrm", b"version = 1\xff")), "reproduce",
        "the Headroom profile chunk (hdrm) is not UTF-8 text")
    put("profile_invalid.wav", wav(riff_chunk(b"hdrm", b"version = [")), "reproduce", "invalid TOML at line 1")
    put("stray_bytes.wav", wav(b"abc"), "reproduce", "WAV is truncated: 3 stray bytes at byte 60")
    put("profile_wrong_types.wav", wav(riff_chunk(b"hdrm", (PROFILE.replace("steps = 2", "steps = -2")
                                                            + RESULT).encode())),
        "reproduce", "[request] steps = -2")
    put("riff_not_wave.wav", b"RIFF\x04\0\0\xffAVI ", "reproduce",
        "not a profile: neither TOML text nor a PNG or WAV file")


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for cases in (safetensors_cases, gguf_cases, ckpt_cases, folder_cases, profile_cases, png_cases, wav_cases):
        cases()
    width = max(len(n) for n, _, _ in entries)
    lines = [
        "# The bad-file corpus: each entry must fail with exit status 1 and one line on stderr that names",
        "# it and contains the text on its line. Made by tools/make_bad_fixtures.py; rerun it, do not edit.",
        "# how: inspect = `headroom inspect`, reproduce = `headroom reproduce`, restore = dropped on the app",
        "#",
        f"# {'entry':<{width - 2}} how        the error line contains",
    ]
    lines += [f"{n:<{width}} {h:<10} {e}" for n, h, e in entries]
    (OUT / "expected.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(entries)} entries in {OUT}")


if __name__ == "__main__":
    main()
