"""Run a study: per run the stages train -> generate -> evaluate -> utility, resumable and shardable.

Layout of a study folder (this module names every file in it except the collected outputs, which
:mod:`hf_cxr_diffusion.study.results` names)::

    DIR/study.json                  the study's identity (every setting + preset hashes): a folder is one study
    DIR/_data/                      the phantom dataset, when the study file asks for one (corpus/, prepared/)
    DIR/<run>/<stage>/              what the library function of that stage wrote (train: the adapter folder, ...)
    DIR/<run>/<stage>.complete.json written last: the stage's numbers; a stage without it is redone from scratch

A stage whose marker exists is skipped on rerun; a folder without its marker (a killed job) is removed
and redone, and so is every later stage of that run. ``only`` / ``shard`` pick a subset of the runs
(one SLURM array task or ``accelerate launch`` job each); :func:`~hf_cxr_diffusion.study.results.collect_study`
merges whatever is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import ensure_output_dir, write_json_atomic
from hf_cxr_diffusion.study.config import Run, StudyConfig, differing_keys, load_study

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
DATA_DIR = "_data"
STAGES = ("train", "generate", "evaluate", "utility")
MARKER_SUFFIX = ".complete.json"


@dataclasses.dataclass(frozen=True)
class StudyFolder:
    """Where a study's pieces live under ``output_dir``."""

    output_dir: Path

    def run_dir(self, run: str) -> Path:
        return self.output_dir / run

    def stage_dir(self, run: str, stage: str) -> Path:
        return self.run_dir(run) / stage

    def marker(self, run: str, stage: str) -> Path:
        return self.run_dir(run) / f"{stage}{MARKER_SUFFIX}"

    def read_stage(self, run: str, stage: str) -> dict[str, Any] | None:
        """The numbers a complete stage recorded, or None when it is not complete."""
        path = self.marker(run, stage)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def read_identity(self) -> dict[str, Any]:
        path = self.output_dir / STUDY_FILE
        if not path.is_file():
            raise UserError(f"{self.output_dir} is not a study folder ({STUDY_FILE} is missing); give the --output-dir of a study")
        return json.loads(path.read_text(encoding="utf-8"))


def run_record(run: Run) -> dict[str, Any]:
    """A run as ``study.json`` lists it (what the tables need without the study file)."""
    return {"name": run.name, "method": run.method, "label": run.label, "seed": run.seed, "base": run.is_base,
            "preset": str(run.preset) if run.preset else None, "grid_point": dict(run.grid_point)}


def stages_of(run: Run) -> tuple[str, ...]:
    return STAGES[1:] if run.is_base else STAGES


def _normalised(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def claim_study_folder(study: StudyConfig, output_dir: str | Path, *, overwrite: bool = False) -> StudyFolder:
    """Make ``output_dir`` this study's folder, or check that it already is.

    A folder of the same study is resumed. A folder made by a different study file is refused,
    naming the keys that differ, unless ``overwrite`` (which removes what that study wrote, nothing else);
    a non-empty folder that is no study's is always refused.
    """
    folder = StudyFolder(Path(output_dir))
    out = folder.output_dir
    identity = _normalised(study.identity())
    if (out / STUDY_FILE).is_file():
        old = folder.read_identity()
        keys = differing_keys(old["identity"], identity)
        if keys and not overwrite:
            raise UserError(f"{out} holds a study made by a different study file ({old['source']}): {', '.join(keys)} "
                            f"differ; pass --overwrite to replace it or choose another --output-dir")
        if keys:
            logger.warning("--overwrite: removing the study in %s (%s differ)", out, ", ".join(keys))
            from hf_cxr_diffusion.study.results import OUTPUTS

            for name in [*old["runs"], DATA_DIR, *OUTPUTS]:
                path = out / name
                if path.parent != out or name in ("", ".", ".."):  # only entries of this folder, never above it
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists, is not empty and holds no study ({STUDY_FILE} missing); pass an empty or new --output-dir")
    ensure_output_dir(out)
    write_json_atomic(out / STUDY_FILE, {"source": study.source, "identity": identity, "runs": [r.name for r in study.runs()],
                                             "run_details": [run_record(r) for r in study.runs()]})
    return folder


def select_runs(runs: Sequence[Run], *, only: Sequence[str] | None = None, shard: tuple[int, int] | None = None) -> list[Run]:
    """The runs named in ``only`` (run or method names), then shard ``I/N`` of them (every N-th, from the I-th)."""
    selected = list(runs)
    if only:
        known = {r.name for r in runs} | {r.method for r in runs}
        unknown = sorted(set(only) - known)
        if unknown:
            raise UserError(f"--only {','.join(unknown)}: no such run or method; the study has {', '.join(sorted(known))}")
        selected = [r for r in selected if r.name in only or r.method in only]
    if shard is not None:
        index, count = shard
        if not 1 <= index <= count:
            raise UserError(f"--shard {index}/{count}: need 1 <= I <= N")
        selected = selected[index - 1 :: count]
    return selected


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``."""
    index, sep, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (0, 0)
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise UserError(f"--shard {text!r} is not I/N with 1 <= I <= N (e.g. 1/4)")
    return shard


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (several shards building the shared dataset at once)."""
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def study_dataset(study: StudyConfig, folder: StudyFolder) -> str:
    """The prepared dataset the study trains on and tests against: the named one, or phantoms built once in ``_data/``."""
    if study.phantoms is None:
        return study.dataset
    data = folder.output_dir / DATA_DIR
    prepared = data / "prepared"
    marker = data / f"prepared{MARKER_SUFFIX}"
    data.mkdir(exist_ok=True)
    with _locked(data / ".lock"):
        if not marker.is_file():
            from hf_cxr_diffusion.data.preparation import prepare
            from hf_cxr_diffusion.phantoms.corpus import make_phantoms

            for path in (data / "corpus", prepared):
                if path.exists():
                    shutil.rmtree(path)
            p = study.phantoms
            corpus = make_phantoms(data / "corpus", layout="chexpert", n=p.n, seed=p.seed, resolution=p.resolution,
                                   findings=[c for c in study.conditions if c != "No Finding"], balance=p.balance)
            result = prepare(corpus="chexpert", data_dir=corpus, output_dir=prepared, resolution=p.resolution, template="findings")
            write_json_atomic(marker, {"rows": result.info["num_rows"], "skipped": result.info["skipped"]})
    return str(prepared)


def check_conditions(study: StudyConfig, dataset: str) -> tuple[str, ...]:
    """The dataset's label names, after checking every condition is one of them and present in the test split."""
    from hf_cxr_diffusion.data.loading import load_split
    from hf_cxr_diffusion.generation.prompts import label_names_of

    test = load_split(dataset, study.splits["test"])
    names = label_names_of(test, f"dataset {dataset}")
    missing = [c for c in study.conditions if c not in names]
    if missing:
        raise UserError(f"{study.source}: conditions {missing} are absent from dataset {dataset} (its labels: {', '.join(names)}); "
                        f"fix 'conditions'")
    counts = {c: 0 for c in study.conditions}
    for ids in test["labels"]:
        for c in {names[i] for i in ids} & set(counts):
            counts[c] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise UserError(f"{study.source}: conditions {empty} are absent from the {study.splits['test']!r} split of {dataset} "
                        f"(no image carries them); fix 'conditions' or the dataset")
    return names


def process_state() -> Any:
    """accelerate's process state (one process unless under ``accelerate launch``), as ``generate`` makes it."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def reset_peak_memory() -> None:
    """Restart the peak-memory counters so a stage's peak is its own (CUDA allocator; Linux VmHWM via clear_refs)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@dataclasses.dataclass
class _Context:
    study: StudyConfig
    folder: StudyFolder
    dataset: str
    label_names: tuple[str, ...]


def _train(ctx: _Context, run: Run, out: Path) -> dict[str, Any]:
    from hf_cxr_diffusion.training import train

    reset_peak_memory()
    result = train(ctx.study.train_config(run, dataset=ctx.dataset, output_dir=out))
    s = result.summary
    if not s:  # another process of a multi-process run: the main process records the stage
        return {}
    steady = s.get("steady_state") or {}
    rate = steady.get("steps_per_second") or s.get("steps_per_second_this_run")
    memory = s["peak_memory"]
    on_gpu = "cuda_max_allocated_mib" in memory
    return {
        "method": s["method"], "method_config": s["method_config"], "steps": result.global_step,
        "final_loss": result.final_loss,
        "trainable_parameters": s["parameters"]["trainable"], "total_parameters": s["parameters"]["total"],
        "per_component": s["parameters"]["per_component"],
        "train_wall_time_s": s["wall_time_seconds"], "seconds_per_step": round(1 / rate, 4) if rate else None,
        "peak_memory_mib": memory["cuda_max_allocated_mib"] if on_gpu else memory["peak_rss_mib"],
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if on_gpu else "peak RSS",
    }


def _generate(ctx: _Context, run: Run, out: Path) -> dict[str, Any]:
    from hf_cxr_diffusion.generation import generate
    from hf_cxr_diffusion.generation.prompts import condition_plan

    g = ctx.study.generation
    plan = condition_plan(ctx.study.conditions, g.per_condition, ctx.study.prompt, ctx.label_names)
    adapter = None if run.is_base else ctx.folder.stage_dir(run.name, "train")
    generate(ctx.study.base_model, plan, out, adapter=adapter, scheduler=g.scheduler, steps=g.steps, guidance=g.guidance,
             batch_size=g.batch_size, seed=run.seed, dtype=g.dtype)
    return {"images": len(plan.items), "seed": run.seed, "per_condition": g.per_condition}


def _evaluate(ctx: _Context, run: Run, out: Path) -> dict[str, Any]:
    from hf_cxr_diffusion.metrics import evaluate_folders
    from hf_cxr_diffusion.study.results import headline

    e = ctx.study.evaluation
    result = evaluate_folders(ctx.dataset, str(ctx.folder.stage_dir(run.name, "generate")), out, e.metrics,
                              split=ctx.study.splits["test"], max_real=e.max_real, feature_model=e.feature_model,
                              by_condition=True, batch_size=e.batch_size, **e.options)
    return headline(result, ctx.study.conditions, ctx.folder.output_dir)


def _utility(ctx: _Context, run: Run, out: Path) -> dict[str, Any]:
    from hf_cxr_diffusion.downstream import run_experiments
    from hf_cxr_diffusion.study.results import utility_accuracy

    u = ctx.study.utility
    results = run_experiments(ctx.dataset, str(ctx.folder.stage_dir(run.name, "generate")), out, u.experiments,
                              label_mode=u.label_mode, labels=list(ctx.study.conditions), arch=u.arch, epochs=u.epochs,
                              image_size=u.image_size, lr=u.lr, batch_size=u.batch_size, pretrained=u.pretrained, seed=run.seed)
    return utility_accuracy(results, out, ctx.study.conditions)


STAGE_FUNCTIONS: dict[str, Callable[[_Context, Run, Path], dict[str, Any]]] = {
    "train": _train, "generate": _generate, "evaluate": _evaluate, "utility": _utility,
}
#: stages every process of an ``accelerate launch`` job runs (the others run on the main process only)
DISTRIBUTED_STAGES = ("train", "generate")


def _run_one(ctx: _Context, run: Run) -> list[str]:
    """Run the incomplete stages of ``run``; return the stages that ran.

    Under ``accelerate launch`` only the main process removes folders and writes markers; train and
    generate run on every process, evaluate and utility on the main one, with a barrier after each.
    """
    state = process_state()
    ran: list[str] = []
    stages = [s for s in stages_of(run) if s != "utility" or ctx.study.utility is not None]
    for i, stage in enumerate(stages):
        if ctx.folder.read_stage(run.name, stage) is not None and not ran:
            continue
        if state.is_main_process:
            for later in stages[i:]:  # this stage and everything after it are redone from scratch
                ctx.folder.marker(run.name, later).unlink(missing_ok=True)
                if ctx.folder.stage_dir(run.name, later).exists():
                    logger.info("%s/%s: removing an incomplete folder", run.name, later)
                    shutil.rmtree(ctx.folder.stage_dir(run.name, later))
        state.wait_for_everyone()
        logger.info("study run %s: stage %s ...", run.name, stage)
        start = time.perf_counter()
        if stage in DISTRIBUTED_STAGES or state.is_main_process:
            info = STAGE_FUNCTIONS[stage](ctx, run, ctx.folder.stage_dir(run.name, stage))
        if state.is_main_process:
            seconds = round(time.perf_counter() - start, 2)
            write_json_atomic(ctx.folder.marker(run.name, stage), {"run": run.name, "stage": stage, "seconds": seconds, **info})
            logger.info("study run %s: stage %s done in %.1fs", run.name, stage, seconds)
        state.wait_for_everyone()
        ran.append(stage)
    return ran


def run_study(
    config: str | Path | StudyConfig,
    output_dir: str | Path,
    *,
    only: Sequence[str] | None = None,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the study ``config`` (a study file or :class:`StudyConfig`) into ``output_dir``.

    ``only`` (run or method names) and ``shard`` (``(I, N)`` or ``"I/N"``) run a subset; the results,
    tables and plots are collected when the whole study was selected (else run ``collect_study``).
    Returns ``{"output_dir", "runs": {run: [stages that ran]}, "collected": paths or None}``.
    """
    from hf_cxr_diffusion.study.results import collect_study

    study = config if isinstance(config, StudyConfig) else load_study(config)
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    runs = study.runs()
    selected = select_runs(runs, only=only, shard=shard)
    # a named dataset is checked before the folder is claimed (phantoms are built inside it)
    names = check_conditions(study, study.dataset) if study.phantoms is None else None
    state = process_state()
    if state.is_main_process:
        claim_study_folder(study, output_dir, overwrite=overwrite)
        study_dataset(study, StudyFolder(Path(output_dir)))
    state.wait_for_everyone()
    folder = StudyFolder(Path(output_dir))
    dataset = study_dataset(study, folder)  # built by now: every process reads the same folder
    ctx = _Context(study, folder, dataset, names or check_conditions(study, dataset))
    ran = {run.name: _run_one(ctx, run) for run in selected}
    collected = collect_study(folder.output_dir) if len(selected) == len(runs) and state.is_main_process else None
    if collected is None and state.is_main_process:
        logger.info("ran %d of %d runs; `cxr-diffusion study --collect %s` merges what is complete", len(selected), len(runs),
                    folder.output_dir)
    return {"output_dir": folder.output_dir, "runs": ran, "collected": collected}
