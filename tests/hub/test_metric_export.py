"""Metric Space exports: ``evaluate.load`` computes from the export, the README is a gradio Space card."""

from __future__ import annotations

from pathlib import Path

import evaluate
import pytest
from huggingface_hub import SpaceCard

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import export
from hf_cxr_diffusion.hub.files import list_files

ROOT = Path(__file__).resolve().parents[2]


def test_metric_export_is_an_evaluate_space(metric_module, tmp_path):
    out = export("metric", metric_module, tmp_path / "cxr_acc", repo_id="cxr-lab/cxr_acc", license="apache-2.0")
    assert list_files(out) == ["README.md", "app.py", "cxr_acc.py", "requirements.txt"]  # renamed after the repo
    metric = evaluate.load(str(out))  # resolves <folder>/<folder name>.py, as the Hub resolves ORG/NAME
    assert metric.compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 1]) == {"accuracy": 0.75}
    card = SpaceCard.load(out / "README.md")
    assert (card.data.sdk, card.data.app_file, card.data.license) == ("gradio", "app.py", "apache-2.0")
    assert card.data.tags == ["evaluate", "metric"] and card.data.title == "My Accuracy"
    assert "# Metric Card for My Accuracy" in card.text and 'evaluate.load("cxr-lab/cxr_acc")' in card.text


def test_metric_app_generated_when_missing(metric_module, tmp_path):
    (metric_module / "app.py").unlink()
    out = export("metric", metric_module, tmp_path / "m", repo_id="cxr-lab/my_accuracy", license="mit")
    assert 'evaluate.load("cxr-lab/my_accuracy")' in (out / "app.py").read_text()
    assert "launch_gradio_widget" in (out / "app.py").read_text()


def test_metric_missing_files_named(metric_module, tmp_path):
    (metric_module / "requirements.txt").unlink()
    with pytest.raises(UserError, match="missing requirements.txt"):
        export("metric", metric_module, tmp_path / "m", repo_id="cxr-lab/my_accuracy", license="mit")


def test_card_template_missing_field_named(metric_module, tmp_path):
    template = tmp_path / "custom.md"
    template.write_text("---\n{{ card_data }}\n---\n{{ body }} by {{ author_name }} and {{ lab }}\n")
    with pytest.raises(UserError, match="uses field\\(s\\) author_name, lab that this export does not provide"):
        export("metric", metric_module, tmp_path / "m", repo_id="cxr-lab/m", license="mit", card_template=template)


def test_app_loads_the_space_repo(metric_module, tmp_path):
    (metric_module / "app.py").write_text('import evaluate\nmodule = evaluate.load("my_accuracy")\nprint(module)\n')
    out = export("metric", metric_module, tmp_path / "m", repo_id="cxr-lab/acc", license="mit")
    assert (out / "app.py").read_text() == 'import evaluate\nmodule = evaluate.load("cxr-lab/acc")\nprint(module)\n'


def test_export_real_xrv_fid_module(tmp_path):
    out = export("metric", ROOT / "metrics" / "xrv_fid", tmp_path / "xrv_fid", repo_id="cxr-lab/xrv_fid", license="apache-2.0")
    assert list_files(out) == ["README.md", "app.py", "cxr_core.py", "requirements.txt", "xrv_fid.py"]  # + the generated core
    assert 'evaluate.load("cxr-lab/xrv_fid")' in (out / "app.py").read_text()
    card = SpaceCard.load(out / "README.md")
    assert card.data.sdk == "gradio" and {"evaluate", "metric", "chest-x-ray"} <= set(card.data.tags)
    assert card.data.license == "apache-2.0" and "# Metric Card for XRV-FID" in card.text
    module = evaluate.load(str(out))
    assert module.name == "xrv_fid"
