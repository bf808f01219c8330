"""``publish dataset PREPARED --prompts-only``: a public-safe repo of a corpus whose images may not be shared.

Only the prepared folder's ``prompts`` config travels (prompts, labels, splits, patient-level ids and each
image's corpus-relative ``source_path``), with the corpus's data-use note and how to obtain the images;
:func:`refuse_pixels` checks that no column can hold image bytes. Users join their own licensed copy back
with :func:`hf_cxr_diffusion.data.attach.attach_images` (``load_dataset(repo)`` then ``attach_images(ds, data_dir)``).
"""

from __future__ import annotations

import re
from pathlib import Path

from hf_cxr_diffusion.artefacts import CARD_FILE, PREPARE_INFO_FILE, PREPARED_DATA_DIR, PREPARED_PROMPTS_DIR
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import cards
from hf_cxr_diffusion.hub.files import copy_file, copy_json_without_local_paths, read_json

_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d{5}-of-\d{5}\.parquet$")


def refuse_pixels(root: Path, files: list[str]) -> None:
    """Raise naming the file and column when a parquet file holds a column that can carry image bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for rel in files:
        for field in pq.read_schema(root / rel):
            binary = pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)
            struct_bytes = pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0
            if binary or struct_bytes or field.name == "image":
                raise UserError(f"{rel}: column {field.name!r} can hold image bytes; a prompts-only export carries "
                                "no pixels (publish the prepared folder's prompts config, written by prepare)")


def build_prompts_export(src: Path, dst: Path, *, repo_id: str, license: str, card_template: Path | None = None) -> None:
    """Copy the ``prompts`` config of the prepared folder ``src`` into ``dst``, check it holds no pixels, card it."""
    from huggingface_hub import DatasetCard, DatasetCardData

    if not (src / PREPARE_INFO_FILE).is_file():
        raise UserError(f"{src} is not a prepare output (no {PREPARE_INFO_FILE}); --prompts-only publishes the "
                        "prompts of a `cxr-diffusion prepare` folder")
    folder = src / PREPARED_PROMPTS_DIR if (src / PREPARED_PROMPTS_DIR).is_dir() else src / PREPARED_DATA_DIR
    shards = sorted(p for p in folder.glob("*.parquet") if _SHARD.match(p.name))
    if not shards:
        raise UserError(f"{folder} holds no parquet shards; re-run `cxr-diffusion prepare`")
    files = [f"{PREPARED_PROMPTS_DIR}/{p.name}" for p in shards]
    for shard, rel in zip(shards, files):
        copy_file(shard, dst / rel)
    refuse_pixels(dst, files)
    copy_json_without_local_paths(src / PREPARE_INFO_FILE, dst / PREPARE_INFO_FILE)
    info = read_json(dst / PREPARE_INFO_FILE)
    corpus = str(info.get("corpus", "unknown corpus"))
    splits = sorted({_SHARD.match(Path(rel).name)["split"] for rel in files})
    counts = info.get("num_rows") if isinstance(info.get("num_rows"), dict) else {}
    data = DatasetCardData(
        license=license,
        pretty_name=f"{corpus} prompts and labels (no images)",
        tags=["medical", "chest-x-ray", "hf-cxr-diffusion", "prompts-only", corpus],
        task_categories=["text-to-image"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": f"{PREPARED_PROMPTS_DIR}/{s}-*"} for s in splits]}],
    )
    card = cards.render(
        DatasetCard, data, cards.template_path("prompts_dataset", card_template),
        repo_id=repo_id, corpus=corpus, data_use=cards.corpus_data_use(info), homepage=info.get("homepage"),
        citation=info.get("citation"), split_counts=[(s, counts.get(s, "?")) for s in splits],
    )
    card.save(dst / CARD_FILE)
