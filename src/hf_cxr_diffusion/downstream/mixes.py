"""Real/synthetic training mixes of the DreamBooth/DenseNet synthetic chest X-ray study.

``Synth-N`` = all real training images + N% of the synthetic pool; ``Limited-N`` = N% of the real
training images + the whole synthetic pool; ``Synth-Only`` = the synthetic pool alone. With 5,216
real and 2,400 synthetic images the totals are 5,216 / 5,816 / 6,416 / 7,616 / 2,922 / 3,704 /
2,400. A fraction of a pool keeps ``round_half_up(n * fraction)`` items (10% of 5,216 -> 522),
split over the classes (strata) by largest remainder and drawn with a seeded per-class
permutation, so a smaller fraction of a pool is a subset of a larger one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from hf_cxr_diffusion.errors import UserError


@dataclass(frozen=True)
class Mix:
    """One experiment: the fractions of the real training pool and of the synthetic pool it uses."""

    name: str
    real: Fraction
    synthetic: Fraction

    def describe(self) -> str:
        return f"real {float(self.real) * 100:g}% + synthetic {float(self.synthetic) * 100:g}%"


#: the seven experiments of the published table, in its order
PUBLISHED_MIXES: dict[str, Mix] = {
    m.name: m
    for m in (
        Mix("baseline", Fraction(1), Fraction(0)),
        Mix("synth-25", Fraction(1), Fraction(1, 4)),
        Mix("synth-50", Fraction(1), Fraction(1, 2)),
        Mix("synth-100", Fraction(1), Fraction(1)),
        Mix("limited-10", Fraction(1, 10), Fraction(1)),
        Mix("limited-25", Fraction(1, 4), Fraction(1)),
        Mix("synth-only", Fraction(0), Fraction(1)),
    )
}
DEFAULT_EXPERIMENTS = ",".join(PUBLISHED_MIXES)
_CUSTOM = re.compile(r"^(real|synthetic)=(\d+(?:\.\d+)?)%?$")


def _percent(text: str, token: str) -> Fraction:
    value = Fraction(text) / 100
    if not 0 <= value <= 1:
        raise UserError(f"experiment {token!r}: a percentage must be between 0 and 100")
    return value


def parse_experiments(spec: str | Sequence[str]) -> list[Mix]:
    """Parse ``--experiments``: published names and ``real=R%,synthetic=S%`` pairs, comma-separated."""
    tokens = [t.strip() for part in ([spec] if isinstance(spec, str) else spec) for t in part.split(",") if t.strip()]
    mixes: list[Mix] = []
    i = 0
    while i < len(tokens):
        token = tokens[i].lower()
        if token in PUBLISHED_MIXES:
            mixes.append(PUBLISHED_MIXES[token])
            i += 1
            continue
        first = _CUSTOM.match(token)
        second = _CUSTOM.match(tokens[i + 1].lower()) if i + 1 < len(tokens) else None
        if not first or not second or first.group(1) == second.group(1):
            raise UserError(
                f"unknown experiment {tokens[i]!r}: use one of {', '.join(PUBLISHED_MIXES)} "
                "or a custom pair real=R%,synthetic=S%"
            )
        pct = {first.group(1): first.group(2), second.group(1): second.group(2)}
        name = f"real-{pct['real']}-synthetic-{pct['synthetic']}"
        mixes.append(Mix(name, _percent(pct["real"], name), _percent(pct["synthetic"], name)))
        i += 2
    if not mixes:
        raise UserError("--experiments is empty")
    names = [m.name for m in mixes]
    if len(set(names)) != len(names):
        raise UserError(f"--experiments lists an experiment twice: {names}")
    return mixes


def round_half_up(value: Fraction) -> int:
    """``floor(value + 1/2)`` on exact fractions (10% of 5,216 = 521.6 -> 522; 0.5 -> 1)."""
    return math.floor(value + Fraction(1, 2))


def stratified_quota(counts: dict[Hashable, int], fraction: Fraction) -> dict[Hashable, int]:
    """Items to keep per stratum: ``round_half_up(total * fraction)`` split by largest remainder."""
    total = round_half_up(sum(counts.values()) * fraction)
    exact = {k: n * fraction for k, n in counts.items()}
    quota = {k: math.floor(v) for k, v in exact.items()}
    order = sorted(counts, key=lambda k: (-(exact[k] - quota[k]), -counts[k], str(k)))
    for k in order[: total - sum(quota.values())]:
        quota[k] += 1
    return quota


def stratified_subset(strata: Sequence[Hashable], fraction: Fraction, seed: int) -> list[int]:
    """Seeded, stratified indices of ``fraction`` of the items (``strata[i]`` = class of item i)."""
    by_class: dict[Hashable, list[int]] = {}
    for i, key in enumerate(strata):
        by_class.setdefault(key, []).append(i)
    quota = stratified_quota({k: len(v) for k, v in by_class.items()}, Fraction(fraction))
    chosen: list[int] = []
    for rank, key in enumerate(sorted(by_class, key=str)):
        order = np.random.default_rng([seed, rank]).permutation(len(by_class[key]))
        chosen.extend(by_class[key][j] for j in order[: quota[key]])
    return sorted(chosen)


@dataclass(frozen=True)
class MixSelection:
    """Indices into the real training pool and into the synthetic pool that one experiment uses."""

    mix: Mix
    real: list[int]
    synthetic: list[int]

    @property
    def total(self) -> int:
        return len(self.real) + len(self.synthetic)


def select_mix(
    mix: Mix,
    real_classes: Sequence[Hashable],
    synthetic_classes: Sequence[Hashable],
    seed: int,
    required: Sequence[Hashable] | None = None,
) -> MixSelection:
    """Pick the items of ``mix``; UserError when a required class gets no real training image.

    ``required`` are the classes every mix that uses real data must cover (default: the real
    pool's classes); a mix without real data must find every one of them in its synthetic part.
    """
    real = stratified_subset(real_classes, mix.real, seed) if mix.real > 0 else []
    synthetic = stratified_subset(synthetic_classes, mix.synthetic, seed + 1) if mix.synthetic > 0 else []
    needed = list(dict.fromkeys(required if required is not None else real_classes))
    if mix.real > 0:
        have = {real_classes[i] for i in real}
        for cls in needed:
            if cls not in have:
                available = sum(1 for c in real_classes if c == cls)
                raise UserError(
                    f"experiment {mix.name}: class {cls!r} has 0 real training images ({available} in the real "
                    f"training pool x {float(mix.real) * 100:g}%); add real images of it or use a larger real fraction"
                )
    have_any = {real_classes[i] for i in real} | {synthetic_classes[i] for i in synthetic}
    missing = [c for c in needed if c not in have_any]
    if missing:
        raise UserError(f"experiment {mix.name}: no training image of class(es) {missing}; the classifier cannot learn them")
    return MixSelection(mix, real, synthetic)
