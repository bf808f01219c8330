"""Fault-injection table of train, generate and prepare: the probes of tests/reliability over more seeds and files.

    .venv/bin/python bench/faults.py [--seeds 5]

Training probes (tiny 64 px pipeline, LoRA with dropout and EMA, 6 steps, a checkpoint every 2):

* ``sigkill``: kill -9 of the CLI a seeded random 0-1.5 s after its first checkpoint, then
  ``--resume-from-checkpoint latest``; recovered = exit 0, final weights bit-equal to an
  uninterrupted run, no temporary left.
* ``corrupt <file>``: the newest checkpoint's file truncated or with one byte flipped; recovered =
  ``latest`` resumes from the previous checkpoint with a warning naming the damaged one.
* ``concurrent writer``: a second ``train`` into a folder being written; recovered = refused with
  the lock message and the first run finishes with its checkpoints intact.
* ``disk full <file>``: ENOSPC while writing each file of the second checkpoint; recovered = the
  one-line "disk full while writing <file>" error and the first checkpoint intact.

Generate probes (tiny pipeline, 40 images, 4 euler_a steps) and prepare probes (600 phantoms, 64 px, 8-row shards):

* ``sigkill generate``: kill -9 a seeded random 0-1 s after the first image, then the same command;
  recovered = every file but the run record byte-identical to an uninterrupted run, no lock or temporary left.
* ``sigkill prepare``: kill -9 a seeded random 0-1 s after the folder starts being built (a new folder, or
  over a complete earlier prepare of the same run), then the same command; recovered = byte-identical folder,
  no half-built sibling or lock left.
* ``concurrent writer generate/prepare``: a second run of the same command while the first writes; recovered
  = refused with the lock message and the first run's files equal the uninterrupted run's.

data lost = complete checkpoints (images, a prepared folder) that existed before the fault and are missing
or damaged after it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path[:0] = [str(Path(__file__).parents[1] / "tests" / "reliability"), str(Path(__file__).parents[1] / "tests" / "training")]

from probes import (  # noqa: E402
    Outcome,
    concurrent_stage_writer,
    concurrent_writer,
    corrupt_file_then_resume,
    generate_argv,
    generate_sigkill_then_resume,
    intact,
    options,
    prepare_argv,
    prepare_sigkill_then_rerun,
    reference_weights,
    run_in_process,
    sigkill_then_resume,
)

from hf_cxr_diffusion.training import checkpoints  # noqa: E402

FILES = ["trainable.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.safetensors", "scheduler.json",
         "rng.safetensors", "rng.json", "ema.safetensors", "ema.json", "trainer_state.json", "checkpoint_index.json"]


def disk_full(model: Path, data: Path, out: Path, name: str) -> Outcome:
    """ENOSPC while the second checkpoint writes ``name`` (its real writer raises after writing half)."""
    from hf_cxr_diffusion.training.config import TrainConfig
    from hf_cxr_diffusion.training.trainer import train

    real_write = Path.write_text
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def full(path: str) -> None:
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    def save_file(tensors, path, *a, **k):
        if ".checkpoint-4." in str(path) and Path(path).name == name:
            full(path)
        return real_save(tensors, path, *a, **k)

    def write_text(self, text, *a, **k):
        if ".checkpoint-4." in str(self) and self.name == name:
            full(str(self))
        return real_write(self, text, *a, **k)

    cfg = TrainConfig(**options(model, data, out, max_train_steps=4, method_config={"rank": 2}), final_reload_check=False)
    with mock.patch.object(safetensors.torch, "save_file", save_file), mock.patch.object(Path, "write_text", write_text):
        try:
            train(cfg)
            return Outcome(False, 0, "no error")
        except checkpoints.CheckpointWriteError as err:
            ok = str(err).startswith("disk full while writing") and name in str(err) and "checkpoint-2 is intact" in str(err)
            left = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint")]
            return Outcome(ok and not left, 0 if intact(out) == {"checkpoint-2"} else 1, str(err)[:100])


def stage_probes(root: Path, model: Path, seeds: int, rows: dict[str, list[Outcome]], run) -> None:
    """The generate and prepare rows."""
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"chest x-ray, view {i}\n" for i in range(40)))
    generated = run_in_process(generate_argv(model, prompts, root / "gen-reference"))
    for seed in range(seeds):
        rows["sigkill generate (random point)"].append(
            run(generate_sigkill_then_resume, model, prompts, root / f"gen-kill-{seed}", generated, seed))
    corpus = make_phantoms(root / "corpus", layout="pneumonia", n=600, seed=0, resolution=128)
    prepared = run_in_process(prepare_argv(corpus, root / "prep-reference" / "prepared"))
    for seed in range(seeds):
        for over_previous in (False, True):
            out = root / f"prep-kill-{seed}-{over_previous}" / "prepared"
            out.parent.mkdir()
            label = "over a complete folder" if over_previous else "new folder"
            rows[f"sigkill prepare ({label})"].append(run(prepare_sigkill_then_rerun, corpus, out, prepared, seed,
                                                          over_previous=over_previous))
    for i in range(3):
        out = root / f"gen-conc-{i}"
        rows["concurrent writer generate"].append(run(concurrent_stage_writer, generate_argv(model, prompts, out), out, generated))
        out = root / f"prep-conc-{i}" / "prepared"
        rows["concurrent writer prepare"].append(run(concurrent_stage_writer, prepare_argv(corpus, out), out, prepared))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="SIGKILL probes (one random kill point each)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from hf_cxr_diffusion.models.tiny import make_tiny_model
    from training_helpers import write_dataset

    rows: dict[str, list[Outcome]] = defaultdict(list)

    def run(probe, *a, **kw) -> Outcome:
        try:
            return probe(*a, **kw)
        except Exception as err:  # noqa: BLE001 - a probe that crashes is a fault not recovered
            return Outcome(False, 0, f"{type(err).__name__}: {str(err)[:200]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_tiny_model(root / "tiny-sd", seed=0, resolution=64)
        data = write_dataset(root / "shapes", {"train": 12, "validation": 4})
        reference = reference_weights(model, data, root / "reference")
        for seed in range(args.seeds):
            rows["sigkill (random point)"].append(run(sigkill_then_resume, model, data, root / f"kill-{seed}", reference, seed))
        for name in FILES:
            for how in ("truncate", "flip"):
                rows[f"corrupt {name}"].append(run(corrupt_file_then_resume, model, data, root / f"c-{name}-{how}", name, how))
        for i in range(3):
            rows["concurrent writer"].append(run(concurrent_writer, model, data, root / f"conc-{i}"))
        for name in ["trainable.safetensors", "optimizer.safetensors", "scheduler.json", "rng.safetensors", "trainer_state.json"]:
            rows[f"disk full {name}"].append(run(disk_full, model, data, root / f"full-{name}", name))
        stage_probes(root, model, args.seeds, rows, run)
    print(f"| {'probe':<40} | runs | recovered | data lost |")
    print(f"|{'-' * 42}|------|-----------|-----------|")
    for probe, outcomes in rows.items():
        print(f"| {probe:<40} | {len(outcomes):>4} | {sum(o.recovered for o in outcomes):>9} | {sum(o.data_lost for o in outcomes):>9} |")
    for probe, outcomes in rows.items():
        for o in outcomes:
            if not o.recovered or o.data_lost:
                print(f"NOT RECOVERED {probe}: {o.detail}")


if __name__ == "__main__":
    main()
