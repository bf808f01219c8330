"""Source folders for the hub tests: a real LoRA training output with a real report, datasets, a metric module."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from artefact_makers import PHANTOM_PROMPT, evaluate_cli, generate_tiny
from hub_sources import PROMPT, run_pipe, write_json
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


#: the prompts and labels of the synthetic folders: image i is Cardiomegaly when i is odd
LABELS = ("No Finding", "Cardiomegaly")


@pytest.fixture(scope="session")
def generated(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``generated(n)``: a real `cxr-diffusion generate` folder of ``n`` images from the tiny model (made once per n)."""
    made: dict[int, Path] = {}

    def get(n: int) -> Path:
        if n not in made:
            labels = [[LABELS[i % 2]] for i in range(n)]
            made[n] = generate_tiny(tiny_model_dir, tmp_path_factory.mktemp("generated") / f"synthetic-{n}",
                                    [f"Chest X-ray of a subject with {ls[0]}" for ls in labels], labels=labels)
        return made[n]

    return get


@pytest.fixture
def make_synthetic(generated, tmp_path: Path) -> Callable[..., Path]:
    """``make_synthetic(n=4)``: a copy of a real generation folder of ``n`` images, free to tamper with."""

    def build(n: int = 4) -> Path:
        return Path(shutil.copytree(generated(n), tmp_path / "synthetic"))

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
