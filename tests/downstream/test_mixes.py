"""Experiment mixes reproduce the published table and stratify by class."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest

from hf_cxr_diffusion.downstream.mixes import (
    PUBLISHED_MIXES,
    parse_experiments,
    round_half_up,
    select_mix,
    stratified_subset,
)
from hf_cxr_diffusion.errors import UserError

# the study's pools: 1,341 normal + 3,875 pneumonia real training images, 1,200 synthetic per class
REAL = ["normal"] * 1341 + ["pneumonia"] * 3875
SYNTH = ["normal"] * 1200 + ["pneumonia"] * 1200
PUBLISHED_TOTALS = {
    "baseline": (5216, 0, 5216),
    "synth-25": (5216, 600, 5816),
    "synth-50": (5216, 1200, 6416),
    "synth-100": (5216, 2400, 7616),
    "limited-10": (522, 2400, 2922),
    "limited-25": (1304, 2400, 3704),
    "synth-only": (0, 2400, 2400),
}


def test_published_totals() -> None:
    mixes = parse_experiments(",".join(PUBLISHED_TOTALS))
    assert [m.name for m in mixes] == list(PUBLISHED_MIXES)
    for mix in mixes:
        sel = select_mix(mix, REAL, SYNTH, seed=0)
        assert (len(sel.real), len(sel.synthetic), sel.total) == PUBLISHED_TOTALS[mix.name]


def test_per_class_counts_are_stratified() -> None:
    counts = {}
    for name in ("synth-25", "synth-50", "limited-10", "limited-25"):
        sel = select_mix(PUBLISHED_MIXES[name], REAL, SYNTH, seed=0)
        counts[name] = (Counter(REAL[i] for i in sel.real), Counter(SYNTH[i] for i in sel.synthetic))
    assert counts["synth-25"][1] == {"normal": 300, "pneumonia": 300}
    assert counts["synth-50"][1] == {"normal": 600, "pneumonia": 600}
    # 10%: 134.1 + 387.5 = 521.6 -> 522, the extra one to the larger remainder
    assert counts["limited-10"][0] == {"normal": 134, "pneumonia": 388}
    # 25%: 335.25 + 968.75 = 1304
    assert counts["limited-25"][0] == {"normal": 335, "pneumonia": 969}


def test_subsets_are_seeded_nested_and_without_repeats() -> None:
    a = stratified_subset(REAL, Fraction(1, 10), seed=3)
    assert a == stratified_subset(REAL, Fraction(1, 10), seed=3) and len(set(a)) == len(a)
    assert a != stratified_subset(REAL, Fraction(1, 10), seed=4)
    assert set(a) <= set(stratified_subset(REAL, Fraction(1, 4), seed=3))


def test_rounding_is_half_up() -> None:
    assert [round_half_up(Fraction(x, 10)) for x in (5, 15, 25, 5216)] == [1, 2, 3, 522]


def test_custom_mixes() -> None:
    custom = parse_experiments("baseline,real=50%,synthetic=10%,synthetic=100,real=0")
    assert [(m.name, m.real, m.synthetic) for m in custom[1:]] == [
        ("real-50-synthetic-10", Fraction(1, 2), Fraction(1, 10)),
        ("real-0-synthetic-100", Fraction(0), Fraction(1)),
    ]
    sel = select_mix(custom[1], REAL, SYNTH, seed=0)
    assert (len(sel.real), len(sel.synthetic)) == (2608, 240)


@pytest.mark.parametrize(
    "spec, message",
    [("synth-30", "unknown experiment 'synth-30'"), ("real=50%", "custom pair"), ("real=150%,synthetic=0%", "between 0 and 100"),
     ("baseline,baseline", "twice")],
)  # fmt: skip
def test_bad_experiment_specs(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_experiments(spec)


def test_class_with_zero_real_images_is_refused() -> None:
    real = ["normal"] * 4 + ["pneumonia"] * 40
    with pytest.raises(UserError, match=r"limited-10: class 'normal' has 0 real training images \(4 in the real training pool x 10%\)"):
        select_mix(PUBLISHED_MIXES["limited-10"], real, SYNTH, seed=0)
    with pytest.raises(UserError, match="class 'effusion' has 0 real training images"):
        select_mix(PUBLISHED_MIXES["baseline"], real, SYNTH, seed=0, required=["normal", "pneumonia", "effusion"])
    # no real data in synth-only: the synthetic pool must cover the classes instead
    with pytest.raises(UserError, match=r"synth-only: no training image of class\(es\) \['normal'\]"):
        select_mix(PUBLISHED_MIXES["synth-only"], real, ["pneumonia"] * 10, seed=0)


def test_majority_rate_is_sklearn_dummy_accuracy_and_bootstrap_interval_is_calibrated() -> None:
    import numpy as np
    from sklearn.dummy import DummyClassifier

    from hf_cxr_diffusion.downstream.metrics import bootstrap_accuracy_ci, majority_rate

    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.3).astype(int)
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(y), 1)), y)
    assert majority_rate(y) == dummy.score(np.zeros((len(y), 1)), y)
    multi = np.array([[1, 0], [1, 0], [0, 1], [1, 1]])
    assert majority_rate(multi) == 0.5  # the combination [1, 0] is the most common
    pred = np.where(rng.random(400) < 0.7, y, 1 - y)  # about 70% correct
    acc = float((pred == y).mean())
    low, high = bootstrap_accuracy_ci(y, pred)
    assert low < acc < high
    normal_width = 2 * 1.96 * np.sqrt(acc * (1 - acc) / len(y))
    assert abs((high - low) - normal_width) < 0.2 * normal_width
    assert bootstrap_accuracy_ci(y, pred) == [low, high]  # seeded
    small_low, small_high = bootstrap_accuracy_ci(y[:40], pred[:40])
    assert small_high - small_low > 2 * (high - low)
