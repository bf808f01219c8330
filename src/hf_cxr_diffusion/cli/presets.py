"""``cxr-diffusion presets``: the training presets shipped with the package (``train --config NAME``)."""

from __future__ import annotations

import argparse



HELP = "list the shipped training presets (use one with train --config NAME)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.resources import preset_summaries

    for name, summary in preset_summaries().items():
        print(f"{name:32s} {summary}")
    return 0
