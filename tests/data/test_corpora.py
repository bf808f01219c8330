"""Each reader on a fixture in its corpus's real on-disk layout."""

from __future__ import annotations

import pytest

from hf_cxr_diffusion.data.corpora import CORPORA, get_corpus
from hf_cxr_diffusion.data.plan import plan_dataset
from hf_cxr_diffusion.data.preparation import iter_records
from hf_cxr_diffusion.errors import UserError


def test_registry_lists_every_corpus_and_rejects_unknown():
    assert set(CORPORA) == {"chexpert", "nih", "iu_xray", "montgomery", "pneumonia", "mimic", "folder"}
    assert all(get_corpus(name).name == name for name in CORPORA)
    with pytest.raises(UserError, match="unknown corpus 'padchest'; --corpus valid names: chexpert, folder, iu_xray, mimic"):
        get_corpus("padchest")
    with pytest.raises(UserError, match=r"unknown corpus 'chexpertt' \(did you mean 'chexpert'\?\)"):
        get_corpus("chexpertt")
    assert get_corpus(" IU-Xray").name == "iu_xray"


def test_chexpert_valid_csv_is_the_test_split(chexpert_dir, tokenizer):
    plan = plan_dataset(corpus="chexpert", data_dir=chexpert_dir, tokenizer=tokenizer)
    rows = plan.rows
    valid = rows["source_path"].str.contains("/valid/")
    assert valid.sum() > 0 and (rows.loc[valid, "split"] == "test").all()
    assert set(rows.loc[~valid, "split"]) <= {"train", "validation"}
    assert (rows["view"] == "frontal").all()


def test_nih_images_found_in_images_subfolders_and_official_lists(nih_dir, nih_frame, tokenizer):
    plan = plan_dataset(corpus="nih", data_dir=nih_dir, tokenizer=tokenizer)
    rows = plan.rows.set_index(plan.rows["source_path"].str.rsplit("/", n=1).str[-1])
    assert rows.loc["00000001_000.png", "source_path"] == "images_001/images/00000001_000.png"
    last = nih_frame["Image Index"].iloc[44]
    assert rows.loc[last, "source_path"] == f"images_002/images/{last}"
    assert set(rows.loc[rows["patient_id"].isin(["3", "11"]), "split"]) == {"test"}
    assert "test" not in set(rows.loc[~rows["patient_id"].isin(["3", "11"]), "split"])
    assert rows.loc["00000001_000.png", "age"] == 57 and rows.loc["00000001_000.png", "sex"] == "Male"


def test_iu_xray_frontal_selection_and_reports(iu_dir, tokenizer):
    frontal = plan_dataset(corpus="iu_xray", data_dir=iu_dir, tokenizer=tokenizer)
    everything = plan_dataset(corpus="iu_xray", data_dir=iu_dir, views="all", tokenizer=tokenizer)
    assert 0 < len(frontal.rows) < len(everything.rows)
    assert set(frontal.rows["view"]) == {"frontal"}
    cxr1 = frontal.rows[frontal.rows["patient_id"] == "CXR1"]
    # 3001: t-SNE view "L" (overrides its DICOM "PA"); 4001: no t-SNE view, DICOM "PA" (id CXR1_IM-0001-4001)
    assert list(cxr1["source_path"]) == ["NLMCXR_png/CXR1_1_IM-0001-4001.png"]
    assert list(everything.rows.loc[everything.rows["patient_id"] == "CXR1", "view"]) == ["lateral", "frontal"]
    assert cxr1["prompt"].iloc[0].startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    assert cxr1["labels"].iloc[0] == [0]  # MeSH "normal" -> No Finding


def test_montgomery_demographic_prompts(montgomery_dir, tokenizer):
    plan = plan_dataset(corpus="montgomery", data_dir=montgomery_dir, tokenizer=tokenizer)
    row = plan.rows[plan.rows["patient_id"] == "MCUCXR_0104"].iloc[0]
    assert row["prompt"] == ("age:32, gender:Male, findings:extensive infiltrates bilaterally with large cavity in RUL and "
                             "a moderate pleural effusion on the left. Active TB, cavitary.")
    assert row["labels"] == [0]
    normal = plan.rows[plan.rows["patient_id"] == "MCUCXR_0001"].iloc[0]
    assert normal["prompt"] == "age:40, gender:Female, findings:normal" and normal["labels"] == []
    named = plan_dataset(corpus="montgomery", data_dir=montgomery_dir, template="demographic", tokenizer=tokenizer)
    assert set(named.rows["prompt"]) >= {"age:45, gender:Male, findings:Tuberculosis", "age:58, gender:Male, findings:No Finding"}


def test_pneumonia_folders_are_the_official_split(pneumonia_dir, tokenizer):
    plan = plan_dataset(corpus="pneumonia", data_dir=pneumonia_dir, template="class", tokenizer=tokenizer)
    rows = plan.rows.set_index(plan.rows["source_path"].str.rsplit("/", n=1).str[-1])
    assert rows.loc["person1946_bacteria_4874.jpeg", "split"] == "validation"
    assert rows.loc["IM-0001-0001.jpeg", "split"] == "test"
    assert rows.loc["person1_bacteria_2.jpeg", "patient_id"] == "person1"
    assert rows.loc["NORMAL2-IM-0283-0001.jpeg", "patient_id"] == "NORMAL2-IM-0283"
    assert rows.loc["person3_virus_6.jpeg", "prompt"] == "a chest X-ray of PNEUMONIA"
    assert rows.loc["person3_virus_6.jpeg", "labels"] == [0] and rows.loc["IM-0115-0001.jpeg", "labels"] == []


def test_mimic_join_views_split_and_reports(mimic_dir, tokenizer):
    plan = plan_dataset(corpus="mimic", data_dir=mimic_dir, template="{findings}. {report}", tokenizer=tokenizer)
    rows = plan.rows.set_index("study_id")
    assert len(plan.rows) == 4  # the LATERAL image is not frontal
    assert rows.loc["50414267", "prompt"] == ("Cardiomegaly, Edema. There is no focal consolidation, pleural effusion or "
                                              "pneumothorax. Bilateral nodular opacities that most likely represent nipple "
                                              "shadows. No acute cardiopulmonary process.")
    assert rows.loc["57375967", "split"] == "validation" and rows.loc["50771383", "split"] == "test"
    assert rows.loc["50414267", "source_path"] == (
        "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg")
    zeros = plan_dataset(corpus="mimic", data_dir=mimic_dir, uncertain="zeros", tokenizer=tokenizer).rows.set_index("study_id")
    assert zeros.loc["50414267", "prompt"] == "Chest X-ray of a subject with Cardiomegaly"


def test_folder_layouts(folder_sidecar_dir, folder_metadata_dir, folder_jsonl_dir, folder_classes_dir, tokenizer):
    sidecar = plan_dataset(corpus="folder", data_dir=folder_sidecar_dir, tokenizer=tokenizer).rows
    assert sidecar["prompt"].iloc[0] == "chest x-ray case 0 with small effusion"
    meta = plan_dataset(corpus="folder", data_dir=folder_metadata_dir, template="class", tokenizer=tokenizer)
    assert meta.label_names == ("Effusion", "Nodule")
    assert list(meta.rows["labels"][:3]) == [[0, 1], [], [1]]
    assert meta.rows["prompt"].iloc[0] == "a chest X-ray of Effusion, Nodule"
    assert meta.rows.groupby("patient_id")["split"].nunique().max() == 1
    jsonl = plan_dataset(corpus="folder", data_dir=folder_jsonl_dir, tokenizer=tokenizer).rows
    assert list(jsonl["split"]) == ["train"] * 4 + ["test"] and jsonl["prompt"].iloc[4] == "caption 4"
    classes = plan_dataset(corpus="folder", data_dir=folder_classes_dir, tokenizer=tokenizer)
    assert classes.label_names == ("effusion", "normal")
    assert set(classes.rows["prompt"]) == {"a chest X-ray of effusion", "a chest X-ray of normal"}


def test_iter_records_streams_records(mimic_dir):
    records = list(iter_records(corpus="mimic", data_dir=mimic_dir, views="all"))
    assert len(records) == 5
    first = records[0]
    assert first.patient_id == "10000032" and first.labels["Cardiomegaly"] == 1.0 and first.labels["Edema"] == -1.0
    assert first.split == "train" and first.report.startswith("There is no focal consolidation")
