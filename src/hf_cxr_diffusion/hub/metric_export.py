"""Export an ``evaluate`` module folder as the Gradio Space that ``evaluate.load("ORG/NAME")`` resolves.

``evaluate`` downloads ``NAME.py`` from the Space ``ORG/NAME`` (the file is named after the repo),
so the module is renamed to the repo name; the README gets the Space front matter
(``sdk: gradio``, ``app_file: app.py``, tags ``evaluate`` and ``metric``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import cards
from hf_cxr_diffusion.hub.files import copy_file, is_forbidden, require_files

logger = logging.getLogger(__name__)

APP_TEMPLATE = '''import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("{repo_id}")
launch_gradio_widget(module)
'''


#: ``evaluate.load("<anything>"`` in app.py: a Space must load its own repo id
#: (a bare name would mean the canonical ``evaluate-metric/<name>``)
_LOAD_CALL = re.compile(r"""evaluate\.load\(\s*(["'])[^"']*\1""")


def module_name(repo_id: str) -> str:
    return repo_id.split("/")[-1]


def build_metric_export(src: Path, dst: Path, *, repo_id: str, license: str, card_template: Path | None = None) -> None:
    """Copy the module (renamed after the repo), its helpers, requirements and app; render the Space card."""
    from huggingface_hub import SpaceCard, SpaceCardData

    source_module = f"{src.name}.py"
    require_files(src, [source_module, "README.md", "requirements.txt"], "evaluate metric module folder")
    name = module_name(repo_id)
    copy_file(src / source_module, dst / f"{name}.py")
    for helper in sorted(src.glob("*.py")):
        if helper.name not in (source_module, "app.py") and not is_forbidden(helper.name):
            copy_file(helper, dst / helper.name)
    copy_file(src / "requirements.txt", dst / "requirements.txt")
    app_file = src / "app.py"
    app = app_file.read_text(encoding="utf-8") if app_file.is_file() else APP_TEMPLATE.format(repo_id=repo_id)
    (dst / "app.py").write_text(_LOAD_CALL.sub(f'evaluate.load("{repo_id}"', app), encoding="utf-8")
    requirements = (src / "requirements.txt").read_text(encoding="utf-8")
    if "hf_cxr_diffusion" in (src / source_module).read_text(encoding="utf-8") and "cxr" not in requirements:
        logger.warning("%s imports hf_cxr_diffusion but requirements.txt lacks it: the Space will fail", source_module)
    source = SpaceCard.load(src / "README.md")
    metadata = source.data.to_dict()
    metadata.update(
        title=metadata.get("title") or name,
        sdk="gradio",
        app_file="app.py",
        license=license,
        tags=list(dict.fromkeys([*(metadata.get("tags") or []), "evaluate", "metric"])),
    )
    metadata.setdefault("pinned", False)
    card = cards.render(SpaceCard, SpaceCardData(**metadata), cards.template_path("metric", card_template),
                        body=source.text.strip(), repo_id=repo_id)
    card.save(dst / "README.md")


def validate_metric_export(dst: Path, repo_id: str) -> None:
    """The Space card says gradio + app.py and ``evaluate`` loads the module file."""
    import evaluate
    from huggingface_hub import SpaceCard

    data = SpaceCard.load(dst / "README.md").data
    if data.sdk != "gradio" or data.app_file != "app.py":
        raise UserError(f"{dst / 'README.md'} must declare sdk: gradio and app_file: app.py")
    module_file = dst / f"{module_name(repo_id)}.py"
    try:
        evaluate.load(str(module_file))
    except ImportError as err:
        raise UserError(f"evaluate cannot import {module_file}: {err}; add the package to requirements.txt") from err
