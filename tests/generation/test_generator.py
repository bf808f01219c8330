"""Seeded generation: same images whatever the batch size, process count or interruption."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from generation_helpers import PLAN, pixels

from hf_cxr_diffusion import runs
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.generation import generator as gen_module
from hf_cxr_diffusion.generation import generate
from hf_cxr_diffusion.generation.prompts import PromptPlan

OPTS = dict(scheduler="euler_a", steps=2, guidance=4.0, seed=7)


def assert_same_images(a: Path, b: Path) -> None:
    pa, pb = pixels(a), pixels(b)
    assert len(pa) == len(pb) == len(PLAN.items)
    for x, y in zip(pa, pb):
        assert np.array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, lora_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, batch size 1, with the LoRA adapter (stochastic euler_a sampler)."""
    return generate(tiny_model_dir, PLAN, tmp_path_factory.mktemp("gen") / "ref", adapter=lora_dir, batch_size=1, **OPTS)


def test_images_differ_between_seeds_and_are_not_blank(reference: Path) -> None:
    imgs = pixels(reference)
    assert all(img.std() > 0 for img in imgs)
    assert not np.array_equal(imgs[0], imgs[2])  # same class, different seed


def test_batch_size_does_not_change_images(reference, tiny_model_dir, lora_dir, tmp_path) -> None:
    out = generate(tiny_model_dir, PLAN, tmp_path / "b4", adapter=lora_dir, batch_size=4, **OPTS)
    assert_same_images(reference, out)


def test_two_processes_give_the_same_images(reference, tiny_model_dir, lora_dir, tmp_path, monkeypatch) -> None:
    """Each rank generates the share PartialState.split_between_processes gives it (ranks run in turn)."""
    from accelerate import PartialState

    PartialState(cpu=True)
    written: dict[int, list[int]] = {0: [], 1: []}
    real_save = gen_module.save_png
    out = tmp_path / "two"
    for rank in (0, 1):
        monkeypatch.setitem(PartialState._shared_state, "num_processes", 2)
        monkeypatch.setitem(PartialState._shared_state, "process_index", rank)
        monkeypatch.setattr(gen_module, "finalize", lambda *a, **k: None)  # rank 0 merges after rank 1 below
        monkeypatch.setattr(gen_module, "save_png", lambda img, path, rec, r=rank: (written[r].append(rec["index"]), real_save(img, path, rec)))
        generate(tiny_model_dir, PLAN, out, adapter=lora_dir, batch_size=3, **OPTS)
        monkeypatch.undo()
    assert written == {0: [0, 1], 1: [2, 3]}
    generate(tiny_model_dir, PLAN, out, adapter=lora_dir, batch_size=3, **OPTS)  # merge only: nothing left to draw
    assert_same_images(reference, out)
    assert (out / "data").is_dir()


def test_interrupted_run_resumes_without_redrawing(reference, tiny_model_dir, lora_dir, tmp_path, monkeypatch) -> None:
    real_save = gen_module.save_png
    calls = []

    def flaky_save(img, path, rec):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(rec["index"])
        real_save(img, path, rec)

    out = tmp_path / "resume"
    monkeypatch.setattr(gen_module, "save_png", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_model_dir, PLAN, out, adapter=lora_dir, batch_size=1, **OPTS)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    assert not (out / "data").exists() and not (out / runs.LOCK_FILE).exists()  # the lock went with the failure
    first = runs.read_record(out)
    killed = subprocess.Popen(["true"])  # a writer that is gone (its PID no longer alive) ...
    killed.wait()
    (out / "images" / f".000002.png.{killed.pid}.0a1b2c3d.tmp").write_bytes(b"half a png")  # as kill -9 leaves it
    writer = subprocess.Popen(["sleep", "60"])  # ... and one still writing, whose temporary must survive
    live = out / "images" / f".000003.png.{writer.pid}.4e5f6a7b.tmp"
    live.write_bytes(b"being written")
    drawn: list[str] = []
    real_run = gen_module._run_pipe
    monkeypatch.setattr(gen_module, "_run_pipe", lambda pipe, prompts, *a: (drawn.extend(prompts), real_run(pipe, prompts, *a))[1])
    try:
        generate(tiny_model_dir, PLAN, out, adapter=lora_dir, batch_size=4, **OPTS)
    finally:
        writer.kill()
        writer.wait()
    assert drawn == [PLAN.items[2].prompt, PLAN.items[3].prompt]
    assert_same_images(reference, out)
    assert list((out / "images").glob(".*")) == [live]
    record = runs.read_record(out)  # the batch size may change on resume (CPU images do not depend on it)
    assert record["run_id"] == first["run_id"] and record["config"]["batch_size"] == 4
    assert [r["config"]["batch_size"] for r in record["resumes"]] == [4]


def test_adapter_changes_the_images(reference, tiny_model_dir, tmp_path) -> None:
    plain = generate(tiny_model_dir, PLAN, tmp_path / "plain", batch_size=4, **OPTS)
    assert not any(np.array_equal(a, b) for a, b in zip(pixels(plain), pixels(reference)))
    assert json.loads((plain / "generation_config.json").read_text())["adapter_sha256"] == ""


def test_folder_with_other_parameters_is_refused_unless_overwrite(reference, tiny_model_dir, lora_dir, tmp_path) -> None:
    import shutil

    out = tmp_path / "mixed"
    shutil.copytree(reference, out)
    before = runs.read_record(out)
    with pytest.raises(UserError, match=r"written by a different generate run .*differing: config.steps;.*--overwrite"):
        generate(tiny_model_dir, PLAN, out, adapter=lora_dir, batch_size=4, **{**OPTS, "steps": 3})
    with pytest.raises(UserError, match=r"differing: config.guidance, config.seed;"):
        generate(tiny_model_dir, PLAN, out, adapter=lora_dir, **{**OPTS, "seed": 8, "guidance": 2.0})
    with pytest.raises(UserError, match=r"differing: config.adapter, config.adapter_method, config.adapter_sha256;"):
        generate(tiny_model_dir, PLAN, out, **OPTS)  # no adapter: the base model's images
    small = PromptPlan(PLAN.items[:1], PLAN.label_names)
    with pytest.raises(UserError, match=r"differing: dataset_fingerprint, config.prompts_sha256;"):
        generate(tiny_model_dir, small, out, adapter=lora_dir, **OPTS)
    assert runs.read_record(out) == before and len(pixels(out)) == len(PLAN.items) and not (out / runs.LOCK_FILE).exists()
    generate(tiny_model_dir, small, out, adapter=lora_dir, overwrite=True, **{**OPTS, "steps": 3})
    assert [p.name for p in (out / "images").iterdir()] == ["000000.png"]
    assert json.loads((out / "generation_config.json").read_text())["steps"] == 3
    assert runs.read_record(out)["run_id"] != before["run_id"] and runs.read_record(out)["config"]["steps"] == 3


def test_folder_with_foreign_files_is_refused(tiny_model_dir, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds 1 entry that is not a generation's artefacts \(notes.txt\)"):
        generate(tiny_model_dir, PLAN, tmp_path, **OPTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no lock, record or images left


def test_incompatible_adapter_names_adapter_and_base(tiny_model_dir, other_lora_dir, tmp_path) -> None:
    with pytest.raises(UserError) as err:
        generate(tiny_model_dir, PLAN, tmp_path / "x", adapter=other_lora_dir, **OPTS)
    message = str(err.value)
    assert str(other_lora_dir) in message and str(tiny_model_dir) in message and "does not fit" in message
    assert "size mismatch" in message and "--pretrained-model it was trained on" in message


def test_adapter_hash_is_the_weight_file_sha256(lora_dir, tiny_model_dir, tmp_path) -> None:
    from hf_cxr_diffusion.artefacts import ArtefactKind, read_training_output

    info = read_training_output(lora_dir)
    expected = hashlib.sha256((lora_dir / "pytorch_lora_weights.safetensors").read_bytes()).hexdigest()
    assert (info.kind, info.method, info.sha256) == (ArtefactKind.LORA, "lora", expected)
    out = generate(tiny_model_dir, PromptPlan(PLAN.items[:1], PLAN.label_names), tmp_path / "g", adapter=lora_dir, **OPTS)
    assert json.loads((out / "generation_config.json").read_text())["adapter_sha256"] == expected


def test_accelerate_launch_with_two_processes(reference, tiny_model_dir, lora_dir, tmp_path) -> None:
    """A real two-process CPU run (gloo) through the CLI gives the reference images."""
    import os
    import socket
    import subprocess
    import sys

    prompts = tmp_path / "plan.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": it.prompt, "labels": list(it.labels)}) + "\n" for it in PLAN.items))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "launched"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        str(Path(sys.executable).parent / "cxr-diffusion"), "-v", "generate", "--pretrained-model", str(tiny_model_dir),
        "--adapter", str(lora_dir), "--prompts-file", str(prompts), "--scheduler", OPTS["scheduler"],
        "--steps", str(OPTS["steps"]), "--guidance", str(OPTS["guidance"]), "--seed", str(OPTS["seed"]),
        "--batch-size", "2", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 0/2: images 0-1, 2 to draw" in done.stderr and "process 1/2: images 2-3, 2 to draw" in done.stderr
    assert_same_images(reference, out)


def test_overwrite_never_deletes_a_folder_that_is_not_a_generation(tiny_model_dir, phantom_dataset_dir, tmp_path) -> None:
    """`generate --overwrite` into a prepared dataset refuses before deleting anything (issue 13.3)."""
    import shutil

    out = shutil.copytree(phantom_dataset_dir, tmp_path / "prepared")
    before = {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"--output-dir .* holds 2 entries that are not a generation's artefacts \(prepare_info.json, prompts\)"):
        generate(tiny_model_dir, PLAN, out, overwrite=True, **OPTS)
    after = {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    assert after == before and (out / "data").is_dir() and (out / "README.md").is_file()


def test_truncated_image_of_a_resumed_folder_is_regenerated(reference, tiny_model_dir, lora_dir, tmp_path, monkeypatch,
                                                            caplog) -> None:
    """A PNG cut short (disk full, copy interrupted) is not kept as done: it is drawn again, counted and logged."""
    import logging
    import shutil

    out = shutil.copytree(reference, tmp_path / "truncated")
    broken = out / "images" / "000001.png"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    drawn: list[str] = []
    real_run = gen_module._run_pipe
    monkeypatch.setattr(gen_module, "_run_pipe", lambda pipe, prompts, *a: (drawn.extend(prompts), real_run(pipe, prompts, *a))[1])
    with caplog.at_level(logging.WARNING, logger=gen_module.__name__):
        generate(tiny_model_dir, PLAN, out, adapter=lora_dir, batch_size=4, **OPTS)
    assert drawn == [PLAN.items[1].prompt]
    assert "regenerating 1 unreadable image(s)" in caplog.text and "000001.png" in caplog.text
    assert_same_images(reference, out)


def test_concurrent_generate_refused_and_stale_lock_taken_over(tiny_model_dir, tmp_path, caplog) -> None:
    """A second generate into a folder being written fails with who holds it; a dead writer's lock is taken over."""
    import logging
    import socket
    import subprocess
    import sys

    out = tmp_path / "busy"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / runs.LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "stage": "generate",
                                                      "started_at": "then"}))
        with pytest.raises(UserError, match=rf"{out} is being written by generate run PID {live.pid} on .*wait for it"):
            generate(tiny_model_dir, PLAN, out, **OPTS)
        assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_FILE]  # nothing written, the holder's lock kept
        assert json.loads((out / runs.LOCK_FILE).read_text())["pid"] == live.pid
    finally:
        live.kill()
        live.wait()
    (out / runs.LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))  # now dead
    with caplog.at_level(logging.WARNING, logger=runs.__name__):
        generate(tiny_model_dir, PromptPlan(PLAN.items[:1], PLAN.label_names), out, **OPTS)
    assert f"taking over the stale lock {out / runs.LOCK_FILE} of PID {live.pid}" in caplog.text
    assert not (out / runs.LOCK_FILE).exists() and runs.read_record(out)["stage"] == "generate"
    assert len(pixels(out)) == 1
