"""``cxr-diffusion prepare``: a CXR corpus -> Hub-ready dataset folder (parquet shards + card).

Every field of :class:`hf_cxr_diffusion.data.config.PrepareConfig` is a kebab-case flag.
"""

from __future__ import annotations

import argparse

from hf_cxr_diffusion.cli._common import add_config_flags, add_output_dir, config_values


HELP = "prepare a chest X-ray corpus as a Hub-ready dataset folder"
DESCRIPTION = ("Read a corpus in its real layout, apply the label policy and prompt template, split by "
               "patient and write parquet shards + a dataset card that datasets.load_dataset(OUTPUT_DIR) reads.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_cxr_diffusion.data.config import PrepareConfig

    add_output_dir(parser, help="folder to write the dataset to (outside --data-dir)", deprecated=["--out"])
    add_config_flags(parser, PrepareConfig, exclude=("output_dir",))


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.data.config import PrepareConfig
    from hf_cxr_diffusion.data.preparation import prepare

    prepared = prepare(PrepareConfig(**config_values(args, PrepareConfig)))
    print(prepared.output_dir)
    return 0
