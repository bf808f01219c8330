"""Export a training output folder as a Hub model repo: adapter or full pipeline, plus its card.

LoRA-family weights (LoRA, DoRA, SeLoRA) are copied byte for byte so the adapter metadata in
the safetensors header is kept and ``pipe.load_lora_weights(repo)`` reads them; BitFit /
DiffFit tensors travel with ``cxr_method.json`` for ``hf_cxr_diffusion.load_adapter``; full
fine-tunes are exported as the pipeline folder named by ``model_index.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hf_cxr_diffusion.artefacts import (
    ADAPTER_FILE,
    CARD_FILE,
    LORA_WEIGHTS_FILE,
    LOSS_CURVE_FILE,
    METHOD_FILE,
    PIPELINE_INDEX_FILE,
    PREPARE_INFO_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    VALIDATION_DIR,
    ArtefactKind,
    TrainingOutput,
    read_training_output,
)
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
from hf_cxr_diffusion.hub.reports import load_rows

logger = logging.getLogger(__name__)

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


def read_export_source(src: Path, kind: str) -> TrainingOutput:
    """The training output ``publish adapter`` / ``publish model`` exports; raise naming what is missing."""
    out = read_training_output(src)
    if not out.base_model:
        raise UserError(f"{src / METHOD_FILE} has no 'base_model' field; the card and the loader need it")
    if kind == "adapter" and not out.is_adapter:
        raise UserError(f"{src} holds a full pipeline ({PIPELINE_INDEX_FILE}); publish it with `publish model`")
    if kind == "model" and out.is_adapter:
        raise UserError(f"{src} holds an adapter, not a full pipeline; publish it with `publish adapter`")
    return out


def _copy_weights(out: TrainingOutput, dst: Path) -> None:
    if out.is_adapter:
        copy_file(out.weights_path, dst / out.kind.weights_file)
    else:
        index = read_json(out.weights_path)
        parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]
        require_files(out.path, parts, "diffusers pipeline folder (components named in model_index.json)")
        copy_file(out.weights_path, dst / PIPELINE_INDEX_FILE)
        for part in parts:
            copy_tree(out.path / part, dst / part)
    copy_file(out.path / METHOD_FILE, dst / METHOD_FILE)


def _copy_extras(src: Path, dst: Path, report: Path | None) -> dict[str, str | None]:
    """Summary, report, loss curve and the last validation grid; returns card paths."""
    found: dict[str, str | None] = {"sample_grid": None}
    if (src / SUMMARY_FILE).is_file():
        copy_file(src / SUMMARY_FILE, dst / SUMMARY_FILE)
    if report is not None:
        copy_file(report, dst / REPORT_FILE)
    if (src / LOSS_CURVE_FILE).is_file():
        copy_file(src / LOSS_CURVE_FILE, dst / "images" / LOSS_CURVE_FILE)
    # the trainer writes validation/step-NNNNNN.png grids and validation/final.png: show the last one
    grids = sorted((src / VALIDATION_DIR).glob("*.png"), key=lambda p: (p.stem == "final", natural_key(p)))
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


def recorded_training_data(out: TrainingOutput) -> str | None:
    """The training data a run recorded (its summary, the summary's config, or the method config)."""
    scopes = (out.summary, out.summary.get("config"), out.config)
    return next((str(d[k]) for d in scopes if isinstance(d, dict) for k in _DATA_KEYS if d.get(k)), None)


def training_data_of_folder(folder: Path) -> str | None:
    """:func:`recorded_training_data` of a training output folder, None when it is not one."""
    if not (folder / METHOD_FILE).is_file():
        return None
    return recorded_training_data(read_training_output(folder))


def describe_training_data(value: str | None) -> tuple[str, str, str | None]:
    """(card text, data-use note, hub dataset id or None) for a training data name / folder / hub id."""
    if value is None:
        return "Not recorded by the training run.", cards.data_use_note(None), None
    info = Path(value) / PREPARE_INFO_FILE
    if info.is_file():
        data = read_json(info)
        corpus = str(data.get("corpus", value)) if isinstance(data, dict) else value
        return f"Corpus **{corpus}** prepared with `cxr-diffusion prepare`.", cards.corpus_data_use(data), None
    if is_hub_id(value):
        return f"[{value}](https://huggingface.co/datasets/{value})", cards.data_use_note(value), value
    return f"local folder `{display_name(value)}` (not on the Hub)", cards.data_use_note(value), None


def _usage(out: TrainingOutput, repo_id: str) -> str:
    base = out.base_model
    prompt = (
        'image = pipe("Chest X-ray of a subject with Cardiomegaly", num_inference_steps=50, guidance_scale=4.0)'
        ".images[0]"
    )
    if out.kind is ArtefactKind.LORA and not out.config.get("use_dora"):
        return (
            "import torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{base}", torch_dtype=torch.float16).to("cuda")\n'
            f'pipe.load_lora_weights("{repo_id}")\n{prompt}'
        )
    if out.is_adapter:  # DoRA: diffusers' load_lora_weights drops the text encoder's magnitudes
        return (
            "from diffusers import DiffusionPipeline\nfrom huggingface_hub import snapshot_download\n"
            "from hf_cxr_diffusion import load_adapter  # pip install hf-cxr-diffusion\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{base}")\n'
            f'load_adapter(pipe, snapshot_download("{repo_id}"))\n{prompt}'
        )
    return f'from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained("{repo_id}")\n{prompt}'


def _hyperparameters(out: TrainingOutput) -> list[tuple[str, str]]:
    training = out.summary.get("config") if isinstance(out.summary.get("config"), dict) else out.summary
    merged = {f"method.{k}": v for k, v in out.config.items()}
    merged.update({k: v for k, v in training.items() if v is not None and not isinstance(v, (dict, list))
                   and k not in _NOT_HYPERPARAMETERS and not k.endswith(("_dir", "_path"))})
    return cards.table_items(merged)


def build_model_export(kind: str, src: Path, dst: Path, *, repo_id: str, license: str,
                       training_data: str | None = None, report: Path | None = None,
                       card_template: Path | None = None) -> None:
    """Write the model repo for ``src`` into the empty folder ``dst``."""
    from huggingface_hub import ModelCard, ModelCardData

    out = read_export_source(src, kind)
    _copy_weights(out, dst)
    report_path, rows = load_rows(src, report)
    extras = _copy_extras(src, dst, report_path)
    data_text, data_use, dataset_id = describe_training_data(training_data or recorded_training_data(out))
    trainable = out.trainable_parameters
    if trainable is None and out.is_adapter:
        trainable = _count_parameters(out.weights_path)
    total = out.total_parameters
    counted = isinstance(trainable, int)
    name = str(out.method)
    tags = ["diffusers", "text-to-image", "medical", "chest-x-ray", "hf-cxr-diffusion", name]
    if out.kind is ArtefactKind.LORA:
        tags.insert(1, "lora")
    base = str(out.base_model)
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
        summary=f"A {name} {'adapter' if kind == 'adapter' else 'fine-tune'} of `{base}` "
        "for synthetic chest X-ray generation.",
        method=name,
        method_reference=METHOD_REFERENCES.get(name.lower(), f"see {METHOD_FILE}"),
        weights_format={ArtefactKind.LORA: f"`{LORA_WEIGHTS_FILE}` (diffusers LoRA)",
                        ArtefactKind.TENSORS: f"`{ADAPTER_FILE}` + `{METHOD_FILE}`",
                        ArtefactKind.PIPELINE: "diffusers pipeline folder"}[out.kind],
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
    card.save(dst / CARD_FILE)


def validate_model_export(kind: str, src: Path, dst: Path) -> None:
    """The weights load the way their consumer reads them and match the source byte for byte."""
    out = read_export_source(dst, kind)
    if out.kind is ArtefactKind.LORA:
        from diffusers import StableDiffusionPipeline

        state, _ = StableDiffusionPipeline.lora_state_dict(str(dst))
        if not state:
            raise UserError(f"{src / LORA_WEIGHTS_FILE} holds no LoRA tensors diffusers can read")
    if out.sha256 != read_training_output(src).sha256:
        raise UserError(f"the weights of {src} changed while exporting; re-run the export")
