"""Corpus readers, one module each, and their registry.

Adding a corpus is one new module with a :class:`~hf_cxr_diffusion.data.corpora.base.Corpus` subclass
plus one line in :data:`CORPORA` (``name -> ".module:Class"``, imported on first use by
:class:`hf_cxr_diffusion.registry.Registry`).
"""

from __future__ import annotations

from hf_cxr_diffusion.data.corpora.base import Corpus, CorpusTable, Record
from hf_cxr_diffusion.registry import Registry

CORPORA: Registry[type[Corpus]] = Registry(
    "corpus",
    {
        "chexpert": ".chexpert:CheXpert",
        "nih": ".nih:NIHChestXray14",
        "iu_xray": ".iu_xray:IUXray",
        "montgomery": ".montgomery:Montgomery",
        "pneumonia": ".pneumonia:PneumoniaFolders",
        "mimic": ".mimic:MIMICCXRJPG",
        "folder": ".folder:Folder",
    },
    package=__name__,
    option="--corpus",
    normalize=lambda name: name.strip().lower().replace("-", "_"),
)


def get_corpus(name: str) -> Corpus:
    """A reader of the corpus registered under ``name``; unknown names are a :class:`UserError` listing the known ones."""
    return CORPORA[name]()


__all__ = ["CORPORA", "Corpus", "CorpusTable", "Record", "get_corpus"]
