"""publish(): the upload boundary (HfApi replaced), visibility, token/offline checks, bad input, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import publish
from hf_cxr_diffusion.hub.files import list_files


class FakeHub:
    """Records the calls ``publish`` makes on ``HfApi``; repos start with the given visibility."""

    def __init__(self, existing_private: bool | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: list[str] = []
        self.existing_private = existing_private

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
        hub = self

        def create_repo(self, repo_id, **kw):
            hub.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
            if hub.existing_private is None:
                hub.existing_private = kw["private"]
            return f"https://huggingface.co/{repo_id}"

        def repo_info(self, repo_id, **kw):
            return type("Info", (), {"private": hub.existing_private})()

        def create_branch(self, repo_id, **kw):
            hub.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

        def upload_folder(self, **kw):
            hub.calls.append(("upload_folder", kw))
            hub.uploaded = list_files(Path(kw["folder_path"]))
            return type("Commit", (), {"commit_url": "https://hf.co/commit/1", "pr_url": None})()

        for name, fn in {"create_repo": create_repo, "repo_info": repo_info, "create_branch": create_branch,
                         "upload_folder": upload_folder}.items():
            monkeypatch.setattr(HfApi, name, fn)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_fake")
        return self


def test_publish_adapter_uploads_exactly_the_export(lora_output, tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    result = publish("adapter", lora_output[0], "cxr-lab/tiny-lora", license="mit")
    assert result.export_dir == Path("hub-exports/cxr-lab/tiny-lora") and result.export_dir.is_dir()
    name, create = hub.calls[0]
    assert name == "create_repo" and create == {"repo_id": "cxr-lab/tiny-lora", "repo_type": "model", "private": True,
                                                "exist_ok": True, "space_sdk": None}
    _, upload = hub.calls[1]
    assert (upload["repo_id"], upload["repo_type"], upload["revision"], upload["create_pr"]) == \
        ("cxr-lab/tiny-lora", "model", None, False)
    assert hub.uploaded == ["README.md", "cxr_method.json", "images/final.png", "images/loss_curve.png",
                            "pytorch_lora_weights.safetensors", "report.json", "training_summary.json"]
    assert result.upload.files == tuple(hub.uploaded) and result.upload.private


def test_publish_dataset_public_on_a_branch(make_synthetic, tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    publish("dataset", make_synthetic(n=2), "cxr-lab/synth", license="mit", private=False, revision="v1")
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1]["repo_type"] == "dataset" and hub.calls[0][1]["private"] is False
    assert hub.calls[2][1]["revision"] == "v1"
    assert hub.uploaded == ["README.md", "data/train-00000-of-00001.parquet", "generation_config.json",
                            "synthetic_manifest.json"]


def test_publish_metric_as_gradio_space(metric_module, tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    result = publish("metric", metric_module, "cxr-lab/my_accuracy", license="mit", create_pr=True)
    assert hub.calls[0][1]["repo_type"] == "space" and hub.calls[0][1]["space_sdk"] == "gradio"
    assert hub.calls[1][1]["create_pr"] is True
    assert hub.uploaded == ["README.md", "app.py", "my_accuracy.py", "requirements.txt"]
    assert result.export_dir.name == "my_accuracy"


def test_existing_public_repo_is_not_reused_for_private(make_synthetic, tmp_path, monkeypatch):
    hub = FakeHub(existing_private=False).install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="already exists and is PUBLIC"):
        publish("dataset", make_synthetic(n=2), "cxr-lab/synth", license="mit")
    assert "upload_folder" not in [c[0] for c in hub.calls]


def test_offline_and_no_token_keep_the_export(make_synthetic, tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    src = make_synthetic(n=2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE is set.*export is kept at hub-exports/cxr-lab/synth.*hf upload"):
        publish("dataset", src, "cxr-lab/synth", license="mit")
    assert (tmp_path / "hub-exports/cxr-lab/synth/README.md").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UserError, match=r"no Hugging Face token.*hf auth login.*export is kept at"):
        publish("dataset", src, "cxr-lab/synth", license="mit")
    assert hub.calls == []


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "org/bad name", "org/x--y"])
def test_malformed_repo_id(repo_id, make_synthetic, tmp_path):
    with pytest.raises(UserError, match="--repo-id"):
        publish("dataset", make_synthetic(n=1), repo_id, license="mit", dry_run=True, export_dir=tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_cli_dry_run_and_errors(make_synthetic, tmp_path, capsys):
    src = make_synthetic(n=2)
    out = tmp_path / "export" / "dataset"
    assert main(["publish", "dataset", str(src), "--repo-id", "cxr-lab/synth", "--license", "mit",
                 "--export-dir", str(out), "--dry-run"]) == 0
    assert f"export ready (not uploaded): {out}" in capsys.readouterr().out
    assert main(["publish", "dataset", str(src), "--repo-id", "cxr-lab/synth", "--export-dir", str(tmp_path / "e2")]) == 2
    assert "--license is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["publish", "--help"])
    required = capsys.readouterr().out.split("required:")[1].split("options:")[0]
    assert "--repo-id" in required and "--license" in required
    assert main(["publish", "dataset", str(src), "--repo-id", "cxr-lab/synth", "--license", "mit",
                 "--export-dir", str(out)]) == 2  # not empty and no --overwrite
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["publish", "dataset", str(tmp_path / "nope"), "--repo-id", "cxr-lab/synth", "--license", "mit",
                 "--dry-run", "--export-dir", str(tmp_path / "e3")]) == 2
    assert "source folder" in capsys.readouterr().err


def test_connection_error_keeps_the_export(make_synthetic, tmp_path, monkeypatch):
    import sys

    from huggingface_hub.errors import HfHubHTTPError

    FakeHub().install(monkeypatch)
    client = sys.modules[HfHubHTTPError.__mro__[1].__module__]  # the HTTP client huggingface_hub uses

    def refuse(self, repo_id, **kw):
        raise client.ConnectError("connection refused")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"cannot reach the Hub \(ConnectError.*export is kept at hub-exports/cxr-lab/s"):
        publish("dataset", make_synthetic(n=1), "cxr-lab/s", license="mit")
    assert (tmp_path / "hub-exports/cxr-lab/s/README.md").is_file()
