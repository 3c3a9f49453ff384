#!/usr/bin/env python3
"""Seed each fuzz target's corpus (fuzz/corpus/<target>/) from the repository's own files.

    python3 fuzz/seed_corpus.py [TARGET...]      # standard library only; run by tools/fuzz.sh

Seeds are the fixtures (tests/fixtures/, the bad-file corpus included), the embedded models'
files (models/), the example profiles and the icons, each given to the targets that read its kind.
Files over MAX_SEED bytes are left out, except safetensors files, whose header is kept with every
tensor shrunk to at most 4 elements per dimension (names, dtypes and ranks are what the readers
look at; megabytes of weights would only slow the fuzzer). Checkpoints also give their data.pkl
to the pickle target. Seed names start with `seed-`, so reseeding overwrites rather than adds.
"""

import hashlib
import json
import struct
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
SOURCES = ["tests/fixtures", "models", "profiles", "icons"]
MAX_SEED = 256 * 1024

# target → file name endings it reads
KINDS = {
    "safetensors": (".safetensors",),
    "gguf": (".gguf",),
    "ckpt": (".ckpt", ".pth", ".pt", ".bin"),
    "pickle": (),  # data.pkl of each checkpoint, below
    "png": (".png",),
    "wav": (".wav",),
    "profile": (".toml",),
    "a1111": (".txt",),
    "comfy": (".json",),
}

ST_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "I16": 16, "U16": 16, "F16": 16,
           "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64}


def shrink_safetensors(data):
    """The same header with each tensor at most 4 wide per dimension, and zeroed data to match."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        offset = 0
        for name, t in header.items():
            if name == "__metadata__":
                continue
            t["shape"] = [min(d, 4) for d in t["shape"]]
            count = 1
            for d in t["shape"]:
                count *= d
            size = count * ST_BITS.get(t["dtype"], 8) // 8
            t["data_offsets"] = [offset, offset + size]
            offset += size
        h = json.dumps(header, separators=(",", ":")).encode()
        return struct.pack("<Q", len(h)) + h + bytes(offset)
    except (ValueError, KeyError, TypeError, struct.error):
        return None


def pickles_of(data):
    """The data.pkl entries of a zip checkpoint (none if it is not one)."""
    try:
        import io
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError):
        return []


def put(target, origin, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(data).hexdigest()[:12]
    (d / f"seed-{origin.name}-{tag}").write_bytes(data)


def main(targets):
    targets = targets or list(KINDS)
    counts = dict.fromkeys(targets, 0)
    files = sorted(p for s in SOURCES for p in (ROOT / s).rglob("*") if p.is_file())
    for path in files:
        name = path.name
        data = path.read_bytes()
        for target in targets:
            if not name.endswith(KINDS[target]) or not KINDS[target]:
                continue
            seed = data
            if len(data) > MAX_SEED:
                seed = shrink_safetensors(data) if target == "safetensors" else None
            if seed is not None and len(seed) <= MAX_SEED:
                put(target, path, seed)
                counts[target] += 1
        if "pickle" in targets and name.endswith(KINDS["ckpt"]):
            for pkl in pickles_of(data):
                put("pickle", path, pkl)
                counts["pickle"] += 1
    for target in targets:
        print(f"{target}: {counts[target]} seeds")


if __name__ == "__main__":
    unknown = [t for t in sys.argv[1:] if t not in KINDS]
    if unknown:
        sys.exit(f"unknown fuzz target(s): {', '.join(unknown)} (known: {', '.join(KINDS)})")
    main(sys.argv[1:])
