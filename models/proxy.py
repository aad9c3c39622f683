"""The CPU proxy models: small DiT and PixArt transformers trained by this harness on procedural shapes.

They diffuse directly in pixel space (32×32 RGB, patch 2: 256 tokens, through models.pixel_vae), so no
autoencoder has to be trained. The PixArt proxy reads captions through a small frozen text encoder:
a word-level tokenizer over the shapes vocabulary and a seeded T5 encoder, frozen like PixArt's T5.
Trained weights are committed under models/proxies/<name>/ with a provenance.json that records the
SHA-256 of every weight file and the command that reproduces them; loading checks every hash.
"""
from __future__ import annotations

import json
from pathlib import Path

from dsbench.io import sha256_file

PROXY_ROOT = Path(__file__).resolve().parent / "proxies"
PROVENANCE = "provenance.json"


class ProxyWeightsError(ValueError):
    pass


def weight_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every safetensors file under `folder`, keyed by relative path."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*.safetensors"))}


def proxy_dir(name: str, override: str | Path | None = None) -> Path:
    return Path(override) if override else PROXY_ROOT / name


def verified(folder: Path) -> dict:
    """The folder's provenance after checking each recorded weight file's SHA-256 (and that none is missing)."""
    prov = folder / PROVENANCE
    if not prov.is_file():
        raise ProxyWeightsError(f"{folder} holds no trained proxy ({PROVENANCE} missing); train it with "
                                f"`snakemake --cores 2 train_proxies` or `dsbench train-proxy`")
    info = json.loads(prov.read_text())
    recorded, got = info["sha256"], weight_hashes(folder)
    for rel, want in recorded.items():
        if got.get(rel) != want:
            raise ProxyWeightsError(
                f"{folder / rel}: SHA-256 {got.get(rel, 'missing')} does not match the recorded {want}; "
                f"restore it (git checkout) or retrain with: {info.get('command', 'dsbench train-proxy')}")
    return info


# ---- the frozen text encoder of the PixArt proxy ------------------------------------------------------
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def word_tokenizer(max_length: int):
    """Word-level tokenizer over the shapes captions' vocabulary, built in memory (no vocab file).

    Hand-made because the captions have ~20 words: a BPE vocab would spread them over sub-words and a
    byte tokenizer would make the tiny encoder spell. Unknown words map to <unk>; every caption ends in </s>.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from dsbench.shapes import VOCABULARY

    vocab = {w: i for i, w in enumerate([PAD, EOS, UNK, *VOCABULARY])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=max_length)


def text_encoder(t5_kwargs: dict, max_length: int, seed: int = 0, folder: Path | None = None):
    """(tokenizer, frozen T5 encoder): seeded fresh weights, or the committed ones from `folder`."""
    from transformers import T5Config, T5EncoderModel

    from models.base import seeded

    tok = word_tokenizer(max_length)
    if folder is not None:
        enc = T5EncoderModel.from_pretrained(folder)
    else:
        with seeded(seed):
            enc = T5EncoderModel(T5Config(vocab_size=len(tok), pad_token_id=0, eos_token_id=1, **t5_kwargs))
    return tok, enc.eval().requires_grad_(False)
