"""Render the repo cards in ``model_cards/*.md`` with ``huggingface_hub``'s card classes.

Templates are Jinja files whose front matter is ``{{ card_data }}``; every other variable must be
given by the caller, else rendering stops and names the missing fields (Jinja would otherwise
render them as empty strings without a word).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from huggingface_hub import CardData, EvalResult, RepoCard

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub.reports import MetricRow

#: environment variable naming another folder of card templates
TEMPLATES_ENV = "HF_CXR_MODEL_CARDS"

#: what the corpora allow, keyed by a normalised corpus name (letters and digits only)
DATA_USE_NOTES: dict[str, str] = {
    "chexpert": "Stanford CheXpert Dataset Research Use Agreement: non-commercial research use only; "
    "the images may not be redistributed.",
    "mimiccxr": "PhysioNet Credentialed Health Data License 1.5.0 and its data use agreement: credentialed "
    "access only, no redistribution, no attempt to re-identify patients.",
    "nih": "NIH Clinical Center ChestX-ray14: released for research; acknowledge the NIH Clinical Center and "
    "cite Wang et al. (CVPR 2017). Check the current terms before redistributing.",
    "chestxray14": "NIH Clinical Center ChestX-ray14: released for research; acknowledge the NIH Clinical Center "
    "and cite Wang et al. (CVPR 2017). Check the current terms before redistributing.",
    "iuxray": "Indiana University chest X-ray collection (Open-i): research use; cite Demner-Fushman et al. "
    "(JAMIA 2016). Check the current terms before redistributing.",
    "openi": "Indiana University chest X-ray collection (Open-i): research use; cite Demner-Fushman et al. "
    "(JAMIA 2016). Check the current terms before redistributing.",
    "montgomery": "Montgomery County chest X-ray set (U.S. National Library of Medicine): research use; cite "
    "Jaeger et al. (QIMS 2014).",
    "pneumonia": "Kermany et al. (Cell 2018) chest X-ray pneumonia images, Mendeley Data, CC BY 4.0.",
    "padchest": "PadChest (BIMCV): research use under its data use agreement; no redistribution.",
    "phantom": "Procedural phantoms made by hf-cxr-diffusion: no patient data, free to share.",
}


def data_use_note(corpus: str | None) -> str:
    """The data-use terms of ``corpus`` from :data:`DATA_USE_NOTES`, or what to check when unknown."""
    if corpus:
        key = re.sub(r"[^a-z0-9]", "", corpus.lower())
        for name, note in DATA_USE_NOTES.items():
            if name in key:
                return note
    return (
        f"Unknown for corpus {corpus!r}. Check its licence / data-use agreement before sharing anything "
        "derived from it."
        if corpus
        else "Not recorded. Check the licence / data-use agreement of the training images before sharing."
    )


def corpus_data_use(prepare_info: Any) -> str:
    """The data-use note of a prepared corpus: what ``prepare`` recorded, else :func:`data_use_note`."""
    info = prepare_info if isinstance(prepare_info, dict) else {}
    if info.get("phantom"):
        return DATA_USE_NOTES["phantom"]
    return str(info.get("data_use") or info.get("license_note") or data_use_note(info.get("corpus")))


def template_path(name: str, override: str | os.PathLike | None = None) -> Path:
    """The card template ``name``: ``override``, else ``$HF_CXR_MODEL_CARDS/<name>.md``, else the shipped ``model_cards/``."""
    if override is not None:
        path = Path(override)
    else:
        from hf_cxr_diffusion.resources import resource_dir

        folder = Path(os.environ[TEMPLATES_ENV]) if os.environ.get(TEMPLATES_ENV) else resource_dir("model_cards")
        path = folder / f"{name}.md"
    if not path.is_file():
        raise UserError(f"card template {path} does not exist; pass an existing Markdown/Jinja file")
    return path


def render(card_class: type[RepoCard], card_data: CardData, template: Path, **fields: Any) -> RepoCard:
    """Render ``template`` into a ``card_class`` card; raise naming any template field not provided."""
    text = template.read_text(encoding="utf-8")
    try:
        wanted = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(text))
    except jinja2.TemplateSyntaxError as err:
        raise UserError(f"card template {template} line {err.lineno}: {err.message}") from err
    given = {"card_data", *card_data.to_dict(), *fields}
    missing = sorted(wanted - given)
    if missing:
        raise UserError(
            f"card template {template} uses field(s) {', '.join(missing)} that this export does not provide; "
            f"available: {', '.join(sorted(given))}"
        )
    return card_class.from_template(card_data, template_path=str(template), **fields)


def eval_results(rows: list[MetricRow], *, dataset_name: str, dataset_type: str) -> list[EvalResult]:
    """model-index entries (task text-to-image) for the metric rows of a report."""
    return [
        EvalResult(
            task_type="text-to-image",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            metric_type=row.key,
            metric_name=row.name,
            metric_value=row.value,
            metric_config=row.protocol,
        )
        for row in rows
    ]


def table_items(mapping: dict[str, Any]) -> list[tuple[str, str]]:
    """Sorted ``(key, value)`` pairs of the scalar entries of ``mapping``, values as short text."""
    items = []
    for key in sorted(mapping):
        value = mapping[key]
        if isinstance(value, (dict, list, tuple)):
            value = str(value) if len(str(value)) <= 80 else f"{type(value).__name__} of {len(value)}"
        items.append((key, str(value).replace("|", "\\|")))
    return items
