"""An offline CLIP tokenizer with the standard 49,408-token vocabulary.

The BPE merges of OpenAI's CLIP (Radford et al. 2021) ship inside the ``open_clip_torch`` wheel
as ``open_clip/bpe_simple_vocab_16e6.txt.gz``. From them we rebuild the exact ``vocab.json`` /
``merges.txt`` pair that ``openai/clip-vit-large-patch14`` (Stable Diffusion 1.x's tokenizer)
uses, so a tokenizer saved here produces the same ids as the real one (BOS 49406, EOS 49407).
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)

#: size of CLIP's BPE vocabulary: 256 bytes x 2 (plain and end-of-word) + 48,894 merges + 2 specials
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
_N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table, in byte order of the vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _bpe_merges_path() -> Path:
    try:
        path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    except ModuleNotFoundError as err:
        raise UserError("building the offline CLIP tokenizer needs open_clip_torch: pip install open_clip_torch") from err
    return Path(str(path))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP vocabulary (token -> id) and BPE merges, built from open_clip's merges file."""
    with gzip.open(_bpe_merges_path(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _N_MERGES]]
    byte_tokens = _bytes_to_unicode()
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} entries, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def build_clip_tokenizer() -> CLIPTokenizer:
    """A ``CLIPTokenizer`` equal to Stable Diffusion 1.x's, built without network access."""
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def tokenizer_cache_dir() -> Path:
    """Where the built tokenizer is kept (``$HF_CXR_DIFFUSION_CACHE`` or ``~/.cache/hf_cxr_diffusion``)."""
    base = os.environ.get("HF_CXR_DIFFUSION_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf_cxr_diffusion"
    return Path(base) / "clip-tokenizer"


@functools.lru_cache(maxsize=1)
def cached_clip_tokenizer() -> CLIPTokenizer:
    """:func:`build_clip_tokenizer`, built once and kept on disk (loading takes <1 s, building several)."""
    from hf_cxr_diffusion.io import atomic_path

    cache = tokenizer_cache_dir()
    if (cache / "tokenizer_config.json").exists():
        try:
            return CLIPTokenizer.from_pretrained(cache)
        except (OSError, ValueError) as err:
            logger.warning("ignoring unreadable tokenizer cache %s (%s)", cache, err)
    tokenizer = build_clip_tokenizer()
    try:
        with atomic_path(cache) as tmp:
            tokenizer.save_pretrained(tmp)
    except OSError as err:
        logger.info("could not cache the CLIP tokenizer in %s (%s)", cache, err)
    return tokenizer
