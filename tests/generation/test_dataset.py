"""The synthetic dataset folder: provenance in datasets and PNG chunks, prompt sources, CLI."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.generation import (
    generate,
    load_prompt_plan,
    prompts_from_dataset,
    prompts_from_file,
    prompts_from_labels_csv,
    read_png_provenance,
)


@pytest.fixture(scope="module")
def from_dataset_run(tiny_model_dir, lora_dir, prepared_dir, tmp_path_factory) -> Path:
    """The CLI path: 1 image per class of the prepared dataset, with the LoRA adapter."""
    out = tmp_path_factory.mktemp("gen") / "synthetic"
    argv = [
        "generate", "--pretrained-model", str(tiny_model_dir), "--adapter", str(lora_dir),
        "--dataset", str(prepared_dir), "--per-class", "1", "--scheduler", "ddim", "--steps", "2",
        "--guidance", "3.5", "--negative-prompt", "blurry", "--batch-size", "2", "--seed", "11", "--output-dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_dataset_rows_carry_provenance(from_dataset_run, tiny_model_dir, lora_dir, tmp_path) -> None:
    from datasets import load_dataset

    ds = load_dataset(str(from_dataset_run), cache_dir=str(tmp_path))["train"]
    assert ds.features["labels"].feature.names == ["Effusion", "Pneumonia"]
    sha = hashlib.sha256((lora_dir / "pytorch_lora_weights.safetensors").read_bytes()).hexdigest()
    names = ds.features["labels"].feature.names
    seen_classes = []
    for i, row in enumerate(ds):
        assert row["index"] == i and row["seed"] == 11 + i and row["synthetic"] is True
        assert (row["scheduler"], row["steps"], row["guidance"], row["negative_prompt"]) == ("ddim", 2, 3.5, "blurry")
        assert (row["base_model"], row["adapter"], row["adapter_sha256"]) == (str(tiny_model_dir), str(lora_dir), sha)
        labels = [names[j] for j in row["labels"]]
        seen_classes.append(tuple(labels))
        png = read_png_provenance(_png_bytes(from_dataset_run, i))
        assert png["labels"] == labels and png["prompt"] == row["prompt"] and png["seed"] == 11 + i
        assert png["adapter_sha256"] == sha and png["synthetic"] is True
    # one image per class: normal, Pneumonia, Effusion + Pneumonia, prompts drawn from that class's rows
    assert seen_classes == [(), ("Pneumonia",), ("Effusion", "Pneumonia")]
    assert ds[0]["prompt"].startswith("normal") and ds[1]["prompt"].startswith("pneumonia")


def _png_bytes(out: Path, i: int) -> bytes:
    return (out / "images" / f"{i:06d}.png").read_bytes()


def test_parquet_images_keep_the_png_text_chunk(from_dataset_run) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(next((from_dataset_run / "data").glob("train-*.parquet")))
    blobs = [row["bytes"] for row in table.column("image").to_pylist()]
    assert len(blobs) == 3
    for i, blob in enumerate(blobs):
        assert blob == _png_bytes(from_dataset_run, i)
        with Image.open(io.BytesIO(blob)) as img:
            assert img.text["synthetic"] == "true" and json.loads(img.text["provenance"])["index"] == i


def test_card_and_generation_config(from_dataset_run, tiny_model_dir) -> None:
    import yaml

    card = (from_dataset_run / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"][0]["path"] == "data/train-*.parquet"
    assert "| Effusion + Pneumonia | 1 |" in card and "| Pneumonia | 2 |" in card and "| scheduler | `ddim` |" in card
    config = json.loads((from_dataset_run / "generation_config.json").read_text())
    assert config["num_images"] == 3 and config["base_model"] == str(tiny_model_dir) and config["guidance"] == 3.5
    # the split sizes are complete for `datasets` (it warns "splits field in YAML is malformed" otherwise)
    from datasets import load_dataset
    from datasets.splits import SplitDict

    splits = SplitDict._from_yaml_list(header["dataset_info"]["splits"])
    assert splits["train"].num_examples == 3
    assert splits["train"].num_bytes == load_dataset(str(from_dataset_run), split="train").data.nbytes > 0


def test_plain_png_is_not_mistaken_for_synthetic(tmp_path) -> None:
    Image.new("L", (4, 4)).save(tmp_path / "real.png")
    with pytest.raises(ValueError, match="no synthetic provenance"):
        read_png_provenance(tmp_path / "real.png")


def test_prompt_sources(tmp_path, prepared_dir) -> None:
    (tmp_path / "p.txt").write_text("first\n\n  second  \n")
    assert [it.prompt for it in prompts_from_file(tmp_path / "p.txt").items] == ["first", "second"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "labels": ["Edema"]}\n{"prompt": "b"}\n')
    plan = prompts_from_file(tmp_path / "p.jsonl")
    assert [(it.prompt, it.labels) for it in plan.items] == [("a", ("Edema",)), ("b", ())] and plan.label_names == ("Edema",)
    (tmp_path / "c.csv").write_text("prompt,labels,count\nnormal,,2\neff,Effusion|Edema,1\n")
    plan = prompts_from_labels_csv(tmp_path / "c.csv")
    assert [it.labels for it in plan.items] == [(), (), ("Effusion", "Edema")] and plan.label_names == ("Effusion", "Edema")
    a = prompts_from_dataset(prepared_dir, 4, seed=3)
    assert len(a.items) == 12 and a == prompts_from_dataset(prepared_dir, 4, seed=3)
    assert {it.prompt for it in a.items if it.labels == ()} <= {"normal a", "normal b", "normal c"}


def test_bad_prompt_sources(tmp_path, prepared_dir) -> None:
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UserError, match=r"prompts file .*empty.txt is empty"):
        prompts_from_file(tmp_path / "empty.txt")
    (tmp_path / "bad.csv").write_text("prompt,labels,count\nx,,two\n")
    with pytest.raises(UserError, match=r"bad.csv:2: count 'two' is not an integer"):
        prompts_from_labels_csv(tmp_path / "bad.csv")
    with pytest.raises(UserError, match="exactly one prompt source"):
        load_prompt_plan(prompts_file=tmp_path / "empty.txt", labels_csv=tmp_path / "bad.csv")
    with pytest.raises(UserError, match="needs --per-class"):
        load_prompt_plan(dataset=prepared_dir)


def test_cli_reports_bad_input_in_one_line(tiny_model_dir, tmp_path, capsys) -> None:
    (tmp_path / "empty.txt").write_text("")
    code = main(["generate", "--pretrained-model", str(tiny_model_dir), "--prompts-file", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("cxr-diffusion generate: error: prompts file") and "\n" not in err


def test_unknown_scheduler_is_a_user_error(tiny_model_dir, tmp_path) -> None:
    (tmp_path / "p.txt").write_text("x\n")
    with pytest.raises(UserError, match="--scheduler 'lms' is not one of"):
        generate(tiny_model_dir, prompts_from_file(tmp_path / "p.txt"), tmp_path / "o", scheduler="lms", steps=1)


def test_old_flag_spellings_still_parse_with_a_warning(caplog) -> None:
    import logging

    from hf_cxr_diffusion.cli import build_parser

    parser = build_parser()
    new = parser.parse_args(["generate", "--pretrained-model", "m", "--dataset", "d", "--per-class", "2", "--output-dir", "o"])
    with caplog.at_level(logging.WARNING):
        old = parser.parse_args(["generate", "--pretrained-model", "m", "--from-dataset", "d", "--per-class", "2", "--out", "o"])
    assert (old.dataset, old.output_dir) == (new.dataset, new.output_dir) == ("d", Path("o"))
    assert "--from-dataset is deprecated" in caplog.text and "use --dataset" in caplog.text
