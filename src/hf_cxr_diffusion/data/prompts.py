"""Prompt templates: named ones and user format strings, rendered column-wise over a whole corpus.

Fields: ``{findings}`` (positive labels in canonical order joined by ", ", "No Finding" when none),
``{age}``, ``{sex}``, ``{view}``, ``{report}`` (findings/impression text, whitespace-normalised) and
``{label}`` (the class of folder corpora, else the findings). Every prompt is cut at a word boundary
so that it fits the 77-token context of Stable Diffusion's CLIP text encoder (Radford et al. 2021),
measured with the real CLIP tokenizer.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.models.tokenizer import cached_clip_tokenizer as clip_tokenizer

logger = logging.getLogger(__name__)

#: named templates (``--template NAME``); anything containing "{" is taken as a format string
TEMPLATES: dict[str, str] = {
    "findings": "Chest X-ray of a subject with {findings}",
    "report": "{report}",
    "demographic": "age:{age}, gender:{sex}, findings:{findings}",
    "class": "a chest X-ray of {label}",
}
FIELDS: tuple[str, ...] = ("findings", "age", "sex", "view", "report", "label")
NONE_TEXT = "No Finding"
UNKNOWN = "unknown"


def resolve_template(template: str) -> str:
    """A template name or format string -> a validated format string."""
    fmt = TEMPLATES.get(template)
    if fmt is None:
        if "{" not in template:
            raise UserError(
                f"unknown template {template!r}; use one of {', '.join(TEMPLATES)} or a format string "
                f"with fields {', '.join('{' + f + '}' for f in FIELDS)}"
            )
        fmt = template
    template_fields(fmt)
    return fmt


def template_fields(fmt: str) -> list[str]:
    """The fields a format string uses; unknown fields, conversions or format specs are a :class:`UserError`."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as err:
        raise UserError(f"template {fmt!r} is not a valid format string: {err}") from err
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in FIELDS:
            raise UserError(
                f"template {fmt!r} uses unknown field {{{field}}}; valid fields are "
                + ", ".join("{" + f + "}" for f in FIELDS)
            )
        if spec or conversion:
            raise UserError(f"template {fmt!r}: write plain fields such as {{{field}}} (no conversions or format specs)")
        fields.append(field)
    return fields


def findings_text(positive: np.ndarray, names: Sequence[str]) -> pd.Series:
    """Positives ``(rows, labels)`` -> "A, B" in canonical order ("No Finding" when none), per row."""
    from hf_cxr_diffusion.data.labels import unique_rows

    pretty = [n.replace("_", " ") for n in names]
    keys, inverse = unique_rows(positive)
    texts = np.array([", ".join(p for p, k in zip(pretty, key) if k) or NONE_TEXT for key in keys], dtype=object)
    return pd.Series(texts[inverse] if len(inverse) else [], dtype=object)


def map_unique(values: pd.Series, fn) -> pd.Series:
    """``values.map(fn)`` computing ``fn`` once per distinct value."""
    codes, uniques = pd.factorize(values.fillna("").astype(object), use_na_sentinel=False)
    mapped = np.empty(len(uniques), dtype=object)
    mapped[:] = [fn(u) for u in uniques]
    return pd.Series(mapped[codes], index=values.index, dtype=object)


def normalise_whitespace(text: pd.Series) -> pd.Series:
    """Collapse runs of whitespace to one space and strip the ends."""
    return map_unique(text, lambda t: " ".join(str(t).split()))


def render(fmt: str, fields: dict[str, pd.Series], *, tokenizer=None) -> pd.Series:
    """Render ``fmt`` for every row (vectorised concatenation) and fit each prompt to CLIP's context."""
    out: pd.Series | None = None
    for literal, field, _, _ in string.Formatter().parse(fmt):
        for piece in (literal, None if field is None else fields[field].astype(str)):
            if piece is None or (isinstance(piece, str) and not piece):
                continue
            out = piece if out is None else out + piece
    n = len(next(iter(fields.values()))) if fields else 0
    if out is None or isinstance(out, str):
        out = pd.Series([out or ""] * n, dtype=object)
    return truncate_to_clip(normalise_whitespace(out.reset_index(drop=True)), tokenizer=tokenizer)


def truncate_to_clip(prompts: pd.Series, *, tokenizer=None, max_length: int | None = None) -> pd.Series:
    """Cut every prompt after the last whole word that keeps it within ``max_length`` CLIP tokens.

    CLIP's pre-tokeniser never merges across whitespace, so a prompt's token count is the sum of its
    words' counts; each cut prompt is re-checked with the tokenizer itself.
    """
    tokenizer = tokenizer or clip_tokenizer()
    max_length = max_length or tokenizer.model_max_length
    budget = max_length - 2  # BOS and EOS
    unique = pd.unique(prompts.astype(object))
    words_of = [p.split(" ") if p else [] for p in unique]
    vocab = sorted({w for words in words_of for w in words})
    counts = dict(zip(vocab, (len(ids) for ids in tokenizer(vocab, add_special_tokens=False).input_ids))) if vocab else {}
    fitted = {}
    for prompt, words in zip(unique, words_of):
        cum = np.cumsum([counts[w] for w in words]) if words else np.zeros(0)
        if not len(cum) or cum[-1] <= budget:
            fitted[prompt] = prompt
            continue
        keep = int(np.searchsorted(cum, budget, side="right"))
        cut = " ".join(words[:keep])
        while keep > 0 and len(tokenizer(cut).input_ids) > max_length:
            keep -= 1
            cut = " ".join(words[:keep])
        fitted[prompt] = cut
    return map_unique(prompts, fitted.__getitem__)
