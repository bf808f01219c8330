"""Dataset exports: rows read back by ``datasets``, cards by ``DatasetCard``, and the data-use guard."""

from __future__ import annotations

import io
import json
import logging
import shutil

import datasets
import pytest
from artefact_makers import densenet_weights_file, evaluate_cli, generate_tiny
from huggingface_hub import DatasetCard
from hub_sources import image_bytes, local_paths_in, png, png_bytes, tamper_shard
from PIL import Image

from hf_cxr_diffusion.artefacts import read_report
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import export
from hf_cxr_diffusion.hub.files import list_files

REPO = "cxr-lab/synthetic-cxr"


def _rows(folder) -> list[dict]:
    # a private cache: datasets' default cache can serve rows of an identical earlier folder
    return list(datasets.load_dataset(str(folder), split="train", cache_dir=str(folder.parent / "hf-cache")))


def test_synthetic_export_loads_back(make_synthetic, phantom_dataset_dir, tmp_path):
    """A real generation folder passes the guard and loads back; only what its card references is exported."""
    src = make_synthetic(n=4)
    evaluate_cli(phantom_dataset_dir, src, tmp_path / "eval", "xrv_fid,vendi", "--allow-random-weights", into=src)
    fid = read_report(src / "report.json").metrics["xrv_fid"].value
    (src / "logs").mkdir()
    (src / "logs" / "run.log").write_text("x")
    out = export("dataset", src, tmp_path / "export", repo_id=REPO, license="cc-by-nc-4.0")
    rows = _rows(out)
    assert [r["seed"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["labels"] == [1] and rows[0]["image"].size == (64, 64)  # ClassLabel index of Cardiomegaly
    assert list_files(out) == ["README.md", "data/train-00000-of-00001.parquet", "generation_config.json", "report.json",
                               "synthetic_manifest.json"]  # not images/ (the same PNGs as the shard), not logs/
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "cc-by-nc-4.0"
    assert {"synthetic", "medical", "chest-x-ray"} <= set(card.data.tags)
    assert card.data.configs[0]["config_name"] == "default"  # the source card's configs are kept
    assert "| Cardiomegaly | 2 |" in card.text and "| No Finding | 2 |" in card.text
    assert "| `guidance` | `4.0` |" in card.text
    assert f"| XRV-FID | {fid} | xrv-fid-v2 | densenet121-res224-all (random) |" in card.text
    assert "random_weights: true" in card.text
    assert "**Not checked**" in card.text  # no memorisation report
    assert local_paths_in(out) == {}  # base model and adapter paths of the run: folder names only
    assert rows[0]["base_model"] == "tiny-sd"


def test_real_image_with_a_copied_synthetic_chunk_is_refused(make_synthetic, phantom_dataset_dir, tmp_path):
    """Issue 13.5: the chunks of a generated image copied onto a real one do not make it synthetic."""
    src = make_synthetic(n=4)
    with Image.open(io.BytesIO(image_bytes(src, 2))) as generated:
        chunks = dict(generated.text)
    real = datasets.load_dataset(str(phantom_dataset_dir), split="train")[0]["image"]
    tamper_shard(src, replace={2: png_bytes(real, chunks)})
    with pytest.raises(UserError, match=r"1 of 4 .*not verified synthetic.*synthetic_manifest.json.*row 2.*--i-have-redistribution-rights"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")
    assert not (tmp_path / "export").exists()
    out = export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit", i_have_redistribution_rights=True)
    assert len(_rows(out)) == 4


def test_chunk_value_other_than_the_generators_is_refused(make_synthetic, tmp_path):
    """A generated image's own pixels with ``synthetic="never"`` (or any value but the generator's) is refused."""
    src = make_synthetic(n=2)
    with Image.open(io.BytesIO(image_bytes(src, 1))) as generated:
        chunks = {**generated.text, "synthetic": "never"}
        tamper_shard(src, replace={1: png_bytes(generated.copy(), chunks)})
    with pytest.raises(UserError, match=r"1 of 2 .*row 1"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")


def test_another_runs_manifest_verifies_nothing(make_synthetic, generated, tmp_path):
    src = make_synthetic(n=4)
    shutil.copy(generated(2) / "synthetic_manifest.json", src / "synthetic_manifest.json")
    with pytest.raises(UserError, match=r"4 of 4 .*does not belong to .*generation_config.json"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")


def test_guard_refuses_rows_without_provenance(make_synthetic, tmp_path):
    src = make_synthetic(n=3)
    tamper_shard(src, drop_column="seed")
    with pytest.raises(UserError, match="3 of 3 .* not verified synthetic.*train-00000-of-00001.parquet row 0"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")


def test_guard_refuses_stray_real_shard(make_synthetic, prepared_dataset, tmp_path):
    src = make_synthetic(n=2)  # a real shard matched by the card's own data/train-*.parquet
    shutil.copy(prepared_dataset / "data" / "train-00000-of-00001.parquet", src / "data" / "train-00009-of-00009.parquet")
    with pytest.raises(UserError, match=r"3 of 5 .*train-00009-of-00009.parquet row 0"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")


def test_only_files_the_card_references_are_exported(make_synthetic, tmp_path):
    src = make_synthetic(n=2)
    png(src / "previews" / "grid.png", 7)  # not data: not exported, so not guarded either
    out = export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")
    assert not (out / "previews").exists() and len(_rows(out)) == 2


@pytest.fixture
def memorised(make_synthetic, phantom_dataset_dir, tiny_model_dir, tmp_path):
    """A real synthetic folder whose image 1 is also in the generator's training set (a second `generate` starting
    with its prompt at its seed), and the memorisation report of a real `evaluate` against that training set with a
    loadable (untrained) DenseNet file, so the report is trusted (``random_weights`` false)."""
    src = make_synthetic(n=4)
    findings = ["Cardiomegaly", "Pleural Effusion", "Edema"]  # image 0 at seed 1: src's image 1 (same prompt)
    training = generate_tiny(tiny_model_dir, tmp_path / "training", [f"Chest X-ray of a subject with {f}" for f in findings],
                             labels=[[f] for f in findings], seed=1)
    weights = densenet_weights_file(tmp_path / "weights" / "densenet121-res224-all.pt")
    report = evaluate_cli(phantom_dataset_dir, src, tmp_path / "eval", "memorisation", "--training", str(training),
                          "--weights-path", str(weights), "--memorisation-threshold", "0.99")
    return src, report


def test_guard_near_duplicates(memorised, tmp_path, caplog):
    src, report = memorised
    with pytest.raises(UserError, match=r"1 synthetic image\(s\) exceed the memorisation threshold 0.99 .*image #1 \(1.0000\).*--allow-near-duplicates"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit", memorisation_report=report)
    with caplog.at_level(logging.WARNING):
        out = export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit", memorisation_report=report,
                     allow_near_duplicates=True)
    assert "PUBLISHING ANYWAY" in caplog.text
    card = DatasetCard.load(out / "README.md")
    assert "Checked 4 image(s)" in card.text and "1 above the similarity threshold 0.99" in card.text
    assert "image #1" in card.text
    assert read_report(out / "memorisation_report.json").metrics["memorisation"].details["threshold"] == 0.99


def test_memorisation_report_found_in_src(memorised, tmp_path):
    """The report `evaluate` wrote into the dataset folder is the card's metrics report and the guard's."""
    import shutil

    src, report = memorised
    shutil.copy(report, src / "report.json")
    with pytest.raises(UserError, match=r"exceed the memorisation threshold 0.99 .*image #1"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")


def test_report_without_memorisation(make_synthetic, phantom_dataset_dir, tmp_path):
    src = make_synthetic(n=2)
    report = evaluate_cli(phantom_dataset_dir, src, tmp_path / "eval", "vendi", "--allow-random-weights")
    with pytest.raises(UserError, match="has no memorisation result.*--metrics memorisation"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit", memorisation_report=report)


def test_a_file_that_is_not_a_report(make_synthetic, tmp_path):
    src = make_synthetic(n=2)
    other = tmp_path / "memo.json"
    other.write_text(json.dumps({"threshold": 0.9, "max_similarity": [0.1, 0.2]}))
    with pytest.raises(UserError, match="not a report written by `cxr-diffusion evaluate`"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit", memorisation_report=other)


def test_prepared_corpus_needs_rights_and_private(prepared_dataset, tmp_path):
    with pytest.raises(UserError, match="only as a private repo .* --i-have-redistribution-rights"):
        export("dataset", prepared_dataset, tmp_path / "e", repo_id=REPO, license="other")
    with pytest.raises(UserError, match="private repo"):
        export("dataset", prepared_dataset, tmp_path / "e", repo_id=REPO, license="other", private=False,
               i_have_redistribution_rights=True)
    out = export("dataset", prepared_dataset, tmp_path / "e", repo_id=REPO, license="other",
                 i_have_redistribution_rights=True)
    rows = _rows(out)
    assert [r["labels"] for r in rows] == [[0], [1], [1]]
    assert rows[2]["image"].getpixel((0, 0)) == 100
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "other" and "real-images" in card.data.tags
    assert "Stanford CheXpert Dataset Research Use Agreement" in card.text
    assert list_files(out) == ["README.md", "data/train-00000-of-00001.parquet", "prepare_info.json"]


def test_not_a_dataset_folder(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(UserError, match="missing generation_config.json.*missing prepare_info.json"):
        export("dataset", tmp_path / "src", tmp_path / "e", repo_id=REPO, license="mit")


def test_guard_checks_every_config(make_synthetic, prepared_dataset, tmp_path):
    """Real images hidden in a second config (parquet bytes, no files on disk) are found too."""
    import shutil

    import yaml

    src = make_synthetic(n=2)
    shutil.copytree(prepared_dataset / "data", src / "extra")
    card = (src / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    meta["configs"].append({"config_name": "extra", "data_files": [{"split": "train", "path": "extra/*.parquet"}]})
    (src / "README.md").write_text("---\n" + yaml.safe_dump(meta) + "---\n")
    with pytest.raises(UserError, match=r"3 of 5 .*extra/train-00000-of-00001.parquet row 0"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")


def test_guard_refuses_data_it_cannot_check(make_synthetic, tmp_path):
    import yaml

    src = make_synthetic(n=2)
    (src / "images" / "more.zip").write_bytes(b"PK")
    meta = yaml.safe_load((src / "README.md").read_text().split("---")[1])
    meta["configs"][0]["data_files"].append({"split": "train", "path": "images/*.zip"})
    (src / "README.md").write_text("---\n" + yaml.safe_dump(meta) + "---\n")
    with pytest.raises(UserError, match=r"images/more.zip \(a format the guard cannot check\)"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")


def test_random_weights_memorisation_report_counts_as_not_checked(make_synthetic, phantom_dataset_dir, tmp_path, caplog):
    src = make_synthetic(n=2)
    evaluate_cli(phantom_dataset_dir, src, tmp_path / "eval", "memorisation", "--allow-random-weights", into=src)
    out = export("dataset", src, tmp_path / "export", repo_id=REPO, license="mit")
    assert "RANDOM feature weights" in caplog.text
    card = DatasetCard.load(out / "README.md").text
    assert "**Not checked**" in card and "random feature weights" in card
