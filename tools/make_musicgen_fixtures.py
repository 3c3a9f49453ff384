#!/usr/bin/env python3
"""Builds a tiny random-weight MusicGen (text → music) model and reference tensors.

Writes tests/fixtures/musicgen/tiny-musicgen/ in the Hugging Face layout of facebook/musicgen-*:
`config.json` (model_type "musicgen" with `text_encoder` (T5, relu feed-forward), `decoder` (4
codebooks of 64 codes, sinusoidal positions, 256 positions at most) and `audio_encoder`
(EnCodec at 32 kHz, hop 640: 50 frames a second, weight-normalised convolutions, reflect padding,
2-layer LSTMs)), `generation_config.json`, `model.safetensors`, and a tiny T5-style tokenizer
(`tokenizer.json`: Unigram pieces, Metaspace, `</s>` appended) built here with `tokenizers`.
The text encoder is narrower than the decoder, so `enc_to_dec_proj` is exercised.

Beside the folder, `refs.safetensors` (and `refs.json`, the request) holds what the engine's parity tests compare against:
- `input_ids`: the prompt's token ids;
- `encoder_hidden_states`: the T5 encoder's last hidden state for them;
- `decoder_input_ids` (batch·codebooks, 6) and `decoder_logits` (batch, codebooks, 6, vocab): one
  decoder forward over given codes with the prompt's (projected) states;
- `greedy_codes` / `greedy_codes_cfg`: greedy `generate` codes for 20 new tokens without guidance
  and with guidance 3.0 (transformers' zeroed unconditional branch), delay pattern undone;
- `codec_codes` (1, 1, 4, 12) and `codec_audio`: an EnCodec decode of given codes;
- `generate_codes` / `generate_audio`: greedy `generate` with guidance 3.0 and 100 new tokens
  (2 s at 50 frames/s) and the audio it returns;
- `sampled_codes_cfg` (seed 7, guidance 3, the generation config's top_k 250) and
  `sampled_codes_filtered` (seed 3, no guidance, top_k 8, top_p 0.9, temperature 0.8): 30 new
  tokens sampled by `generate` after `torch.manual_seed(seed)`.

Run: HF_HUB_OFFLINE=1 /work/venv/bin/python tools/make_musicgen_fixtures.py   (no network needed)
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "musicgen")
OUT = os.path.join(ROOT, "tiny-musicgen")
PROMPT = "a calm piano melody with soft drums"
VOCAB = 64
CODEBOOKS = 4


def tokenizer():
    """A T5-like Unigram tokenizer: <pad>=0, </s>=1, <unk>=2, words and letters with ▁."""
    words = "a calm piano melody with soft drums and loud guitar beat slow fast happy sad the of in jazz rock song".split()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0 - 0.01 * i) for i, w in enumerate(words)]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += [(c, -5.0 - 0.01 * i) for i, c in enumerate(letters)]
    pieces += [("▁" + c, -4.0 - 0.01 * i) for i, c in enumerate(letters)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return tok, len(pieces)


def main():
    torch.manual_seed(0)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    tok, n_vocab = tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"))

    text = T5Config(vocab_size=n_vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    decoder = MusicgenDecoderConfig(vocab_size=VOCAB, max_position_embeddings=256, num_hidden_layers=2,
                                    ffn_dim=96, num_attention_heads=4, hidden_size=48, num_codebooks=CODEBOOKS,
                                    activation_function="gelu", pad_token_id=VOCAB, bos_token_id=VOCAB,
                                    decoder_start_token_id=VOCAB, audio_channels=1, tie_word_embeddings=False)
    codec = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=2, hidden_size=16,
                          upsampling_ratios=[8, 5, 4, 4], codebook_size=VOCAB, target_bandwidths=[1.2],
                          norm_type="weight_norm", use_causal_conv=False, pad_mode="reflect", compress=2,
                          num_lstm_layers=2, residual_kernel_size=3, dilation_growth_rate=2,
                          num_residual_layers=1, use_conv_shortcut=False, chunk_length_s=None, overlap=None,
                          normalize=False)
    assert codec.num_quantizers == CODEBOOKS and codec.frame_rate == 50
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict())
    model = MusicgenForConditionalGeneration(config).eval()
    with torch.no_grad():
        # random codebooks (EnCodec's start as zeros) and a wider spread of weights than the
        # init gives, so the parity tests see non-trivial values
        for q in model.audio_encoder.quantizer.layers:
            q.codebook.embed.normal_(0.0, 1.0)
        for name, p in model.decoder.named_parameters():
            if name.endswith("weight") and p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(decoder_start_token_id=VOCAB, pad_token_id=VOCAB, bos_token_id=VOCAB,
                                               do_sample=True, guidance_scale=3.0, max_length=1500, top_k=250)
    model.save_pretrained(OUT)

    ids = torch.tensor([tok.encode(PROMPT).ids])
    refs = {"input_ids": ids.to(torch.int64)}
    with torch.no_grad():
        enc = model.text_encoder(input_ids=ids).last_hidden_state
        refs["encoder_hidden_states"] = enc.contiguous()
        g = torch.Generator().manual_seed(3)
        dec_ids = torch.randint(0, VOCAB, (CODEBOOKS, 6), generator=g)
        dec_ids[:, 0] = VOCAB
        dec_ids[2, 1] = VOCAB
        out = model(input_ids=ids, decoder_input_ids=dec_ids)
        refs["decoder_input_ids"] = dec_ids.to(torch.int64)
        refs["decoder_logits"] = out.logits.reshape(1, CODEBOOKS, 6, VOCAB).contiguous()

        # the codes generate makes (delay pattern undone), caught on their way to the codec
        runs = [
            ("greedy_codes", None, dict(do_sample=False, guidance_scale=1.0, max_new_tokens=20)),
            ("greedy_codes_cfg", None, dict(do_sample=False, guidance_scale=3.0, max_new_tokens=20)),
            ("generate_codes", None, dict(do_sample=False, guidance_scale=3.0, max_new_tokens=100)),
            # sampled from torch's global generator: the generation config's top_k 250, guided
            ("sampled_codes_cfg", 7, dict(do_sample=True, guidance_scale=3.0, max_new_tokens=30)),
            ("sampled_codes_filtered", 3, dict(do_sample=True, guidance_scale=1.0, top_k=8, top_p=0.9, temperature=0.8, max_new_tokens=30)),
        ]
        for key, seed, kw in runs:
            got = {}
            orig = model.audio_encoder.decode

            def spy(audio_codes, audio_scales=None, **rest):
                got["codes"] = audio_codes.clone()
                return orig(audio_codes, audio_scales=audio_scales, **rest)

            model.audio_encoder.decode = spy
            if seed is not None:
                torch.manual_seed(seed)
            audio = model.generate(input_ids=ids, **kw)
            model.audio_encoder.decode = orig
            refs[key] = got["codes"][0].to(torch.int64).contiguous()  # (batch, codebooks, frames)
            if key == "generate_codes":
                refs["generate_audio"] = audio.contiguous()
        cc = torch.randint(0, VOCAB, (1, 1, CODEBOOKS, 12), generator=g)
        refs["codec_codes"] = cc.to(torch.int64)
        refs["codec_audio"] = model.audio_encoder.decode(cc, [None]).audio_values.contiguous()
    save_file(refs, os.path.join(ROOT, "refs.safetensors"))
    with open(os.path.join(ROOT, "refs.json"), "w") as f:
        json.dump({"prompt": PROMPT, "guidance": 3.0, "greedy_new_tokens": 20, "generate_new_tokens": 100,
                   "seconds": 2.0}, f, indent=1)
    for k, v in refs.items():
        print(k, tuple(v.shape), v.dtype)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs)
    print("bytes", total)


if __name__ == "__main__":
    main()
