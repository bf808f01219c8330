"""The ``evaluate`` modules in metrics/xrv_fid and metrics/vendi: loading, inputs, chunks, weights rules."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import pytest
from metrics_helpers import SMALL, blob_image
from PIL import Image

from hf_cxr_diffusion.metrics import fid_from_features, vendi_score

MODULES = Path(__file__).resolve().parents[2] / "metrics"


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # load by absolute path from an unrelated working directory
    return tmp_path


def test_module_folders_are_complete_and_their_core_is_generated_from_the_library() -> None:
    from hf_cxr_diffusion.metrics.modules import CORE_NAME, MODULES as NAMES, VENDOR_DIR, generate_core

    vendored = MODULES / VENDOR_DIR / CORE_NAME
    assert vendored.read_text() == generate_core(), "regenerate: python -m hf_cxr_diffusion.metrics.modules metrics"
    for name in NAMES:
        folder = MODULES / name
        card = (folder / "README.md").read_text()
        assert card.startswith("---\n") and "\n---\n" in card[4:]
        requirements = (folder / "requirements.txt").read_text()
        assert "hf-cxr-diffusion" not in requirements and "torchxrayvision" in requirements
        assert "from evaluate.utils import launch_gradio_widget" in (folder / "app.py").read_text()
        assert (folder / CORE_NAME).resolve() == vendored.resolve()  # one generated copy, linked
        assert "hf_cxr_diffusion" not in (folder / f"{name}.py").read_text()


_WITHOUT_PACKAGE = r"""
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_cxr_diffusion" or name.startswith("hf_cxr_diffusion."):
            raise ImportError("hf_cxr_diffusion is off sys.path for this test")
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if "hf_cxr_diffusion" not in p and not p.endswith("/src")]
import evaluate, numpy as np, torch
from threadpoolctl import threadpool_limits
threadpool_limits(limits=1, user_api="blas")  # the parent's thread settings: the same summation order
torch.set_num_threads(int(sys.argv[2]))
modules = sys.argv[1]
rng = np.random.default_rng(0)
real, syn = rng.normal(size=(30, 16)), rng.normal(size=(22, 16)) + 0.2
out = {"fid_features": evaluate.load(modules + "/xrv_fid").compute(predictions=list(syn), references=list(real))["xrv_fid"],
       "vendi_features": evaluate.load(modules + "/vendi").compute(predictions=list(np.abs(syn)), q=2.0)["vendi"]}
fid = evaluate.load(modules + "/xrv_fid")
core = sys.modules[type(fid).__module__.rsplit(".", 1)[0] + ".cxr_core"]
images = [np.load(modules + "/../imgs.npy")[i] for i in range(6)]
small = core.Protocol(id="xrv-fid-v2-test64", size=64)
res = fid.compute(predictions=images[:3], references=images[3:], allow_random_weights=True, protocol=small)
mem = evaluate.load(modules + "/cxr_memorisation").compute(predictions=images[:2], references=images[2:5],
    held_out=images[4:], allow_random_weights=True, protocol=small)
out.update(fid_images=res["xrv_fid"], protocol=res["protocol"], random=res["random_weights"],
           mem_threshold=mem["threshold"], mem_method=mem["threshold_method"], mem_sims=mem["max_similarity"])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_modules_run_without_our_package_and_equal_the_library(tmp_path) -> None:
    """Each module folder runs with only its requirements: our package is blocked from import in the subprocess."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from hf_cxr_diffusion.metrics import evaluate_images

    shutil.copytree(MODULES, tmp_path / "metrics", ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    images = np.stack([blob_image(40 + i) for i in range(6)])
    np.save(tmp_path / "imgs.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HOME"] = str(tmp_path)  # no xrv weights cache
    import torch

    proc = subprocess.run([sys.executable, "-c", _WITHOUT_PACKAGE, str(tmp_path / "metrics"), str(torch.get_num_threads())],
                          capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    rng = np.random.default_rng(0)
    real, syn = rng.normal(size=(30, 16)), rng.normal(size=(22, 16)) + 0.2
    assert got["fid_features"] == pytest.approx(fid_from_features(real, syn), rel=1e-9)
    assert got["vendi_features"] == pytest.approx(vendi_score(np.abs(syn).astype(np.float32), 2.0), rel=1e-9)  # evaluate stores float32
    lib = evaluate_images(list(images[3:]), list(images[:3]), ("xrv_fid",), allow_random_weights=True, protocol=SMALL)
    assert got["fid_images"] == pytest.approx(lib["xrv_fid"]["score"], rel=1e-9)
    assert (got["protocol"], got["random"]) == (SMALL.id, True)
    lib_mem = evaluate_images(list(images[4:]), list(images[:2]), ("memorisation",), training=list(images[2:5]),
                              allow_random_weights=True, protocol=SMALL)["memorisation"]
    assert got["mem_method"] == "calibrated" and got["mem_threshold"] == pytest.approx(lib_mem["threshold"], rel=1e-9)
    np.testing.assert_allclose(got["mem_sims"], lib_mem["max_similarity"], rtol=1e-9)


def test_xrv_fid_on_features_equals_library_and_chunks_equal_one_call(elsewhere) -> None:
    rng = np.random.default_rng(0)
    real, syn = rng.normal(size=(30, 16)), rng.normal(size=(22, 16)) + 0.2
    fid = evaluate.load(str(MODULES / "xrv_fid"))
    one = fid.compute(predictions=list(syn), references=list(real))
    assert one["xrv_fid"] == pytest.approx(fid_from_features(real.astype(np.float32), syn.astype(np.float32)), rel=1e-6)
    assert (one["n_real"], one["n_synthetic"], one["protocol"]) == (30, 22, "precomputed-features")
    for syn_chunk, real_chunk in zip(np.array_split(syn, 4), np.array_split(real[::-1], 4)):  # unequal sizes
        fid.add_batch(predictions=list(syn_chunk), references=list(real_chunk))
    chunked = fid.compute()
    assert chunked["xrv_fid"] == pytest.approx(one["xrv_fid"], rel=1e-12)
    assert chunked["n_synthetic"] == 22


def test_vendi_on_features_honours_q(elsewhere) -> None:
    feats = np.abs(np.random.default_rng(1).normal(size=(40, 24)))
    vendi = evaluate.load(str(MODULES / "vendi"))
    for q in (0.5, 2.0):
        out = vendi.compute(predictions=list(feats), q=q)
        assert out["vendi"] == pytest.approx(vendi_score(feats.astype(np.float32), q), rel=1e-6)
        assert out["q"] == q and out["n_synthetic"] == 40


def test_xrv_fid_on_images_of_every_kind_flags_random_weights(elsewhere) -> None:
    img = blob_image(3)
    Image.fromarray(img).save(elsewhere / "a.png")
    real = [str(elsewhere / "a.png"), img.astype(np.uint16) * 257, blob_image(4)]
    syn = [Image.fromarray(blob_image(5)), np.stack([blob_image(6)] * 3, -1)]
    fid = evaluate.load(str(MODULES / "xrv_fid"))
    out = fid.compute(predictions=syn, references=real, allow_random_weights=True, protocol=SMALL)
    assert out["random_weights"] is True and out["protocol"] == SMALL.id
    assert (out["n_real"], out["n_synthetic"]) == (3, 2) and out["xrv_fid"] > 0
    fid.add_batch(predictions=syn[:1], references=real[:2])
    fid.add_batch(predictions=syn[1:], references=real[2:])
    assert fid.compute(allow_random_weights=True, protocol=SMALL)["xrv_fid"] == pytest.approx(out["xrv_fid"], rel=1e-9)


def test_missing_weights_error_through_the_module(elsewhere, empty_xrv_cache) -> None:
    vendi = evaluate.load(str(MODULES / "vendi"))
    with pytest.raises(FileNotFoundError, match="models_data"):  # the module's own MissingWeightsError
        vendi.compute(predictions=[blob_image(0), blob_image(1)])


def test_memorisation_module_flags_a_copied_feature_row(elsewhere) -> None:
    train = np.random.default_rng(2).normal(size=(12, 16))
    syn = np.vstack([np.random.default_rng(3).normal(size=(3, 16)), train[7:8]])
    mem = evaluate.load(str(MODULES / "cxr_memorisation"))
    out = mem.compute(predictions=list(syn), references=list(train), threshold=0.99, top_k=1)
    assert out["top_pairs"][0]["synthetic_index"] == 3 and out["top_pairs"][0]["training_index"] == 7
    assert out["n_flagged"] == 1 and out["fraction_above_threshold"] == 0.25
    assert len(out["max_similarity"]) == 4
