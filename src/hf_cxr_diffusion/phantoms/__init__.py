"""Procedural chest X-ray PHANTOMS and the models the project trains on them (not medical data or models).

Test and demo tooling, kept out of :mod:`hf_cxr_diffusion.data` (the data flow): :mod:`.draw` draws one
phantom radiograph, :mod:`.corpus` writes phantom corpora in real on-disk layouts (:mod:`.layouts` gives their label rows, :mod:`.manifest` owns their manifest).
"""

from __future__ import annotations

from hf_cxr_diffusion._lazy import lazy_exports

_EXPORTS = {"make_phantoms": "corpus", "read_manifest": "manifest", "draw_phantom": "draw", "sample_params": "draw"}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
