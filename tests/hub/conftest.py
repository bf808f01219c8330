"""Small synthetic source folders for the hub tests: a LoRA training output, datasets, a metric module."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_sources import LORA_TARGETS, PROMPT, REPORT, png, run_pipe, write_json
from PIL import Image


@pytest.fixture(scope="session")
def lora_output(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A LoRA training output folder (with checkpoint/optimizer/log clutter) and its adapter's reference output."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    out = tmp_path_factory.mktemp("train") / "lora-run"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(1)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=LORA_TARGETS))
    reference = run_pipe(pipe)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers)
    write_json(out / "cxr_method.json", {
        "method": "lora", "config": {"rank": 4, "alpha": 4, "target_modules": LORA_TARGETS},
        "base_model": "runwayml/stable-diffusion-v1-5", "format": "diffusers_lora",
        "trainable_parameters": sum(t.numel() for t in layers.values()), "total_parameters": 1_000_000,
    })
    write_json(out / "training_summary.json", {"learning_rate": 1e-4, "max_train_steps": 10, "output_dir": str(out)})
    write_json(out / "metrics.json", REPORT)
    png(out / "loss_curve.png", 10)
    for tag in ("step-000005", "final", "step-000010"):
        png(out / "validation" / f"{tag}.png", len(tag))
    ckpt = out / "checkpoint-10"
    StableDiffusionPipeline.save_lora_weights(ckpt, unet_lora_layers=layers)
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (ckpt / name).write_bytes(b"state")
    (out / "optimizer.bin").write_bytes(b"state")
    (out / "logs").mkdir()
    (out / "logs" / "events.out.tfevents.1").write_bytes(b"log")
    return out, reference


def _card(configs: list[dict]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump({"configs": configs}) + "---\n\n# source card\n"


SYNTHETIC_MARK = {"synthetic": json.dumps({"synthetic": True, "seed": 0})}


@pytest.fixture
def make_synthetic(tmp_path: Path) -> Callable[..., Path]:
    """``make_synthetic(n=4, unmarked=(), drop_column=None, extra_files=())`` builds a generation output."""

    def build(n: int = 4, unmarked: tuple[int, ...] = (), drop_column: str | None = None) -> Path:
        root = tmp_path / "synthetic"
        rows = []
        for i in range(n):
            name = f"images/{i:06d}.png"
            png(root / name, 20 * i, None if i in unmarked else SYNTHETIC_MARK)
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
