"""Chest X-ray corpora -> labelled, prompted, patient-split ``datasets`` and Hub-ready dataset folders.

Lazy exports (worker processes that decode images import nothing heavy): ``PrepareConfig``, ``Prepared``,
``prepare``, ``prepare_dataset``, ``save_dataset_folder``, ``prepare_iterable``, ``iter_records``,
``plan_dataset``, ``load_dataset_dict``, ``load_split``, ``get_corpus``, ``multi_hot``, ``attach_images``.
"""

from __future__ import annotations

from hf_cxr_diffusion._lazy import lazy_exports

_EXPORTS = {
    "prepare": "preparation", "prepare_dataset": "preparation", "save_dataset_folder": "preparation",
    "prepare_iterable": "preparation", "iter_records": "preparation", "Prepared": "preparation", "plan_dataset": "plan",
    "PrepareConfig": "config", "load_dataset_dict": "loading", "load_split": "loading",
    "get_corpus": "corpora", "CORPORA": "corpora", "multi_hot": "labels", "TEMPLATES": "prompts",
    "attach_images": "attach",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
