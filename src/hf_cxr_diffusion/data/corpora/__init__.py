"""Corpus readers, one module each, and their registry.

Adding a corpus is one new module with a :class:`~hf_cxr_diffusion.data.corpora.base.Corpus` subclass
plus one line in :data:`CORPORA` (``name -> "module:Class"``, imported lazily).
"""

from __future__ import annotations

import importlib

from hf_cxr_diffusion.data.corpora.base import Corpus, CorpusTable, Record
from hf_cxr_diffusion.errors import UserError

CORPORA: dict[str, str] = {
    "chexpert": "chexpert:CheXpert",
    "nih": "nih:NIHChestXray14",
    "iu_xray": "iu_xray:IUXray",
    "montgomery": "montgomery:Montgomery",
    "pneumonia": "pneumonia:PneumoniaFolders",
    "mimic": "mimic:MIMICCXRJPG",
    "folder": "folder:Folder",
}


def get_corpus(name: str) -> Corpus:
    """The reader registered under ``name``; unknown names are a :class:`UserError` listing the known ones."""
    key = name.strip().lower().replace("-", "_")
    if key not in CORPORA:
        raise UserError(f"unknown corpus {name!r}; use --corpus one of {', '.join(CORPORA)}")
    module, cls = CORPORA[key].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)()


__all__ = ["CORPORA", "Corpus", "CorpusTable", "Record", "get_corpus"]
