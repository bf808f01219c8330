"""Prompt templates on real rows of the shipped CheXpert, NIH and IU X-ray label files."""

from __future__ import annotations

import pandas as pd
import pytest

from hf_cxr_diffusion.data.plan import plan_dataset
from hf_cxr_diffusion.data.prompts import TEMPLATES, render, resolve_template, truncate_to_clip
from hf_cxr_diffusion.errors import UserError


def _prompt_of(plan, path_suffix: str) -> str:
    rows = plan.rows[plan.rows["source_path"].str.endswith(path_suffix)]
    assert len(rows) == 1, path_suffix
    return rows["prompt"].iloc[0]


@pytest.fixture(scope="module")
def chexpert_plans(chexpert_full_dir, tokenizer):
    return {p: plan_dataset(corpus="chexpert", data_dir=chexpert_full_dir, uncertain=p, views="all", tokenizer=tokenizer)
            for p in ("ones", "zeros")}


def test_chexpert_findings_prompts_of_real_rows(chexpert_plans):
    ones, zeros = chexpert_plans["ones"], chexpert_plans["zeros"]
    assert len(ones.rows) == 223414
    assert _prompt_of(ones, "patient00001/study1/view1_frontal.jpg") == "Chest X-ray of a subject with No Finding, Support Devices"
    # patient00002/study2: Lung Opacity and Fracture positive; Cardiomegaly, Edema, Consolidation, Atelectasis,
    # Pleural Effusion uncertain (-1)
    assert _prompt_of(ones, "patient00002/study2/view1_frontal.jpg") == (
        "Chest X-ray of a subject with Cardiomegaly, Lung Opacity, Edema, Consolidation, Atelectasis, "
        "Pleural Effusion, Fracture")
    assert _prompt_of(zeros, "patient00002/study2/view1_frontal.jpg") == "Chest X-ray of a subject with Lung Opacity, Fracture"
    row = ones.rows[ones.rows["source_path"].str.endswith("patient00002/study1/view2_lateral.jpg")].iloc[0]
    assert (row["view"], row["sex"], row["age"], row["patient_id"], row["study_id"]) == (
        "lateral", "Female", 83, "patient00002", "patient00002/study1")


def test_nih_findings_prompts_of_real_rows(nih_dir, tokenizer):
    plan = plan_dataset(corpus="nih", data_dir=nih_dir, tokenizer=tokenizer)
    assert _prompt_of(plan, "00000001_001.png") == "Chest X-ray of a subject with Cardiomegaly, Emphysema"
    assert _prompt_of(plan, "00000002_000.png") == "Chest X-ray of a subject with No Finding"
    # canonical order, not file order: "Hernia|Infiltration" -> Infiltration first
    assert _prompt_of(plan, "00000003_003.png") == "Chest X-ray of a subject with Infiltration, Hernia"
    demo = plan_dataset(corpus="nih", data_dir=nih_dir, template="demographic", tokenizer=tokenizer)
    assert _prompt_of(demo, "00000001_000.png") == "age:57, gender:Male, findings:Cardiomegaly"


def test_nih_full_file_and_pleural_thickening(tmp_path, tokenizer, nih_frame, xrv_data):
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").symlink_to(xrv_data / "Data_Entry_2017_v2020.csv.gz")
    plan = plan_dataset(corpus="nih", data_dir=tmp_path, views="all", tokenizer=tokenizer)
    assert len(plan.rows) == len(nih_frame) == 112120
    assert _prompt_of(plan, "00000013_044.png") == "Chest X-ray of a subject with Cardiomegaly, Mass, Pleural Thickening"
    counts = pd.Series([i for ids in plan.rows["labels"] for i in ids]).value_counts()
    names = plan.label_names
    for name in ("Hernia", "Pneumonia", "No Finding"):
        direct = int(nih_frame["Finding Labels"].str.split("|").map(lambda ls: name in ls).sum())
        assert counts[names.index(name)] == direct


def test_iu_report_prompts_fit_clip_and_cut_on_word_boundaries(tmp_path, tokenizer, xrv_data):
    (tmp_path / "NLMCXR_reports.tgz").symlink_to(xrv_data / "NLMCXR_reports.tgz")
    with pytest.raises(UserError, match=r"40 image\(s\) listed by the corpus have no caption or report text for the "
                                        r"template 'report', first: .*CXR1137_IM-0093-12012.png"):
        plan_dataset(corpus="iu_xray", data_dir=tmp_path, views="all", tokenizer=tokenizer)
    plan = plan_dataset(corpus="iu_xray", data_dir=tmp_path, views="all", on_missing="skip", tokenizer=tokenizer)
    assert len(plan.rows) == 7470 - 40  # 40 images belong to reports with neither FINDINGS nor IMPRESSION
    assert len(plan.skipped) == 40 and {r["reason"] for r in plan.skipped} == {
        "empty prompt (no caption or report text for template 'report')"}
    reports, prompts = plan.rows["report"], plan.rows["prompt"]
    lengths = [len(ids) for ids in tokenizer(list(prompts)).input_ids]
    assert max(lengths) <= 77
    cut = prompts != reports
    assert cut.sum() > 50  # long reports exist and were cut
    for prompt, report in zip(prompts[cut], reports[cut]):
        assert report.startswith(prompt) and report[len(prompt)] == " "  # a whole-word prefix
        assert len(tokenizer(report[: report.index(" ", len(prompt) + 1) if " " in report[len(prompt) + 1:] else len(report)]).input_ids) > 77
    row = plan.rows[plan.rows["patient_id"] == "CXR1"].iloc[0]
    assert row["prompt"] == ("The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary "
                            "edema. There is no focal consolidation. There are no XXXX of a pleural effusion. There is no "
                            "evidence of pneumothorax. Normal chest x-XXXX.")


def test_templates_and_fields(tokenizer):
    fields = {"findings": pd.Series(["Edema", "No Finding"]), "age": pd.Series(["32", "unknown"]),
              "sex": pd.Series(["Male", "unknown"]), "label": pd.Series(["NORMAL", "PNEUMONIA"]),
              "view": pd.Series(["frontal", "lateral"]), "report": pd.Series(["a  b", ""])}
    assert list(render(TEMPLATES["demographic"], fields, tokenizer=tokenizer)) == [
        "age:32, gender:Male, findings:Edema", "age:unknown, gender:unknown, findings:No Finding"]
    assert list(render(TEMPLATES["class"], fields, tokenizer=tokenizer)) == ["a chest X-ray of NORMAL", "a chest X-ray of PNEUMONIA"]
    assert list(render("{view} CXR: {report}", fields, tokenizer=tokenizer)) == ["frontal CXR: a b", "lateral CXR:"]
    with pytest.raises(UserError, match=r"unknown field \{diagnosis\}; valid fields are \{findings\}, \{age\}"):
        resolve_template("x {diagnosis}")
    with pytest.raises(UserError, match="unknown template 'fancy'; use one of findings, report, demographic, class"):
        resolve_template("fancy")
    with pytest.raises(UserError, match="no conversions or format specs"):
        resolve_template("{age:03d}")


def test_truncation_counts_tokens_not_words(tokenizer):
    long = pd.Series(["pneumothorax " * 40 + "end", "short one"])
    out = truncate_to_clip(long, tokenizer=tokenizer)
    assert out[1] == "short one"
    ids = tokenizer(out[0]).input_ids
    assert len(ids) <= 77 and len(tokenizer(out[0] + " pneumothorax").input_ids) > 77
