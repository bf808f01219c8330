"""Shared runner of the per-corpus scripts: ``cxr-diffusion prepare`` with a corpus's defaults.

Any flag given on the command line overrides the defaults (argparse keeps the last value).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run(corpus: str, defaults: Sequence[str] = ()) -> int:
    from hf_cxr_diffusion.cli import main

    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(sys.modules["__main__"].__doc__)
        args = args or ["--help"]
    return main(["prepare", "--corpus", corpus, *defaults, *args])
