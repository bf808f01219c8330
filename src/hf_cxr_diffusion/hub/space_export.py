"""``publish space ADAPTER --repo-id ORG/NAME-demo``: a Gradio Space that generates from a published adapter.

The Space folder holds ``app.py`` (the shipped ``model_cards/space_app.py``, unchanged), its
``space_config.json`` (base model and adapter repo ids, the findings to pick from, the training prompt
template), ``requirements.txt`` (installable packages only; ``gradio`` comes with the Space SDK) and a
README with Space front matter (``sdk: gradio``, ``models:`` linking the adapter and its base model)
saying the images are synthetic and not for diagnosis.
"""

from __future__ import annotations

import py_compile
from pathlib import Path

from hf_cxr_diffusion.artefacts import CARD_FILE, PREPARE_INFO_FILE, ArtefactKind
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import model_export
from hf_cxr_diffusion.hub.files import copy_file, read_json
from hf_cxr_diffusion.io import write_json_atomic, write_text_atomic

APP_FILE = "app.py"
CONFIG_FILE = "space_config.json"
#: the findings offered when the training data's label names are not known
DEFAULT_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
DEFAULT_TEMPLATE = "Chest X-ray of a subject with {findings}"
DISCLAIMER = ("Every image is SYNTHETIC, made by a diffusion model: it shows no real patient and must never be used to "
              "diagnose, treat or triage anyone.")
REQUIREMENTS = ("torch", "diffusers>=0.40", "transformers", "accelerate", "peft", "safetensors")


def _training_vocabulary(data: str | None) -> tuple[list[str], str]:
    """The findings and prompt template the adapter learnt (from the prepared training folder, when it is here)."""
    info = read_json(Path(data) / PREPARE_INFO_FILE) if data and (Path(data) / PREPARE_INFO_FILE).is_file() else {}
    names = [n for n in info.get("label_names") or [] if n != "No Finding"] if isinstance(info, dict) else []
    template = info.get("template_format") if isinstance(info, dict) else None
    usable = isinstance(template, str) and "{findings}" in template and template.count("{") == 1
    return names or list(DEFAULT_FINDINGS), template if usable else DEFAULT_TEMPLATE


def build_space_export(src: Path, dst: Path, *, repo_id: str, license: str, adapter_repo: str | None = None,
                       base_model: str | None = None) -> None:
    """Write the Space folder for the adapter training output ``src`` into the empty folder ``dst``."""
    from huggingface_hub import SpaceCard, SpaceCardData

    from hf_cxr_diffusion.resources import resource_dir

    out = model_export.read_export_source(src, "adapter")
    base = model_export.resolve_base_model(str(out.base_model), base_model)
    if base is None:
        raise UserError(f"the base model of {src} ({out.base_model}) has no Hub id; a Space loads it from the Hub: "
                        "pass --base-model ORG/NAME")
    adapter = adapter_repo or (repo_id.removesuffix("-demo") if repo_id.endswith("-demo") else None)
    if not adapter:
        raise UserError(f"which published adapter does the Space {repo_id} load? pass --adapter-repo ORG/NAME "
                        "(or name the Space ORG/NAME-demo for the adapter ORG/NAME)")
    findings, template = _training_vocabulary(model_export.recorded_training_data(out))
    lora = out.kind is ArtefactKind.LORA and not out.config.get("use_dora")
    copy_file(resource_dir("model_cards") / "space_app.py", dst / APP_FILE)
    write_json_atomic(dst / CONFIG_FILE, {
        "base_model": base, "adapter": adapter, "loader": "load_lora_weights" if lora else "hf_cxr_diffusion",
        "findings": findings, "prompt_template": template, "no_finding": "no finding",
        "title": f"{adapter}: synthetic chest X-rays ({out.method})", "disclaimer": DISCLAIMER,
    })
    write_text_atomic(dst / "requirements.txt", "\n".join((*REQUIREMENTS, *(() if lora else ("hf-cxr-diffusion",)))) + "\n")
    data = SpaceCardData(title=f"{adapter.split('/')[-1]} demo", sdk="gradio", app_file=APP_FILE, license=license,
                         models=[adapter, base], tags=["medical", "chest-x-ray", "synthetic", "hf-cxr-diffusion"])
    card = SpaceCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + (
        f"# {adapter} demo\n\nPick findings and a seed; the Space generates a chest X-ray with the {out.method} adapter "
        f"[{adapter}](https://huggingface.co/{adapter}) on [{base}](https://huggingface.co/{base}).\n\n"
        f"**{DISCLAIMER}**\n"))
    card.save(dst / CARD_FILE)


def validate_space_export(dst: Path) -> None:
    """The card parses as a Gradio Space linking its models, and ``app.py`` compiles."""
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(dst / CARD_FILE)
    if card.data.sdk != "gradio" or not card.data.models:
        raise UserError(f"{dst / CARD_FILE}: not a Gradio Space card linking its models")
    try:
        py_compile.compile(str(dst / APP_FILE), doraise=True, cfile=str(dst.parent / f".{dst.name}.app.pyc"))
    except py_compile.PyCompileError as err:
        raise UserError(f"{dst / APP_FILE} does not compile: {err}") from err
    finally:
        (dst.parent / f".{dst.name}.app.pyc").unlink(missing_ok=True)
