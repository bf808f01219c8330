"""Every ```bash / ```sh / ```python block of README.md runs as written, in order, in one scratch folder.

How each block runs:

* shell blocks: ``bash -euo pipefail`` with this interpreter's ``bin/`` first on ``PATH`` (so ``cxr-diffusion``
  and ``python`` are the installed ones) and ``HF_HUB_OFFLINE=1``; python blocks: executed in this process
  (torch and diffusers imported once) with the same folder as working directory. The scratch folder links the clone's ``configs/``, ``metrics/``, ``scripts/``, ``docs/``
  and ``.venv`` so relative paths in the README resolve as they do in a clone; blocks share it, so a later
  block reads what an earlier one wrote (``prepared/``, ``runs/lora``, ``synthetic/``, ``eval/``).
* tiny-size overrides (:data:`SUBSTITUTIONS`; the README's Development section lists them): the full-size
  numbers of the examples are replaced by CPU-sized ones, the SD 1.5 hub id by the tiny pipeline the README
  builds with ``make-tiny-model``, and ``publish`` gets ``--dry-run`` so nothing is uploaded.
* skipped, each counted and printed: the lines running ``scripts/demo.sh`` / ``scripts/test.sh`` (the demo
  is run by ``tests/test_demo.py`` and the suite is this run itself), and a block preceded by a line
  ``<!-- readme-test: skip REASON -->`` (a real GPU, a Hub download, licensed weights or data).

A new README block needs nothing here: it runs as written (after the substitutions) or carries the skip
comment with its reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s+(?P<reason>.+?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z]*)\s*$")
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
#: lines not run, and why
SKIPPED_LINES = {
    "scripts/demo.sh": "the demo is run by tests/test_demo.py",
    "scripts/test.sh": "the test suite is this run itself",
}
#: (pattern, replacement, why): the README's tiny-size overrides, applied to every block before it runs
SUBSTITUTIONS: tuple[tuple[str, str, str], ...] = (
    (r"runwayml/stable-diffusion-v1-5", "tiny-sd", "SD 1.5 is a 4 GB download: the tiny pipeline instead"),
    (r"--resolution (256|512)\b", "--resolution 64", "64 px"),
    (r"resolution=512\b", "resolution=64", "64 px"),
    (r"--n 200\b", "--n 40", "40 phantoms"),
    (r"--max-train-steps \d+", "--max-train-steps 2", "2 optimizer steps"),
    (r"--per-class \d+", "--per-class 2", "2 images per condition"),
    (r"--steps 50\b", "--steps 2", "2 sampler steps"),
    (r"^(cxr-diffusion publish (?:(?!--dry-run).)*?)$", r"\1 --dry-run", "publish builds and checks the export only"),
)
#: a runaway guard for the whole README, not a benchmark: measured 71 s at load 2.3, 189 s at load 5.6 and 352 s at
#: load 6.4 on 2 cores (about 15 CLI starts, each importing torch + diffusers)
TIME_LIMIT_S = 900


@dataclass
class Block:
    lang: str
    code: str
    line: int
    skip: str | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` in order, with the skip reason of a preceding skip comment."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match["lang"]:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP_MARK.search(previous)
        blocks.append(Block(match["lang"].lower(), "\n".join(body), start + 1, skip["reason"] if skip else None))
        i += 1
    return blocks


def _logical_lines(code: str) -> list[str]:
    """Shell lines with ``\\`` continuations joined, so a substitution sees the whole command."""
    out: list[str] = []
    for line in code.splitlines():
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
    return out


def prepared_script(block: Block) -> tuple[str, list[str]]:
    """The code to run (substitutions applied, skipped lines removed) and the skipped lines' reasons."""
    skipped: list[str] = []
    lines = _logical_lines(block.code) if RUN_LANGS[block.lang] == "bash" else block.code.splitlines()
    kept = []
    for line in lines:
        reason = next((why for key, why in SKIPPED_LINES.items() if RUN_LANGS[block.lang] == "bash" and key in line), None)
        if reason:
            skipped.append(f"README line {block.line}: {line.strip()!r} ({reason})")
            continue
        for pattern, replacement, _ in SUBSTITUTIONS:
            line = re.sub(pattern, replacement, line)
        kept.append(line)
    return "\n".join(kept), skipped


def test_blocks_are_found_and_skip_comments_read():
    text = "intro\n<!-- readme-test: skip needs a GPU -->\n```bash\nnvidia-smi\n```\n```python\nprint(1)\n```\n```\nplain\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.code, b.skip) for b in blocks] == [("bash", "nvidia-smi", "needs a GPU"), ("python", "print(1)", None)]
    code, skipped = prepared_script(Block("bash", "bash scripts/demo.sh   # x\ncxr-diffusion publish adapter a \\\n"
                                               "    --repo-id o/n --license mit", 3, None))
    assert code == "cxr-diffusion publish adapter a --repo-id o/n --license mit --dry-run" and len(skipped) == 1


def _scratch(tmp_path: Path) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("configs", "metrics", "scripts", "docs", "model_cards", "dataset_scripts", "pyproject.toml"):
        if (ROOT / name).exists():
            (work / name).symlink_to(ROOT / name)
    (work / ".venv").symlink_to(Path(sys.prefix))
    return work


@pytest.mark.slow
def test_every_readme_block_runs(tmp_path, monkeypatch):
    blocks = [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang in RUN_LANGS]
    work = _scratch(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    start, ran, notes = time.perf_counter(), 0, []
    for block in blocks:
        if block.skip:
            notes.append(f"README line {block.line}: {block.lang} block skipped ({block.skip})")
            continue
        code, skipped = prepared_script(block)
        notes += skipped
        if not code.strip():
            continue
        t0 = time.perf_counter()
        if RUN_LANGS[block.lang] == "python":
            with monkeypatch.context() as m:
                m.chdir(work)
                exec(compile(code, f"README.md line {block.line}", "exec"), {"__name__": "__main__"})
        else:
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=TIME_LIMIT_S)
            assert proc.returncode == 0, (f"README line {block.line} failed with exit {proc.returncode}:\n{code}\n"
                                          f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
        notes.append(f"README line {block.line}: {block.lang} block ran in {time.perf_counter() - t0:.1f} s")
        print(notes[-1], flush=True)
        ran += 1
    elapsed = time.perf_counter() - start
    blocks_skipped = sum("block skipped" in n for n in notes)
    lines_skipped = sum(" block " not in n for n in notes)
    print("\n".join([*notes, f"{ran} blocks ran, {blocks_skipped} blocks and {lines_skipped} lines skipped, {elapsed:.0f} s"]))
    assert ran >= 8
    assert elapsed < TIME_LIMIT_S
