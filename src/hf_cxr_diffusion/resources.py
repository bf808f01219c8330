"""The folders shipped with the package: presets, card templates, ``evaluate`` modules, dataset scripts.

The top-level folders of the repository (:data:`SHIPPED`) are the source of truth. A built wheel
carries a copy made at build time (``setup.py``'s ``build_py`` copies them into
``hf_cxr_diffusion/_shipped/``); a clone or an editable install reads the repository's own folders.
:func:`resource_dir` finds either. Only the standard library is imported at module level, so
``setup.py`` can read :data:`SHIPPED` from this file without importing the package.
"""

from __future__ import annotations

import os
from pathlib import Path

#: top-level folders shipped inside the wheel
SHIPPED: tuple[str, ...] = ("configs", "model_cards", "metrics", "dataset_scripts")
#: where the build puts them inside the package
PACKAGED_DIR = "_shipped"
#: the file suffix of a training preset in ``configs/``
PRESET_SUFFIX = ".yaml"


def resource_dir(name: str) -> Path:
    """The folder of shipped resource ``name`` (one of :data:`SHIPPED`): the wheel's copy, else the clone's."""
    from importlib import resources

    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not a shipped folder ({', '.join(SHIPPED)})")
    packaged = Path(str(resources.files("hf_cxr_diffusion"))) / PACKAGED_DIR / name
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2] / name
    if repo.is_dir():
        return repo
    from hf_cxr_diffusion.errors import UserError

    raise UserError(f"the shipped folder {name}/ is missing from this installation ({packaged}); reinstall hf-cxr-diffusion")


def presets() -> dict[str, Path]:
    """Shipped training presets by name (``paradigm-08-lora`` -> its YAML file); ``_base`` files excluded."""
    root = resource_dir("configs")
    return {
        p.relative_to(root).with_suffix("").as_posix(): p
        for p in sorted(root.rglob(f"*{PRESET_SUFFIX}"))
        if not p.name.startswith("_")
    }


def preset_summaries() -> dict[str, str]:
    """Shipped preset name -> the first line of its leading comment (what it reproduces)."""
    out = {}
    for name, path in presets().items():
        first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "")
        out[name] = first.lstrip("#").strip() if first.startswith("#") else ""
    return out


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """``--config``: an existing YAML path as it is, else a shipped preset name (with or without ``.yaml``)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path).removeprefix("configs/").removesuffix(PRESET_SUFFIX)
    shipped = presets()
    if name in shipped:
        return shipped[name]
    from hf_cxr_diffusion.errors import UserError

    raise UserError(f"--config {name_or_path}: no such file and no shipped preset of that name "
                    f"(`cxr-diffusion presets` lists them: {', '.join(list(shipped)[:4])}, ...)")


def metric_module_dir(name_or_path: str | os.PathLike) -> Path:
    """``publish metric``: an existing module folder as it is, else a shipped ``metrics/<name>`` module."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    shipped = resource_dir("metrics") / Path(name_or_path).name
    return shipped if shipped.is_dir() else path
