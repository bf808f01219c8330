"""Metrics that mean something on a phantom corpus written by `make-phantoms` (real CheXpert label rows)
and read back from disk, scored with the shipped, trained phantom feature network (issue 10, item 3).

These are phantom numbers under protocol ``phantom-fid-v1``: they show the metrics work, not medical quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from hf_cxr_diffusion.metrics import evaluate_folders, evaluate_images
from hf_cxr_diffusion.phantoms.corpus import make_phantoms
from hf_cxr_diffusion.phantoms.manifest import read_manifest

DEMO_FINDINGS = ("Cardiomegaly", "Pleural Effusion")
N = 160


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The demo's classes (No Finding, Cardiomegaly, Pleural Effusion) as a 64 px CheXpert-layout phantom corpus."""
    root = make_phantoms(tmp_path_factory.mktemp("phantoms") / "corpus", layout="chexpert", n=N, seed=0,
                         resolution=64, findings=DEMO_FINDINGS)
    images = [np.asarray(Image.open(root / r.path).convert("L")) for r in read_manifest(root)]
    return root, images


def _blurred(images: list[np.ndarray], radius: float) -> list[np.ndarray]:
    return [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in images]


def test_fid_of_disjoint_real_sets_far_below_fid_to_blurred_real(corpus) -> None:
    _, images = corpus
    a, b = images[: N // 2], images[N // 2:]
    real = evaluate_images(a, b, ("fid",), feature_model="phantom")["phantom_fid"]["score"]
    blurred = evaluate_images(a, _blurred(b, 1.5), ("fid",), feature_model="phantom")["phantom_fid"]["score"]
    assert real < 0.25 * blurred, (real, blurred)


def test_vendi_of_a_mode_collapsed_set_below_the_real_set(corpus) -> None:
    _, images = corpus
    rng = np.random.default_rng(0)
    one = images[0].astype(np.float64)
    collapsed = [np.clip(one + rng.normal(0, 2, one.shape), 0, 255).astype(np.uint8) for _ in range(N // 2)]
    diverse = evaluate_images(None, images[: N // 2], ("vendi",), feature_model="phantom")["vendi"]["score"]
    low = evaluate_images(None, collapsed, ("vendi",), feature_model="phantom")["vendi"]["score"]
    assert low < 1.5 < diverse, (low, diverse)


def test_class_consistency_of_real_phantoms_on_the_demo_classes(corpus, tmp_path: Path) -> None:
    """The prepared corpus scored against itself through evaluate_folders: its labels are the prompts."""
    from hf_cxr_diffusion.artefacts import read_report
    from hf_cxr_diffusion.data.preparation import prepare

    root, _ = corpus
    prepared = prepare(corpus="chexpert", data_dir=root, output_dir=tmp_path / "prepared", resolution=64,
                       template="findings").output_dir
    result = evaluate_folders(str(prepared), str(prepared), tmp_path / "eval", ("class_consistency",), split="train",
                              synthetic_split="train", feature_model="phantom")
    per = result["class_consistency"]["per_condition"]
    for name in ("No Finding", *DEMO_FINDINGS):
        assert per[name]["n"] >= 8 and per[name]["rate"] >= 0.9, (name, per[name])
    report = read_report(result["paths"]["json"])
    assert report.metrics["class_consistency"].protocol == "phantom-fid-v1"
    assert not report.metrics["class_consistency"].random_weights
