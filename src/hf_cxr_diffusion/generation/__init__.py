"""Seeded, sharded synthesis -> a Hub-ready synthetic dataset folder with provenance per image."""

from __future__ import annotations

from hf_cxr_diffusion.generation.generator import generate
from hf_cxr_diffusion.generation.prompts import (
    PromptItem,
    PromptPlan,
    load_prompt_plan,
    prompts_from_dataset,
    prompts_from_file,
    prompts_from_labels_csv,
)
from hf_cxr_diffusion.generation.writer import read_png_provenance
from hf_cxr_diffusion.models.pipeline import SCHEDULERS

__all__ = [
    "SCHEDULERS",
    "PromptItem",
    "PromptPlan",
    "generate",
    "load_prompt_plan",
    "prompts_from_dataset",
    "prompts_from_file",
    "prompts_from_labels_csv",
    "read_png_provenance",
]
