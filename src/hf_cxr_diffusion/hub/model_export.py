"""Export a training output folder as a Hub model repo: adapter or full pipeline, plus its card.

LoRA-family weights (LoRA, DoRA, SeLoRA) are copied byte for byte so the adapter metadata in
the safetensors header is kept and ``pipe.load_lora_weights(repo)`` reads them; BitFit /
DiffFit tensors travel with ``cxr_method.json`` for ``hf_cxr_diffusion.load_adapter``; full
fine-tunes are exported as the pipeline folder named by ``model_index.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

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
    copy_json_without_local_paths,
    copy_tree,
    display_name,
    hub_id_of,
    is_hub_id,
    natural_key,
    read_json,
    require_files,
    without_local_paths,
)
from hf_cxr_diffusion.hub.reports import load_rows
from hf_cxr_diffusion.training.summary import reload_check_passed

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
    if reload_check_passed(out.summary) is False:
        raise UserError(f"{src}: the final reload check of its training run failed ({SUMMARY_FILE}: reload_check), so the "
                        "saved weights do not reproduce the trained model; retrain it instead of publishing it")
    if kind == "adapter" and not out.is_adapter:
        raise UserError(f"{src} holds a full pipeline ({PIPELINE_INDEX_FILE}); publish it with `publish model`")
    if kind == "model" and out.is_adapter:
        raise UserError(f"{src} holds an adapter, not a full pipeline; publish it with `publish adapter`")
    return out


def _header_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _without_local_paths_in_header(metadata: dict[str, str], base_model: str) -> dict[str, str]:
    """A safetensors header's metadata with local paths replaced; peft's ``base_model_name_or_path`` (the
    text encoder's records the local folder it was loaded from) becomes ``base_model``."""
    scrubbed = {}
    for key, text in metadata.items():
        value = _header_value(text)
        if isinstance(value, str):
            scrubbed[key] = str(without_local_paths(value))
            continue
        if isinstance(value, dict):
            value = {k: base_model if k.endswith("base_model_name_or_path") and v else v for k, v in value.items()}
        scrubbed[key] = json.dumps(without_local_paths(value), indent=2, sort_keys=True)
    return scrubbed


def copy_weights_file(src: Path, dst: Path, base_model: str) -> Path:
    """Copy a safetensors file byte for byte, or, when its header names a local path, rewrite the header only
    (same tensors) so that no export carries the training machine's paths."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as handle:
        metadata = handle.metadata() or {}
        scrubbed = _without_local_paths_in_header(metadata, base_model)
        if all(_header_value(scrubbed[k]) == _header_value(v) for k, v in metadata.items()):
            return copy_file(src, dst)
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata=scrubbed)
    logger.info("rewrote the header of %s without its local paths (tensors unchanged)", dst.name)
    return dst


def _copy_weights(out: TrainingOutput, dst: Path, base_model: str) -> None:
    if out.is_adapter:
        copy_weights_file(out.weights_path, dst / out.kind.weights_file, base_model)
    else:
        index = read_json(out.weights_path)
        parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]
        require_files(out.path, parts, "diffusers pipeline folder (components named in model_index.json)")
        copy_file(out.weights_path, dst / PIPELINE_INDEX_FILE)
        for part in parts:
            copy_tree(out.path / part, dst / part)
    copy_json_without_local_paths(out.path / METHOD_FILE, dst / METHOD_FILE, base_model=base_model)


def _copy_extras(src: Path, dst: Path, report: Path | None) -> dict[str, str | None]:
    """Summary, report (both without local paths), loss curve and the last validation grid; returns card paths."""
    found: dict[str, str | None] = {"sample_grid": None}
    if (src / SUMMARY_FILE).is_file():
        copy_json_without_local_paths(src / SUMMARY_FILE, dst / SUMMARY_FILE)
    if report is not None:
        copy_json_without_local_paths(report, dst / REPORT_FILE)
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
        data = data if isinstance(data, dict) else {}
        corpus = str(data.get("corpus", value))
        if data.get("phantom"):
            return (f"Procedural **phantom** radiographs (no patient data) in the {corpus} corpus layout, prepared "
                    "with `cxr-diffusion prepare`.", cards.corpus_data_use(data), None)
        return f"Corpus **{corpus}** prepared with `cxr-diffusion prepare`.", cards.corpus_data_use(data), None
    if is_hub_id(value):
        return f"[{value}](https://huggingface.co/datasets/{value})", cards.data_use_note(value), value
    return f"local folder `{display_name(value)}` (not on the Hub)", cards.data_use_note(value), None


def _usage(out: TrainingOutput, repo_id: str, base_id: str | None) -> str:
    base = base_id or "BASE_MODEL_ID"  # unknown: the card says so above the snippet
    prompt = (
        'image = pipe("Chest X-ray of a subject with Cardiomegaly", num_inference_steps=50, guidance_scale=4.0)'
        ".images[0]"
    )
    if out.kind is ArtefactKind.LORA and not out.config.get("use_dora"):
        return (
            "import torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{base}", dtype=torch.float16).to("cuda")\n'
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


def resolve_base_model(recorded: str, override: str | None = None) -> str | None:
    """The base model's Hub id for the card: ``override`` (``--base-model``), else :func:`hub_id_of` the recorded one."""
    if override is not None:
        if not is_hub_id(override):
            raise UserError(f"--base-model {override!r} is not a Hub model id (ORG/NAME)")
        return override
    return hub_id_of(recorded)


def run_facts(out: TrainingOutput) -> list[tuple[str, str]]:
    """What actually ran, from ``training_summary.json``: precision used, device, processes, steps."""
    summary = out.summary
    precision = summary.get("mixed_precision")
    facts = {
        "precision used": precision.get("used") if isinstance(precision, dict) else precision,
        "device": summary.get("device"),
        "processes": summary.get("num_processes"),
        "optimizer steps": summary.get("steps"),
        "training images": summary.get("num_train_images"),
        "resolution": summary.get("resolution"),
    }
    return [(k, str(v)) for k, v in facts.items() if v is not None]


def build_model_export(kind: str, src: Path, dst: Path, *, repo_id: str, license: str,
                       training_data: str | None = None, report: Path | None = None,
                       card_template: Path | None = None, base_model: str | None = None) -> None:
    """Write the model repo for ``src`` into the empty folder ``dst``; ``base_model`` overrides the Hub id
    of the base model (else found by :func:`resolve_base_model`)."""
    from huggingface_hub import ModelCard, ModelCardData

    out = read_export_source(src, kind)
    recorded = str(out.base_model)
    base_id = resolve_base_model(recorded, base_model)
    if base_id is None:
        logger.warning("base model %r has no Hub id: the card says it is unknown (pass --base-model ORG/NAME)", recorded)
    _copy_weights(out, dst, base_id or display_name(recorded))
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
    card_data = ModelCardData(
        base_model=base_id,
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
        base_model_link=f"[{base_id}](https://huggingface.co/{base_id})" if base_id else
        f"**unknown**: trained from a local folder `{display_name(recorded)}` that names no Hub model "
        "(re-export with `--base-model ORG/NAME`)",
        summary=f"A {name} {'adapter' if kind == 'adapter' else 'fine-tune'} of `{base_id or display_name(recorded)}` "
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
        run_facts=run_facts(out),
        training_data=data_text,
        data_use=data_use,
        evaluation=rows,
        random_weights=any(r.random_weights for r in rows),
        sample_grid=extras["sample_grid"],
        usage=_usage(out, repo_id, base_id),
        base_model_known=base_id is not None,
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
    source = read_training_output(src)
    if out.sha256 != source.sha256 and not (out.is_adapter and _same_tensors(out.weights_path, source.weights_path)):
        raise UserError(f"the weights of {src} changed while exporting; re-run the export")


def _same_tensors(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold the same tensors (headers may differ)."""
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
