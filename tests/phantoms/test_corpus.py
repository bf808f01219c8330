"""Phantom corpus: findings show where they should, real layouts read by torchxrayvision, determinism, CLI errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.phantoms.draw import FINDINGS, draw_phantom, phantom_geometry, sample_params
from hf_cxr_diffusion.phantoms.corpus import README_NAME, make_phantoms
from hf_cxr_diffusion.phantoms.layouts import CHEXPERT_OBSERVATIONS, chexpert_findings, nih_findings, read_shipped_labels
from hf_cxr_diffusion.phantoms.manifest import MANIFEST_NAME, read_manifest

RES = 128
PATIENTS = [sample_params(1000 + k, 2000 + k) for k in range(4)]


def _mean(image: np.ndarray, mask: np.ndarray) -> float:
    return float(image[mask].mean())


def _pair(params, finding: str, severity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The same patient and acquisition drawn without and with ``finding``."""
    return draw_phantom(params, {}, RES).astype(float), draw_phantom(params, {finding: severity}, RES).astype(float)


#: finding -> (region of the normal anatomy, +1 brighter / -1 darker, least share of the change inside the region)
REGION_EFFECTS = {
    "Enlarged Cardiomediastinum": ("lungs", 1, 0.8),  # the widened mediastinum covers medial lung
    "Cardiomegaly": ("heart_box", 1, 0.0),  # the heart grows out of its box too: see the CTR test
    "Lung Opacity": ("lungs", 1, 0.95),
    "Lung Lesion": ("lungs", 1, 0.95),
    "Edema": ("perihilar", 1, 0.4),
    "Consolidation": ("lungs", 1, 0.95),
    "Pneumonia": ("lungs", 1, 0.95),
    "Atelectasis": ("base", 1, 0.9),
    "Pleural Effusion": ("base", 1, 0.6),
    "Pleural Other": ("lungs", 1, 0.9),
    "Infiltration": ("lungs", 1, 0.95),
    "Mass": ("lungs", 1, 0.95),
    "Nodule": ("lungs", 1, 0.95),
    "Fibrosis": ("base", 1, 0.7),
    "Emphysema": ("lungs", -1, 0.3),  # also flattens the domes below the normal lungs
}


def _region(geometry, name: str) -> np.ndarray:
    if name == "base":
        return geometry.masks["right_base"] | geometry.masks["left_base"]
    if name.endswith("_box"):
        r0, r1, c0, c1 = geometry.boxes[name[: -len("_box")]]
        mask = np.zeros((RES, RES), dtype=bool)
        mask[r0:r1, c0:c1] = True
        return mask
    return geometry.masks[name]


@pytest.mark.parametrize("finding", sorted(REGION_EFFECTS))
def test_finding_changes_its_region(finding: str) -> None:
    region, sign, locality = REGION_EFFECTS[finding]
    for params in PATIENTS:
        normal, sick = _pair(params, finding)
        mask = _region(phantom_geometry(params, RES), region)
        assert sign * (_mean(sick, mask) - _mean(normal, mask)) > 0.1, (finding, params.anatomy_seed)
        change = np.abs(sick - normal)
        assert change[mask].sum() >= locality * change.sum(), (finding, params.anatomy_seed)


def test_every_finding_is_drawn_and_leaves_no_finding_alone() -> None:
    params = PATIENTS[0]
    normal = draw_phantom(params, {}, RES)
    assert np.array_equal(normal, draw_phantom(params, {name: 0.0 for name in FINDINGS}, RES))
    for name in FINDINGS:
        assert not np.array_equal(normal, draw_phantom(params, {name: 1.0}, RES)), name


def test_cardiomegaly_ratio_and_uncertain_is_fainter() -> None:
    for params in PATIENTS:
        ratios = [phantom_geometry(params, RES, {"Cardiomegaly": s}).cardiothoracic_ratio for s in (0.0, 0.5, 1.0)]
        assert ratios[0] < 0.5 < ratios[2]
        assert ratios[0] < ratios[1] < ratios[2]


def test_effusion_is_basal_and_blunts_the_angle() -> None:
    for params in PATIENTS:
        normal, sick = _pair(params, "Pleural Effusion")
        g = phantom_geometry(params, RES)
        base_gain = _mean(sick, _region(g, "base")) - _mean(normal, _region(g, "base"))
        apex = g.masks["right_apex"] | g.masks["left_apex"]
        assert base_gain > 10 and base_gain > 5 * abs(_mean(sick, apex) - _mean(normal, apex))


def test_edema_is_perihilar() -> None:
    for params in PATIENTS:
        normal, sick = _pair(params, "Edema")
        g = phantom_geometry(params, RES)
        apex = g.masks["right_apex"] | g.masks["left_apex"]
        assert _mean(sick, g.masks["perihilar"]) - _mean(normal, g.masks["perihilar"]) > 2 * (_mean(sick, apex) - _mean(normal, apex))


def test_pneumothorax_removes_apical_markings_and_shows_a_pleural_line() -> None:
    for params in PATIENTS:
        normal, sick = _pair(params, "Pneumothorax")
        g = phantom_geometry(params, RES, {"Pneumothorax": 1.0})
        air = g.masks["pneumothorax"]
        apex = g.masks["right_apex"] | g.masks["left_apex"]
        assert air.sum() > 50 and (air & apex).sum() > 0.3 * air.sum()
        assert sick[air].var() < normal[air].var()  # no lung markings beyond the pleura
        changed = np.abs(sick - normal) > 0
        assert (sick - normal)[changed & ~air].max() > 15  # a bright thin line next to the air space


def test_support_devices_are_radio_opaque() -> None:
    for params in PATIENTS:
        normal, sick = _pair(params, "Support Devices")
        assert np.percentile(sick, 99.9) > np.percentile(normal, 99.9) + 10


def test_local_findings_stay_local() -> None:
    for params in PATIENTS:
        g = phantom_geometry(params, RES)
        normal, hernia = _pair(params, "Hernia")
        diff = np.abs(hernia - normal)
        assert diff[g.masks["heart"]].mean() > 5 * diff[~g.masks["heart"]].mean()
        normal, fracture = _pair(params, "Fracture")
        assert 0 < (fracture != normal).mean() < 0.03


def test_geometry_regions_are_anatomical() -> None:
    g = phantom_geometry(PATIENTS[0], RES)
    right, left = g.boxes["right_lung"], g.boxes["left_lung"]
    assert right[3] <= left[2] + 2  # patient's right lung on the image's left
    assert g.boxes["right_apex"][0] < g.boxes["heart"][0] < g.boxes["right_base"][1]
    assert (g.masks["right_apex"] & g.masks["right_base"]).sum() == 0


def test_logistic_regression_separates_cardiomegaly() -> None:
    from sklearn.linear_model import LogisticRegression

    def features(k: int, sick: bool) -> np.ndarray:
        params = sample_params(5000 + k, 6000 + k)
        image = draw_phantom(params, {"Cardiomegaly": 1.0} if sick else {}, 64)
        return np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR), dtype=np.float32).ravel() / 255.0

    x = np.stack([features(k, k % 2 == 1) for k in range(120)])
    y = np.arange(120) % 2
    model = LogisticRegression(max_iter=2000, C=0.1).fit(x[:80], y[:80])
    assert model.score(x[80:], y[80:]) >= 0.8  # chance is 0.5; test patients are unseen


def test_label_mapping() -> None:
    row = {name: "" for name in CHEXPERT_OBSERVATIONS} | {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pneumothorax": "0.0"}
    assert chexpert_findings(row) == {"Cardiomegaly": 1.0, "Edema": 0.5}
    assert nih_findings("Effusion|Infiltration|Pleural_Thickening") == {"Pleural Effusion": 1.0, "Infiltration": 1.0, "Pleural Other": 1.0}
    assert nih_findings("No Finding") == {}


# ---------------------------------------------------------------- corpora on disk
@pytest.fixture(scope="module")
def chexpert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantoms(tmp_path_factory.mktemp("cx") / "corpus", layout="chexpert", n=24, seed=3, resolution=32)


@pytest.fixture(scope="module")
def nih_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantoms(tmp_path_factory.mktemp("nih") / "corpus", layout="nih", n=30, seed=3, resolution=32)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_chexpert_rows_are_real_and_images_exist(chexpert_dir: Path) -> None:
    root = chexpert_dir / "CheXpert-v1.0-small"
    shipped = read_shipped_labels("chexpert_train.csv.gz").set_index("Path")
    train, valid = _read(root / "train.csv"), _read(root / "valid.csv")
    assert list(train.columns) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
    assert len(train) + len(valid) == 24 and len(valid) >= 1
    assert (train["Frontal/Lateral"] == "Frontal").all()
    original = valid.assign(Path=valid["Path"].str.replace("/valid/", "/train/"))
    for frame in (train, original):
        pd.testing.assert_frame_equal(frame.set_index("Path"), shipped.loc[frame["Path"]])
    patients = lambda f: set(f["Path"].str.extract(r"(patient\d+)", expand=False))  # noqa: E731
    assert not patients(train) & patients(valid)
    for path in [*train["Path"], *valid["Path"]]:
        assert re.fullmatch(r"CheXpert-v1.0-small/(train|valid)/patient\d{5}/study\d+/view\d_frontal\.jpg", path)
        with Image.open(chexpert_dir / path) as image:
            assert image.format == "JPEG" and image.mode == "L" and image.size == (32, 32)
    assert "not a medical dataset" in (chexpert_dir / README_NAME).read_text().lower()
    records = {r.path: r for r in read_manifest(chexpert_dir)}
    assert len(records) == 24 and len(_read(chexpert_dir / MANIFEST_NAME)) == 24
    for _, row in pd.concat([train, valid]).iterrows():
        assert records[row["Path"]].findings == chexpert_findings(row)  # uncertain labels drawn at 0.5
        assert records[row["Path"]].sex == {"Male": "male", "Female": "female"}.get(row["Sex"], "")


def _chexpert_expected(row: pd.Series, pathology: str) -> float:
    """CheXpert's convention as torchxrayvision documents it: -1/blank -> NaN, No Finding zeroes the rest."""
    column = "Pleural Effusion" if pathology == "Effusion" else pathology
    value = row.get(column, "")
    if row["No Finding"] == "1.0" and pathology != "Support Devices":
        return 0.0
    return float(value) if value in ("0.0", "1.0") else float("nan")


def test_chexpert_readable_by_torchxrayvision(chexpert_dir: Path) -> None:
    import torchxrayvision as xrv

    root = chexpert_dir / "CheXpert-v1.0-small"
    shipped = read_shipped_labels("chexpert_train.csv.gz").set_index("Path")
    for split in ("train", "valid"):
        ds = xrv.datasets.CheX_Dataset(imgpath=str(root), csvpath=str(root / f"{split}.csv"), views=["PA", "AP"], unique_patients=False)
        assert len(ds) == len(_read(root / f"{split}.csv"))
        for i in range(len(ds)):
            sample = ds[i]
            assert sample["img"].shape == (1, 32, 32)
            real = shipped.loc[ds.csv["Path"].iloc[i].replace("/valid/", "/train/")]
            np.testing.assert_array_equal(sample["lab"], [_chexpert_expected(real, p) for p in ds.pathologies])


def test_nih_layout_and_torchxrayvision(nih_dir: Path) -> None:
    import torchxrayvision as xrv

    written = _read(nih_dir / "Data_Entry_2017_v2020.csv")
    shipped = read_shipped_labels("Data_Entry_2017_v2020.csv.gz").set_index("Image Index")
    pd.testing.assert_frame_equal(written.set_index("Image Index"), shipped.loc[written["Image Index"]])
    ds = xrv.datasets.NIH_Dataset(imgpath=str(nih_dir / "images"), csvpath=str(nih_dir / "Data_Entry_2017_v2020.csv"), views=["PA", "AP"], unique_patients=False)
    assert len(ds) == len(written) == 30
    for i in range(len(ds)):
        sample = ds[i]
        labels = set(ds.csv["Finding Labels"].iloc[i].split("|"))
        assert sample["img"].shape == (1, 32, 32)
        np.testing.assert_array_equal(sample["lab"], [float(p in labels) for p in ds.pathologies])
    for record in read_manifest(nih_dir):  # lossless PNGs: the manifest redraws every image exactly
        assert np.array_equal(np.asarray(Image.open(nih_dir / record.path)), record.draw(32))
    lists = {name: (nih_dir / name).read_text().split() for name in ("train_val_list.txt", "test_list.txt")}
    assert sorted(lists["train_val_list.txt"] + lists["test_list.txt"]) == sorted(written["Image Index"])
    patient = dict(zip(written["Image Index"], written["Patient ID"]))
    assert not {patient[i] for i in lists["train_val_list.txt"]} & {patient[i] for i in lists["test_list.txt"]}


def test_pneumonia_layout(tmp_path: Path) -> None:
    out = make_phantoms(tmp_path / "kermany", layout="pneumonia", n=150, seed=1, resolution=32)
    files = sorted(out.glob("*/*/*.jpeg"))
    assert len(files) == 150
    pattern = {"NORMAL": r"(NORMAL2-)?IM-(\d{4})-\d{4}\.jpeg", "PNEUMONIA": r"person(\d+)_(bacteria|virus)_\d+\.jpeg"}
    owner: dict[str, str] = {}
    for f in files:
        split, cls = f.parent.parent.name, f.parent.name
        assert split in ("train", "val", "test") and cls in pattern
        match = re.fullmatch(pattern[cls], f.name)
        assert match, f.name
        patient = f"{cls}:{match.group(1) or ''}{match.group(2)}" if cls == "NORMAL" else f"{cls}:{match.group(1)}"
        assert owner.setdefault(patient, split) == split  # patient-disjoint splits
    assert {f.parent.parent.name for f in files} == {"train", "val", "test"}
    normal = sum(f.parent.name == "NORMAL" for f in files) / len(files)
    assert 0.15 < normal < 0.4  # about 1:3 normal:pneumonia


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def snapshot(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    for layout in ("chexpert", "nih", "pneumonia"):
        a = snapshot(make_phantoms(tmp_path / f"{layout}-a", layout=layout, n=6, seed=7, resolution=32))
        b = snapshot(make_phantoms(tmp_path / f"{layout}-b", layout=layout, n=6, seed=7, resolution=32))
        c = snapshot(make_phantoms(tmp_path / f"{layout}-c", layout=layout, n=6, seed=8, resolution=32))
        assert a == b
        assert a != c
        assert not [p for p in (tmp_path / f"{layout}-a").iterdir() if p.name.startswith(".")]  # no staging left


def test_cli_writes_a_corpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["make-phantoms", str(tmp_path / "c"), "--layout", "nih", "--n", "3", "--seed", "1", "--resolution", "32"]) == 0
    assert len(list((tmp_path / "c" / "images").glob("*.png"))) == 3


@pytest.mark.parametrize(
    "args, words",
    [
        (["--layout", "mimic"], ["mimic", "chexpert", "nih", "pneumonia"]),
        (["--n", "0"], ["--n"]),
        (["--resolution", "8"], ["resolution"]),
    ],
)
def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], words: list[str]) -> None:
    assert main(["make-phantoms", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words)


def test_cli_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "below"):
        assert main(["make-phantoms", str(out), "--n", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(blocker) in err


def test_findings_filter_keeps_only_rows_with_those_findings(tmp_path: Path) -> None:
    allowed = {"Cardiomegaly", "Pleural Effusion"}
    corpus = make_phantoms(tmp_path / "c", layout="chexpert", n=120, seed=3, resolution=32, findings=sorted(allowed))
    records = read_manifest(corpus)
    assert len(records) == 120 and all(set(r.findings) <= allowed for r in records)
    assert {name for r in records for name in r.findings} == allowed  # both still occur
    rows = pd.read_csv(corpus / "CheXpert-v1.0-small" / "train.csv")
    others = [c for c in CHEXPERT_OBSERVATIONS[1:] if c not in allowed]
    assert not rows[others].isin([1.0, -1.0]).any().any()  # the real rows written carry no other finding
    assert "findings: only rows whose labels lie in Cardiomegaly, Pleural Effusion" in (corpus / README_NAME).read_text()


@pytest.mark.parametrize("layout, findings, words", [("chexpert", ["Cardiomegally"], ["Cardiomegally", "not CheXpert"]),
                                                     ("pneumonia", ["Pneumonia"], ["does not apply", "pneumonia"])])
def test_findings_filter_bad_input(tmp_path: Path, layout: str, findings: list[str], words: list[str]) -> None:
    from hf_cxr_diffusion.errors import UserError

    with pytest.raises(UserError) as err:
        make_phantoms(tmp_path / "c", layout=layout, n=10, findings=findings)
    assert all(w in str(err.value) for w in words)


def test_balance_draws_every_finding_combination_about_equally(tmp_path: Path) -> None:
    from collections import Counter

    allowed = ["Cardiomegaly", "Pleural Effusion"]
    plain = read_manifest(make_phantoms(tmp_path / "p", layout="chexpert", n=160, seed=3, resolution=32, findings=allowed))
    balanced = read_manifest(make_phantoms(tmp_path / "b", layout="chexpert", n=160, seed=3, resolution=32, findings=allowed,
                                           balance=True))
    combos = Counter(tuple(sorted(r.findings)) for r in balanced)
    assert len(combos) == 4 and max(combos.values()) - min(combos.values()) <= 2, combos  # none, C, E, C+E
    assert max(Counter(tuple(sorted(r.findings)) for r in plain).values()) > max(combos.values())  # real rows are skewed


def test_balance_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    from hf_cxr_diffusion.errors import UserError

    with pytest.raises(UserError, match="--balance"):
        make_phantoms(tmp_path / "c", layout="nih", n=10, balance=True)
