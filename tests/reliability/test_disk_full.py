"""A real full disk: writes into a size-limited tmpfs end in one clear line, and nothing written before is lost.

Needs root (the CI user) to mount the tmpfs; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from training_helpers import ConvOutOnly, tiny_config

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.training import checkpoints
from hf_cxr_diffusion.training.trainer import train

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs mounted at ``tmp_path / "disk"`` (unmounted at teardown)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Take all the free space of ``disk`` but ``leave`` bytes."""
    stat = os.statvfs(disk)
    size = stat.f_bavail * stat.f_frsize - leave
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(size, 0))


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_checkpoint_save_on_a_full_disk(small_disk, tiny_model_dir, tiny_dataset_dir) -> None:
    out = small_disk / "run"
    train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=1, checkpointing_steps=1), method=ConvOutOnly())
    first = tree(out / "checkpoint-1")
    # room for the trainer's own estimate (trainable + 2 AdamW moments per checkpoint, + the final weights: it stops
    # early otherwise), not for a whole checkpoint: its ~11 small files take a 4 KiB page each on tmpfs
    trainable = len(first[checkpoints.TRAINABLE_FILE])
    fill(small_disk, leave=5 * trainable + 2 * PAGE)
    assert 5 * trainable + 2 * PAGE < sum(-(-len(b) // PAGE) * PAGE for b in first.values())  # it cannot fit
    with pytest.raises(checkpoints.CheckpointWriteError) as err:
        train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=2, checkpointing_steps=1,
                          checkpoints_total_limit=1, resume_from_checkpoint="latest"), method=ConvOutOnly())
    message = str(err.value)
    assert message.startswith(f"disk full while writing {out / 'checkpoint-2'}/") and "\n" not in message
    assert "the previous checkpoint checkpoint-1 is intact" in message
    assert tree(out / "checkpoint-1") == first and checkpoints.verify_checkpoint(out / "checkpoint-1") is None
    assert not (out / "checkpoint-2").exists() and not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_generated_image_write_on_a_full_disk(small_disk, tiny_model_dir, tmp_path) -> None:
    from hf_cxr_diffusion.generation import generate
    from hf_cxr_diffusion.generation.prompts import PromptItem, PromptPlan

    plan = PromptPlan(tuple(PromptItem(f"chest x-ray {i}") for i in range(8)), ())
    options = dict(scheduler="euler_a", steps=2, seed=3, batch_size=1)
    reference = generate(tiny_model_dir, plan, tmp_path / "reference", **options)
    image_bytes = len((reference / "images" / "000000.png").read_bytes())
    out = small_disk / "synthetic"
    fill(small_disk, leave=6 * PAGE + 2 * image_bytes)  # the folder's small files, then room for about two images
    with pytest.raises(UserError) as err:
        generate(tiny_model_dir, plan, out, **options)
    message = str(err.value)
    assert message.startswith(f"disk full while writing {out / 'images'}/") and "\n" not in message
    assert "are intact: free space and run the same command again to resume" in message
    written = tree(out / "images")
    assert 0 < len(written) < len(plan.items) and not [name for name in written if name.startswith(".")]
    assert f"the {len(written)} image(s) already in" in message
    assert all(written[name] == (reference / "images" / name).read_bytes() for name in written)  # no partial
    (small_disk / "filler").unlink()
    generate(tiny_model_dir, plan, out, **options)  # resumes once there is room
    assert tree(out / "images") == tree(reference / "images")
