"""``cxr-diffusion study``: a whole fine-tuning study in one command, resumable and shardable.

Train every method of a study file, sample the same seeds per condition, score them, train a classifier
on the synthetic images, and tabulate and plot it all in the papers' layouts::

    from hf_cxr_diffusion.study import collect_study, load_study, plan_study, run_study

    run_study("configs/study/paradigm-phantom.yaml", "study_output")        # or only=, shard=(1, 4)
    collect_study("study_output")                                           # merge what is complete
"""

from __future__ import annotations

from hf_cxr_diffusion.study.config import StudyConfig, load_study
from hf_cxr_diffusion.study.plan import format_plan, plan_study
from hf_cxr_diffusion.study.results import collect_study
from hf_cxr_diffusion.study.runner import run_study

__all__ = ["StudyConfig", "collect_study", "format_plan", "load_study", "plan_study", "run_study"]
