"""Offline or unreachable Hub: a hub id that is not cached fails in seconds, before any output folder exists."""

from __future__ import annotations

import time

import pytest

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.errors import MissingWeightsError
from hf_cxr_diffusion.models import loading

MISSING = "is neither a local diffusers folder nor in the Hub cache"


def test_uncached_hub_id_offline_fails_in_seconds_without_an_output_folder(tmp_path, capsys):
    start = time.perf_counter()
    code = main(["train", "--pretrained-model", "nobody-here/not-a-model", "--dataset", str(tmp_path / "data"),
                 "--output-dir", str(tmp_path / "run")])
    assert time.perf_counter() - start < 10
    assert code == 2 and MISSING in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unreachable_hub_counts_as_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    loading.hub_offline.cache_clear()
    try:
        start = time.perf_counter()
        assert loading.hub_offline()
        with pytest.raises(MissingWeightsError, match=MISSING):
            loading.load_pipeline("nobody-here/not-a-model")
        assert time.perf_counter() - start < 10
    finally:
        loading.hub_offline.cache_clear()
