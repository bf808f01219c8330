"""Source folders for the hub tests: a real LoRA training output with a real report, datasets, a metric module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from artefact_makers import PHANTOM_PROMPT, evaluate_cli, generate_tiny
from hub_sources import PROMPT, png, run_pipe, write_json
from PIL import Image


@pytest.fixture(scope="session")
def lora_output(lora_run, tiny_model_dir: Path, phantom_dataset_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A real LoRA training output (checkpoints included) holding the report of a real `cxr-diffusion evaluate`
    of images generated from it, and the trained in-memory pipeline's reference output."""
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("train")
    out = root / "lora-run"
    shutil.copytree(lora_run.output_dir, out)
    synthetic = generate_tiny(tiny_model_dir, root / "synthetic", [PHANTOM_PROMPT] * 2, adapter=out)
    evaluate_cli(phantom_dataset_dir, synthetic, root / "evaluation", "xrv_fid,vendi", "--allow-random-weights", into=out)
    c = lora_run.components
    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=c.noise_scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return out, run_pipe(pipe)


def _card(configs: list[dict]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump({"configs": configs}) + "---\n\n# source card\n"


SYNTHETIC_MARK = {"synthetic": json.dumps({"synthetic": True, "seed": 0})}


@pytest.fixture
def make_synthetic(tmp_path: Path) -> Callable[..., Path]:
    """``make_synthetic(n=4, unmarked=(), drop_column=None, pixels=None)`` builds a generation-output-like folder
    (flat 16 px images unless ``pixels`` gives image i)."""

    def build(n: int = 4, unmarked: tuple[int, ...] = (), drop_column: str | None = None,
              pixels: dict[int, Image.Image] | None = None) -> Path:
        root = tmp_path / "synthetic"
        rows = []
        for i in range(n):
            name = f"images/{i:06d}.png"
            png(root / name, 20 * i, None if i in unmarked else SYNTHETIC_MARK, image=(pixels or {}).get(i))
            row = {"file_name": name, "prompt": PROMPT, "labels": ["Cardiomegaly"] if i % 2 else ["No Finding"],
                   "seed": i, "scheduler": "dpm", "steps": 2, "guidance": 4.0, "base_model": "tiny",
                   "adapter": "lora-run", "adapter_sha256": "0" * 64}
            row.pop(drop_column, None)
            rows.append(row)
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        write_json(root / "generation_config.json", {"scheduler": "dpm", "steps": 2, "guidance": 4.0, "seed": 0,
                                                     "base_model": "tiny", "adapter": "lora-run"})
        (root / "README.md").write_text(
            _card([{"config_name": "default", "data_files": [{"split": "train", "path": ["images/*.png", "metadata.jsonl"]}]}]),
            encoding="utf-8",
        )
        return root

    return build


@pytest.fixture
def prepared_dataset(tmp_path: Path) -> Path:
    """A `prepare`-style folder: parquet shard with embedded images, card with configs, prepare_info.json."""
    import datasets

    root = tmp_path / "prepared"
    features = datasets.Features({"image": datasets.Image(), "prompt": datasets.Value("string"),
                                  "labels": datasets.List(datasets.ClassLabel(names=["No Finding", "Cardiomegaly"]))})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(np.full((16, 16), v, dtype=np.uint8)) for v in (0, 50, 100)],
         "prompt": [PROMPT] * 3, "labels": [[0], [1], [1]]},
        features=features,
    )
    (root / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    (root / "README.md").write_text(
        _card([{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]),
        encoding="utf-8",
    )
    write_json(root / "prepare_info.json", {"corpus": "chexpert", "options": {"resolution": 16}})
    return root


METRIC_MODULE = '''"""A tiny accuracy metric for the hub tests."""

import datasets
import evaluate


class MyAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="fraction of equal items",
            citation="",
            inputs_description="predictions, references: lists of ints",
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references)}
'''


@pytest.fixture
def metric_module(tmp_path: Path) -> Path:
    root = tmp_path / "modules" / "my_accuracy"
    root.mkdir(parents=True)
    (root / "my_accuracy.py").write_text(METRIC_MODULE, encoding="utf-8")
    (root / "README.md").write_text("---\ntitle: My Accuracy\ntags:\n- evaluate\n---\n\n# Metric Card for My Accuracy\n",
                                    encoding="utf-8")
    (root / "requirements.txt").write_text("evaluate\ndatasets\n", encoding="utf-8")
    (root / "app.py").write_text("import evaluate\n", encoding="utf-8")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"x")
    return root
