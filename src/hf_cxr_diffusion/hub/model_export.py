"""Export a training output folder as a Hub model repo: adapter or full pipeline, plus its card.

LoRA-family weights (LoRA, DoRA, SeLoRA) are copied byte for byte so the adapter metadata in
the safetensors header is kept and ``pipe.load_lora_weights(repo)`` reads them; BitFit /
DiffFit tensors travel with ``cxr_method.json`` for ``hf_cxr_diffusion.load_adapter``; full
fine-tunes are exported as the pipeline folder named by ``model_index.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import cards
from hf_cxr_diffusion.hub.files import (
    copy_file,
    copy_tree,
    display_name,
    is_hub_id,
    natural_key,
    read_json,
    require_files,
)
from hf_cxr_diffusion.hashing import sha256_file
from hf_cxr_diffusion.hub.reports import load_rows

logger = logging.getLogger(__name__)

METHOD_FILE = "cxr_method.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER_FILE = "cxr_adapter.safetensors"
PIPELINE_FILE = "model_index.json"
SUMMARY_FILE = "training_summary.json"

#: papers / references shown next to the method name on the card
METHOD_REFERENCES: dict[str, str] = {
    "lora": "Hu et al., LoRA, ICLR 2022",
    "dora": "Liu et al., DoRA, ICML 2024",
    "selora": "Mao et al., SeLoRA: self-expanding low-rank adaptation, 2024",
    "bitfit": "Ben Zaken et al., BitFit, ACL 2022",
    "difffit": "Xie et al., DiffFit, ICCV 2023",
    "full": "full fine-tuning of the U-Net",
    "dreambooth": "Ruiz et al., DreamBooth, CVPR 2023",
    "textual_inversion": "Gal et al., textual inversion, ICLR 2023",
}
#: keys of training_summary.json / the method config that may name the training data
_DATA_KEYS = ("train_data", "training_data", "dataset", "train_dataset", "dataset_name", "data", "data_dir")
#: run settings shown elsewhere on the card (or machine-local), not in the hyperparameter table
_NOT_HYPERPARAMETERS = frozenset({*_DATA_KEYS, "pretrained_model", "base_model", "resume_from_checkpoint", "report_to"})


@dataclass(frozen=True)
class TrainingOutput:
    """What :func:`read_training_output` found in a training output folder."""

    src: Path
    method: dict[str, Any]
    summary: dict[str, Any]
    weights: str  # "lora", "tensors" or "pipeline"

    @property
    def name(self) -> str:
        return str(self.method.get("method", "unknown"))


def read_training_output(src: Path, kind: str) -> TrainingOutput:
    """Check ``src`` holds what ``publish adapter`` / ``publish model`` needs; raise naming what is missing."""
    require_files(src, [METHOD_FILE], "training output folder")
    method = read_json(src / METHOD_FILE)
    if not isinstance(method, dict) or not method.get("base_model"):
        raise UserError(f"{src / METHOD_FILE} has no 'base_model' field; the card and the loader need it")
    if (src / LORA_FILE).is_file():
        weights = "lora"
    elif (src / ADAPTER_FILE).is_file():
        weights = "tensors"
    elif (src / PIPELINE_FILE).is_file():
        weights = "pipeline"
    else:
        raise UserError(f"{src} holds no trained weights: missing {LORA_FILE}, {ADAPTER_FILE} or {PIPELINE_FILE}")
    if kind == "adapter" and weights == "pipeline":
        raise UserError(f"{src} holds a full pipeline ({PIPELINE_FILE}); publish it with `publish model`")
    if kind == "model" and weights != "pipeline":
        raise UserError(f"{src} holds an adapter, not a full pipeline; publish it with `publish adapter`")
    summary = read_json(src / SUMMARY_FILE) if (src / SUMMARY_FILE).is_file() else {}
    return TrainingOutput(src=src, method=method, summary=summary if isinstance(summary, dict) else {}, weights=weights)


def _copy_weights(out: TrainingOutput, dst: Path) -> None:
    if out.weights == "lora":
        copy_file(out.src / LORA_FILE, dst / LORA_FILE)
    elif out.weights == "tensors":
        copy_file(out.src / ADAPTER_FILE, dst / ADAPTER_FILE)
    else:
        index = read_json(out.src / PIPELINE_FILE)
        parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]
        require_files(out.src, parts, "diffusers pipeline folder (components named in model_index.json)")
        copy_file(out.src / PIPELINE_FILE, dst / PIPELINE_FILE)
        for part in parts:
            copy_tree(out.src / part, dst / part)
    copy_file(out.src / METHOD_FILE, dst / METHOD_FILE)


def _copy_extras(src: Path, dst: Path) -> dict[str, str | None]:
    """Summary, report, loss curve and the last validation grid; returns card paths."""
    found: dict[str, str | None] = {"sample_grid": None, "report": None}
    if (src / SUMMARY_FILE).is_file():
        copy_file(src / SUMMARY_FILE, dst / SUMMARY_FILE)
    report, _ = load_rows(src)
    if report is not None:
        found["report"] = report.relative_to(src).as_posix()
        copy_file(report, dst / found["report"])
    if (src / "loss_curve.png").is_file():
        copy_file(src / "loss_curve.png", dst / "images" / "loss_curve.png")
    # the trainer writes validation/step-NNNNNN.png grids and validation/final.png: show the last one
    grids = sorted((src / "validation").glob("*.png"), key=lambda p: (p.stem == "final", natural_key(p)))
    if grids:
        found["sample_grid"] = f"images/{grids[-1].name}"
        copy_file(grids[-1], dst / found["sample_grid"])
    return found


def _count_parameters(path: Path) -> int:
    """Number of values stored in a safetensors file (the trainable parameters of an adapter)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            n = 1
            for dim in handle.get_slice(key).get_shape():
                n *= dim
            total += n
    return total


def recorded_training_data(method: dict[str, Any], summary: dict[str, Any]) -> str | None:
    """The training data a run recorded (its summary, the summary's config, or the method config)."""
    scopes = (summary, summary.get("config"), method.get("config"))
    return next((str(d[k]) for d in scopes if isinstance(d, dict) for k in _DATA_KEYS if d.get(k)), None)


def training_data_of_folder(folder: Path) -> str | None:
    """:func:`recorded_training_data` of a training output folder, None when it is not one."""
    files = [folder / METHOD_FILE, folder / SUMMARY_FILE]
    data = [read_json(f) if f.is_file() else {} for f in files]
    return recorded_training_data(*(d if isinstance(d, dict) else {} for d in data)) if files[0].is_file() else None


def describe_training_data(value: str | None) -> tuple[str, str, str | None]:
    """(card text, data-use note, hub dataset id or None) for a training data name / folder / hub id."""
    if value is None:
        return "Not recorded by the training run.", cards.data_use_note(None), None
    info = Path(value) / "prepare_info.json"
    if info.is_file():
        data = read_json(info)
        corpus = str(data.get("corpus", value)) if isinstance(data, dict) else value
        return f"Corpus **{corpus}** prepared with `cxr-diffusion prepare`.", cards.corpus_data_use(data), None
    if is_hub_id(value):
        return f"[{value}](https://huggingface.co/datasets/{value})", cards.data_use_note(value), value
    return f"local folder `{display_name(value)}` (not on the Hub)", cards.data_use_note(value), None


def _usage(out: TrainingOutput, repo_id: str) -> str:
    base = out.method["base_model"]
    prompt = (
        'image = pipe("Chest X-ray of a subject with Cardiomegaly", num_inference_steps=50, guidance_scale=4.0)'
        ".images[0]"
    )
    if out.weights == "lora":
        return (
            "import torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{base}", torch_dtype=torch.float16).to("cuda")\n'
            f'pipe.load_lora_weights("{repo_id}")\n{prompt}'
        )
    if out.weights == "tensors":
        return (
            "from diffusers import DiffusionPipeline\nfrom huggingface_hub import snapshot_download\n"
            "from hf_cxr_diffusion import load_adapter  # pip install hf-cxr-diffusion\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{base}")\n'
            f'load_adapter(pipe, snapshot_download("{repo_id}"))\n{prompt}'
        )
    return f'from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained("{repo_id}")\n{prompt}'


def _hyperparameters(out: TrainingOutput) -> list[tuple[str, str]]:
    config = out.method.get("config") if isinstance(out.method.get("config"), dict) else {}
    training = out.summary.get("config") if isinstance(out.summary.get("config"), dict) else out.summary
    merged = {f"method.{k}": v for k, v in config.items()}
    merged.update({k: v for k, v in training.items() if v is not None and not isinstance(v, (dict, list))
                   and k not in _NOT_HYPERPARAMETERS and not k.endswith(("_dir", "_path"))})
    return cards.table_items(merged)


def build_model_export(kind: str, src: Path, dst: Path, *, repo_id: str, license: str,
                       training_data: str | None = None, card_template: Path | None = None) -> None:
    """Write the model repo for ``src`` into the empty folder ``dst``."""
    from huggingface_hub import ModelCard, ModelCardData

    out = read_training_output(src, kind)
    _copy_weights(out, dst)
    extras = _copy_extras(src, dst)
    _, rows = load_rows(src)
    recorded = recorded_training_data(out.method, out.summary)
    data_text, data_use, dataset_id = describe_training_data(training_data or recorded)
    weights_file = {"lora": LORA_FILE, "tensors": ADAPTER_FILE}.get(out.weights)
    trainable = out.method.get("trainable_parameters")
    if trainable is None and weights_file:
        trainable = _count_parameters(dst / weights_file)
    total = out.method.get("total_parameters")
    counted = isinstance(trainable, int)
    tags = ["diffusers", "text-to-image", "medical", "chest-x-ray", "hf-cxr-diffusion", out.name]
    if out.weights == "lora":
        tags.insert(1, "lora")
    base = str(out.method["base_model"])
    if not is_hub_id(base):
        logger.warning("base model %r is not a Hub id: the card cannot link it (train from a Hub model)", base)
    card_data = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        license=license,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=list(dict.fromkeys(tags)),
        datasets=[dataset_id] if dataset_id else None,
        model_name=repo_id,
        eval_results=cards.eval_results(rows, dataset_name=dataset_id or "chest X-ray test set",
                                        dataset_type=dataset_id or "cxr") or None,
    )
    card = cards.render(
        ModelCard, card_data, cards.template_path("adapter", card_template),
        repo_id=repo_id,
        base_model_link=f"[{base}](https://huggingface.co/{base})" if is_hub_id(base) else f"local pipeline `{base}`",
        summary=f"A {out.name} {'adapter' if kind == 'adapter' else 'fine-tune'} of `{base}` "
        "for synthetic chest X-ray generation.",
        method=out.name,
        method_reference=METHOD_REFERENCES.get(out.name.lower(), "see cxr_method.json"),
        weights_format={"lora": f"`{LORA_FILE}` (diffusers LoRA)", "tensors": f"`{ADAPTER_FILE}` + `{METHOD_FILE}`",
                        "pipeline": "diffusers pipeline folder"}[out.weights],
        trainable_parameters=f"{trainable:,}" if counted else "all (full fine-tune)",
        total_parameters=f"{total:,}" if isinstance(total, int) else None,
        trainable_percent=f"{100 * trainable / total:.3f}%" if counted and isinstance(total, int) and total else None,
        hyperparameters=_hyperparameters(out),
        training_data=data_text,
        data_use=data_use,
        evaluation=rows,
        random_weights=any(r.random_weights for r in rows),
        sample_grid=extras["sample_grid"],
        usage=_usage(out, repo_id),
    )
    card.save(dst / "README.md")


def validate_model_export(kind: str, src: Path, dst: Path) -> None:
    """The weights load the way their consumer reads them and match the source byte for byte."""
    out = read_training_output(dst, kind)
    if out.weights == "lora":
        from diffusers import StableDiffusionPipeline

        state, _ = StableDiffusionPipeline.lora_state_dict(str(dst))
        if not state:
            raise UserError(f"{src / LORA_FILE} holds no LoRA tensors diffusers can read")
    weights_file = {"lora": LORA_FILE, "tensors": ADAPTER_FILE}.get(out.weights, PIPELINE_FILE)
    if sha256_file(dst / weights_file) != sha256_file(src / weights_file):
        raise UserError(f"{weights_file} changed while exporting; re-run the export")
