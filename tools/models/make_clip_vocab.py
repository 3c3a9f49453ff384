#!/usr/bin/env python3
"""Builds the standard CLIP BPE vocabulary (vocab.json, merges.txt) from open_clip's merges file.

The construction follows OpenAI's `clip/simple_tokenizer.py` and Hugging Face's `CLIPTokenizer`:
256 byte-units (GPT-2 byte-to-unicode table), the same 256 with `</w>`, the first 48894 merges of
`bpe_simple_vocab_16e6.txt.gz` joined, then `<|startoftext|>` and `<|endoftext|>`: 49408 tokens.

    /work/venv/bin/pip download --no-deps -d /tmp/oc open_clip_torch==3.3.0
    /work/venv/bin/python tools/models/make_clip_vocab.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl assets/clip
"""
import gzip
import json
import sys
import zipfile
from pathlib import Path

MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build(merges_text: str):
    """Returns (vocab dict token->id, merges list of 'a b' lines)."""
    lines = merges_text.split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges), "unexpected merges file"
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    return {t: i for i, t in enumerate(vocab)}, [" ".join(m) for m in merges]


TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": "<|startoftext|>",
    "clean_up_tokenization_spaces": True,
    "do_lower_case": True,
    "eos_token": "<|endoftext|>",
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": "<|endoftext|>",
}
SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}


def write(out: Path, vocab, merges):
    """Writes the four tokenizer files of a diffusers `tokenizer/` folder."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")


def main():
    wheel, out = sys.argv[1], Path(sys.argv[2])
    with zipfile.ZipFile(wheel) as z:
        text = gzip.decompress(z.read(MEMBER)).decode("utf-8")
    vocab, merges = build(text)
    write(out, vocab, merges)
    print(f"{out}: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
