"""Makers of the artefacts tests consume, each through the artefact's real writer (never typed by hand)."""

from __future__ import annotations

from pathlib import Path

PHANTOM_PROMPT = "Chest X-ray of a subject with Pneumonia"


def prepare_phantoms(root: Path, n: int = 24) -> Path:
    """`prepare` of ``n`` phantom radiographs (Kermany pneumonia layout, 64 px) written by `make-phantoms`."""
    from hf_cxr_diffusion.data.preparation import prepare
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    corpus = make_phantoms(root / "corpus", layout="pneumonia", n=n, seed=0, resolution=64)
    return prepare(corpus="pneumonia", data_dir=corpus, output_dir=root / "prepared", resolution=64,
                   template="findings").output_dir


def train_tiny(model: Path, dataset: Path, out: Path, method: str, method_config: dict, **options):
    """A real `train` run on the tiny model: 2 steps at 64 px, one validation prompt, a checkpoint per step."""
    from hf_cxr_diffusion.training import TrainConfig, train

    config = dict(resolution=64, train_batch_size=2, max_train_steps=2, checkpointing_steps=1, seed=0,
                  validation_prompts=[PHANTOM_PROMPT], num_validation_inference_steps=2)
    config.update(options)
    return train(TrainConfig(pretrained_model=str(model), dataset=str(dataset), output_dir=str(out), method=method,
                             method_config=method_config, **config))


def generate_tiny(model: Path, out: Path, prompts: list[str], adapter: Path | None = None,
                  labels: list[list[str]] | None = None, **options) -> Path:
    """`cxr-diffusion generate` of ``prompts`` (with ``labels``: one label list per prompt) (2 DDIM steps,
    seed 0 unless ``seed=``) into ``out``."""
    import json

    from hf_cxr_diffusion.cli import main

    prompts_file = out.parent / f"{out.name}-prompts.{'jsonl' if labels else 'txt'}"
    prompts_file.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt": p, "labels": ls}) for p, ls in zip(prompts, labels, strict=True)] if labels else prompts
    prompts_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    argv = ["generate", "--pretrained-model", str(model), "--prompts-file", str(prompts_file), "--scheduler", "ddim",
            "--steps", "2", "--seed", "0", "--out", str(out)]
    argv += ["--adapter", str(adapter)] if adapter is not None else []
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert main(argv) == 0, argv
    return out


def evaluate_cli(real: Path, synthetic: Path, output_dir: Path, metrics: str, *extra: str, into: Path | None = None) -> Path:
    """`cxr-diffusion evaluate --dataset REAL --split test --synthetic SYNTHETIC --metrics ... --output-dir OUTPUT_DIR`;
    returns the report file. With ``into``, the report is then copied into that folder (as a user keeps the
    report with the dataset it scores: evaluate never writes inside its inputs) and the copy is returned."""
    import shutil

    from hf_cxr_diffusion.artefacts import REPORT_FILE
    from hf_cxr_diffusion.cli import main

    argv = ["evaluate", "--dataset", str(real), "--split", "test", "--synthetic", str(synthetic), "--metrics", metrics,
            "--output-dir", str(output_dir), *extra]
    assert main(argv) == 0, argv
    if into is None:
        return output_dir / REPORT_FILE
    return Path(shutil.copy(output_dir / REPORT_FILE, into / REPORT_FILE))


def densenet_weights_file(path: Path) -> Path:
    """A seeded, untrained xrv DenseNet-121 saved as a plain state dict: a weights file the metrics load as
    *real* weights (``random_weights`` false), so the guard's checks of a trusted report can be exercised.
    Its numbers mean nothing."""
    import torch
    import torchxrayvision as xrv

    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None, num_classes=len(xrv.models.model_urls["densenet121-res224-all"]["labels"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
