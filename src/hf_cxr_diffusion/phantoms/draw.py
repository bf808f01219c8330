"""Procedural drawing of frontal chest-radiograph PHANTOMS (numpy, vectorised).

These images exist to exercise the software (readers, training, metrics, classifiers): they
are NOT a medical dataset and carry no diagnostic information about any person.

Every image is drawn on a normalised patient frame (x right on the image = patient's left,
y downwards, both in [-1, 1]) mapped to pixels by a per-image affine (scale, rotation,
shift): thorax and soft tissue, two dark lungs with vessel markings radiating from the hila,
mediastinum, trachea and heart silhouette, curved posterior/anterior ribs, clavicles and the
diaphragm domes. Findings are drawn from their labels, following their textbook radiographic
signs (e.g. Felson, *Principles of Chest Roentgenology*): an enlarged heart (cardiothoracic
ratio > 0.5), a basal effusion with a meniscus and a blunted costophrenic angle, an apical
pneumothorax with a thin visceral pleural line and no lung markings beyond it, patchy airspace
opacities, bilateral perihilar (bat-wing) oedema, plate-like basal atelectasis, support
devices, and a few NIH ChestX-ray14 findings (nodule, mass, emphysema, fibrosis, hernia...).

Randomness comes only from integer seeds: the anatomy from ``anatomy_seed`` (one per patient,
so a patient's studies share their anatomy), the acquisition and each finding's placement
from ``image_seed`` and the finding's name. Adding or removing a finding therefore leaves the
rest of the image unchanged, which lets tests compare an image with and without a finding.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS, NO_FINDING
from hf_cxr_diffusion.errors import UserError

#: findings the drawer knows: the 13 CheXpert observations + NIH ChestX-ray14 extras
FINDINGS: tuple[str, ...] = tuple(name for name in CHEXPERT_LABELS if name != NO_FINDING) + (
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
)

MIN_RESOLUTION = 16
_SIDES = {"right": -1.0, "left": 1.0}  # patient side -> sign of x on the image

# intensities (0 = black, 1 = white) of the tissue classes before the acquisition transform
_AIR, _SOFT, _LUNG, _MEDIASTINUM, _HEART, _FLUID, _METAL = 0.03, 0.47, 0.19, 0.64, 0.68, 0.62, 0.97


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, stable across runs (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class PhantomParams:
    """Anatomy (per patient) and acquisition (per image) of one phantom, in the normalised frame."""

    anatomy_seed: int
    image_seed: int
    lung_lateral: float  # half-width of the lungs at their widest
    lung_medial: float  # |x| of the medial lung edge (mediastinum half-width)
    apex_y: float
    base_y: float  # costophrenic angles
    lung_rise: float  # vertical distance over which the lung widens from its apex
    dome_height: float
    right_dome_raise: float
    ctr: float  # normal cardiothoracic ratio of this patient
    heart_x: float
    heart_y: float
    heart_ry: float
    rib_spacing: float
    rib_curve: float
    rib_y0: float
    female: bool
    scale: float
    rotation_deg: float
    shift: tuple[float, float]
    exposure: float
    contrast: float
    gamma: float
    noise: float


def sample_params(
    anatomy_seed: int, image_seed: int, *, sex: str | None = None, pediatric: bool = False
) -> PhantomParams:
    """Draw a patient (``anatomy_seed``) imaged once (``image_seed``): size, shape, pose, exposure, noise."""
    a = np.random.default_rng(anatomy_seed)
    q = np.random.default_rng(stable_seed("acquisition", image_seed))
    female = sex.lower().startswith("f") if sex else bool(a.random() < 0.5)
    lung_lateral = a.uniform(0.74, 0.82)
    return PhantomParams(
        anatomy_seed=anatomy_seed,
        image_seed=image_seed,
        lung_lateral=lung_lateral,
        lung_medial=a.uniform(0.085, 0.105),
        apex_y=a.uniform(-0.84, -0.74),
        base_y=a.uniform(0.5, 0.6) - (0.06 if pediatric else 0.0),
        lung_rise=a.uniform(0.55, 0.7),
        dome_height=a.uniform(0.13, 0.2),
        right_dome_raise=a.uniform(0.02, 0.06),
        ctr=a.uniform(0.42, 0.48) if pediatric else a.uniform(0.38, 0.46),
        heart_x=a.uniform(0.03, 0.08),
        heart_y=a.uniform(0.2, 0.27),
        heart_ry=a.uniform(0.24, 0.29),
        rib_spacing=a.uniform(0.125, 0.145),
        rib_curve=a.uniform(0.3, 0.45) if pediatric else a.uniform(0.7, 0.9),
        rib_y0=a.uniform(-0.05, 0.05),
        female=female,
        scale=q.uniform(0.93, 1.03) * (0.97 if female else 1.0) * (0.93 if pediatric else 1.0),
        rotation_deg=q.uniform(-4.0, 4.0),
        shift=(q.uniform(-0.04, 0.04), q.uniform(-0.03, 0.05)),
        exposure=q.uniform(-0.06, 0.06),
        contrast=q.uniform(0.85, 1.15),
        gamma=q.uniform(0.85, 1.2),
        noise=q.uniform(0.01, 0.03),
    )


@dataclass
class _Scene:
    """Pixel grid in the patient frame plus the layers findings add to."""

    p: PhantomParams
    x: np.ndarray
    y: np.ndarray
    edge: float  # soft-edge width (normalised units), at least ~1 pixel
    g: dict[str, float]  # mutable geometry (findings may change it before masks are built)
    fracture: tuple[float, float, int, float] | None = None  # (side sign, x, rib index, step)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    opacity: np.ndarray | None = None  # alpha towards fluid/tissue density inside the lungs
    lucency: np.ndarray | None = None  # darkening inside the lungs
    no_markings: np.ndarray | None = None  # 1 where lung markings are absent
    overlays: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (alpha, value) drawn last

    def add_opacity(self, alpha: np.ndarray) -> None:
        self.opacity = 1.0 - (1.0 - self.opacity) * (1.0 - np.clip(alpha, 0.0, 1.0))


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask from a signed distance (positive inside)."""
    return np.clip(0.5 + d / width, 0.0, 1.0)


def _smoothstep(a: float, b: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=32)
def _interp_weights(resolution: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index left of each pixel and the smoothstep weight of the next lattice point."""
    pos = (np.arange(resolution) + 0.5) / resolution * cells
    index = np.minimum(np.floor(pos).astype(np.intp), cells - 1)
    t = (pos - index).astype(np.float32)
    return index, t * t * (3.0 - 2.0 * t)


def _value_noise(s: _Scene, seed: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Smooth fractal value noise in [0, 1] on the pixel grid (separable interpolation of random lattices).

    Gathers, not matrix products: BLAS threads make tiny products slow on a busy machine.
    """
    rng = np.random.default_rng(seed)
    resolution = s.x.shape[0]
    out = np.zeros_like(s.x)
    total = 0.0
    for o in range(octaves):
        n = cells * 2**o
        i, t = _interp_weights(resolution, n)
        lattice = rng.random((n + 1, n + 1), dtype=np.float32)
        rows = lattice[i] * (1.0 - t)[:, None] + lattice[i + 1] * t[:, None]
        out += 0.5**o * (rows[:, i] * (1.0 - t) + rows[:, i + 1] * t)
        total += 0.5**o
    return out / total


def _blob(s: _Scene, cx: float, cy: float, r: float) -> np.ndarray:
    """Gaussian blob of radius ``r`` centred at (cx, cy)."""
    return np.exp(-((s.x - cx) ** 2 + (s.y - cy) ** 2) / (2.0 * r * r))


def _band(dist: np.ndarray, width: float, s: _Scene) -> np.ndarray:
    """A bright line of half-width ``width`` (never thinner than the soft edge) around ``dist == 0``."""
    w = max(width, 0.6 * s.edge)
    return np.exp(-((dist / w) ** 2))


def _lung_point(s: _Scene, side: float, lateral: float, vertical: float) -> tuple[float, float]:
    """A point inside a lung: ``vertical`` 0 = apex .. 1 = base, ``lateral`` 0 = medial .. 1 = lateral."""
    g = s.g
    y = g["apex_y"] + vertical * (g["base_y"] - g["dome_height"] - g["apex_y"])
    t = np.clip((y - g["apex_y"]) / g["lung_rise"], 0.0, 1.0)
    half = g["lung_medial"] + (g["lung_lateral"] - g["lung_medial"]) * np.sqrt(t)
    x = g["lung_medial"] + lateral * (half - g["lung_medial"])
    return float(side * x), float(y)


def _random_lung_point(
    s: _Scene, rng: np.random.Generator, vert: tuple[float, float] = (0.2, 0.9), lat: tuple[float, float] = (0.25, 0.8)
) -> tuple[float, float]:
    side = float(rng.choice([-1.0, 1.0]))
    return _lung_point(s, side, rng.uniform(*lat), rng.uniform(*vert))


def _pick_sides(rng: np.random.Generator, p_both: float) -> list[float]:
    if rng.random() < p_both:
        return [-1.0, 1.0]
    return [float(rng.choice([-1.0, 1.0]))]


# ---------------------------------------------------------------- anatomy
def _lung_distances(s: _Scene, side: float) -> dict[str, np.ndarray]:
    """Signed distances (positive inside) of one lung to its lateral, medial and diaphragmatic borders."""
    g = s.g
    xm = side * s.x  # mirrored: lateral is positive
    t = np.clip((s.y - g["apex_y"]) / g["lung_rise"], 0.0, 1.0)
    lateral_edge = g["lung_medial"] + (g["lung_lateral"] - g["lung_medial"]) * np.sqrt(t)
    base = g["base_y"] - (g["right_dome_raise"] if side < 0 else 0.0)
    centre = 0.5 * (g["lung_medial"] + g["lung_lateral"])
    half = 0.5 * (g["lung_lateral"] - g["lung_medial"])
    dome = base - g["dome_height"] * np.clip(1.0 - ((xm - centre) / half) ** 2, 0.0, 1.0)
    d_lat, d_med, d_dia = lateral_edge - xm, xm - g["lung_medial"], dome - s.y
    return {"lateral": d_lat, "medial": d_med, "diaphragm": d_dia, "inside": np.minimum(np.minimum(d_lat, d_med), d_dia)}


def _heart_distance(s: _Scene) -> np.ndarray:
    g = s.g
    width = g["ctr"] * 2.0 * g["lung_lateral"]
    rx = np.where(s.x > g["heart_x"], np.float32(0.64 * width), np.float32(0.36 * width))
    rn = np.hypot((s.x - g["heart_x"]) / rx, (s.y - g["heart_y"]) / g["heart_ry"])
    return (1.0 - rn) * g["heart_ry"]


def _build_masks(s: _Scene) -> None:
    g, x, y, e = s.g, s.x, s.y, s.edge
    body_half = 0.24 + 0.72 * _smoothstep(-0.98, -0.62, y)
    s.masks["body"] = _ramp(body_half - np.abs(x), 2 * e)
    for name, side in _SIDES.items():
        d = _lung_distances(s, side)
        s.masks[f"{name}_lung_sd"] = d["inside"]
        s.masks[f"{name}_lung_lateral_sd"] = d["lateral"]
        s.masks[f"{name}_lung"] = _ramp(d["inside"], e)
    s.masks["lungs"] = np.maximum(s.masks["right_lung"], s.masks["left_lung"])
    upper = g["lung_medial"] + 0.015 + g.get("mediastinum_widening", 0.0) * _smoothstep(0.1, -0.4, y)
    knob = 0.075 - np.hypot(x - 0.14, y + 0.3)
    s.masks["mediastinum"] = np.maximum(_ramp(upper - np.abs(x - 0.01), e), _ramp(knob, e)) * _ramp(y + 1.2, e)
    s.masks["heart"] = _ramp(_heart_distance(s), e)


def _rib_layer(s: _Scene) -> np.ndarray:
    """Posterior ribs (arcs convex upwards, lower laterally), fainter anterior ribs, the clavicles (both sides at once)."""
    g, x, y = s.g, s.x, s.y
    xm = np.abs(x)  # lateral distance; the two hemithoraces mirror each other
    phase = (y - g["rib_y0"] - g["rib_curve"] * (xm - 0.2) ** 2 - g["apex_y"] + 0.05) / g["rib_spacing"]
    gap: np.ndarray | float = 1.0
    if s.fracture is not None:
        side, fx, k, step = s.fracture
        broken = (np.floor(phase) == k) & (side * x > 0)
        gap = 1.0 - np.exp(-(((xm - fx) / max(0.008, 0.5 * s.edge)) ** 2)) * broken
        phase = np.where(broken & (xm > fx), phase + step, phase)
    posterior = np.exp(-(((phase - np.floor(phase) - 0.5) / 0.16) ** 2)) * ((phase >= 0) & (phase < 10)) * gap
    anterior_phase = (y + 0.35 * (xm - 0.1) - g["apex_y"] - 0.25) / (1.15 * g["rib_spacing"])
    anterior = 0.3 * np.exp(-(((anterior_phase % 1.0 - 0.5) / 0.15) ** 2)) * ((anterior_phase >= 0) & (anterior_phase < 6) & (xm < 0.6))
    clavicle = _band(y - (g["apex_y"] + 0.04 - 0.2 * (xm - 0.1)), 0.03, s) * ((xm > 0.06) & (xm < 0.7))
    inside = (xm > 0.04) & (xm < g["lung_lateral"] + 0.1)
    return (inside * (posterior + anterior) + 1.3 * clavicle) * _smoothstep(g["base_y"] + 0.2, g["base_y"], y)


def _lung_markings(s: _Scene) -> np.ndarray:
    """Vessels branching out of each hilum, tapering towards the periphery, plus fine parenchymal texture."""
    seed = s.p.anatomy_seed
    warp = _value_noise(s, stable_seed(seed, "warp"), 5)
    segments = _smoothstep(0.3, 0.6, _value_noise(s, stable_seed(seed, "segments"), 10))
    texture = _value_noise(s, stable_seed(seed, "texture"), 24, octaves=2)
    dx, dy = np.abs(s.x) - (s.g["lung_medial"] + 0.12), s.y + np.float32(0.05)  # from the nearer hilum
    r = np.hypot(dx, dy)
    wave = 0.5 + 0.5 * np.cos(9.0 * np.arctan2(dy, dx) + 7.0 * warp + 5.0 * r)
    vessels = np.exp(-(1.0 - wave) * (3.0 + 20.0 * r) - r / 0.55) + 0.6 * np.exp(-((r / 0.09) ** 2))
    return 0.18 * vessels * (0.3 + 0.7 * segments) + 0.3 * (texture - 0.5)


# ---------------------------------------------------------------- findings
def _cardiomegaly_shape(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    target = rng.uniform(0.58, 0.66)
    s.g["ctr"] += sev * (target - s.g["ctr"])


def _mediastinum_shape(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    s.g["mediastinum_widening"] = sev * rng.uniform(0.06, 0.1)


def _emphysema_shape(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    s.g["dome_height"] *= 1.0 - 0.7 * sev
    s.g["base_y"] += 0.08 * sev
    s.g["lung_lateral"] += 0.03 * sev


def _fracture_shape(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    s.fracture = (float(rng.choice([-1.0, 1.0])), rng.uniform(0.45, 0.7), int(rng.integers(3, 8)), 0.25 * sev)


def _effusion(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    """Dependent fluid: opaque base, concave-up meniscus rising laterally, blunted costophrenic angle."""
    g = s.g
    for side in _pick_sides(rng, 0.3):
        name = "right" if side < 0 else "left"
        xm = side * s.x
        height = (0.18 + 0.22 * sev * rng.uniform(0.6, 1.0)) * (g["base_y"] - g["apex_y"])
        level = g["base_y"] - height
        lateral = np.clip((xm - g["lung_medial"]) / (g["lung_lateral"] - g["lung_medial"]), 0.0, 1.0)
        top = level - 0.14 * lateral**2
        alpha = _ramp(s.y - top, 0.06) * (0.75 + 0.25 * sev) * _ramp(s.masks[f"{name}_lung_sd"] + 0.05, s.edge)
        s.add_opacity(alpha)


def _pneumothorax(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    """Apical-lateral air: no markings outside the visceral pleural line, which is drawn thin and bright."""
    g = s.g
    side = float(rng.choice([-1.0, 1.0]))
    name = "right" if side < 0 else "left"
    depth = 0.08 + 0.1 * sev
    y_limit = g["apex_y"] + rng.uniform(0.55, 0.75) * (g["base_y"] - g["apex_y"])
    taper = np.clip((y_limit - s.y) / 0.25, 0.0, 1.0)
    d_lat = s.masks[f"{name}_lung_lateral_sd"]
    in_lung = s.masks[f"{name}_lung"]
    line_pos = depth * np.sqrt(taper)
    air = _ramp(line_pos - d_lat, s.edge) * in_lung * (taper > 0)
    s.no_markings = np.maximum(s.no_markings, air)
    clear = (line_pos - d_lat > 3.0 * s.edge) & (s.masks[f"{name}_lung_sd"] > 2.0 * s.edge) & (taper > 0)
    s.masks["pneumothorax"] = clear.astype(np.float32)  # the air space away from its borders
    s.lucency = s.lucency + 0.05 * air
    line = _band(d_lat - line_pos, 0.006, s) * in_lung * (taper > 0.02) * _ramp(s.masks[f"{name}_lung_sd"] - 0.01, s.edge)
    s.overlays.append((0.45 * line * (0.5 + 0.5 * sev), 0.5))


def _patchy(s: _Scene, rng: np.random.Generator, count: int, radius: tuple[float, float], strength: float, cluster: bool) -> None:
    """Ill-defined airspace opacities (blobs modulated by noise), scattered or clustered in one zone."""
    texture = _value_noise(s, int(rng.integers(2**62)), 12)
    centre = _random_lung_point(s, rng, vert=(0.35, 0.9))
    alpha = np.zeros_like(s.x)
    for _ in range(count):
        if cluster:
            cx, cy = centre[0] + rng.normal(0, 0.07), centre[1] + rng.normal(0, 0.07)
        else:
            cx, cy = _random_lung_point(s, rng)
        alpha = np.maximum(alpha, _blob(s, cx, cy, rng.uniform(*radius)))
    s.add_opacity(strength * alpha * (0.45 + 0.9 * texture) * s.masks["lungs"])


def _lung_opacity(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    _patchy(s, rng, int(rng.integers(2, 5)), (0.06, 0.12), 0.6 * sev, cluster=False)


def _consolidation(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    _patchy(s, rng, 3, (0.1, 0.16), 0.8 * sev, cluster=True)


def _pneumonia(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    _patchy(s, rng, int(rng.integers(3, 7)), (0.05, 0.09), 0.65 * sev, cluster=True)


def _infiltration(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    """Bilateral reticulo-nodular interstitial pattern, mid and lower zones."""
    net = _value_noise(s, int(rng.integers(2**62)), 28, octaves=2)
    zones = _smoothstep(-0.3, 0.2, s.y)
    s.add_opacity(0.4 * sev * _smoothstep(0.45, 0.7, net) * zones * s.masks["lungs"])


def _edema(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    """Bilateral perihilar (bat-wing) haze."""
    spread = rng.uniform(0.2, 0.26)
    haze = sum(_blob(s, side * (s.g["lung_medial"] + 0.14), 0.0, spread) for side in _SIDES.values())
    s.add_opacity(0.55 * sev * np.clip(haze, 0.0, 1.0) * s.masks["lungs"])


def _atelectasis(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    """Plate-like (discoid) linear opacity in a lung base."""
    cx, cy = _random_lung_point(s, rng, vert=(0.8, 0.9), lat=(0.35, 0.7))
    tilt = rng.uniform(-0.25, 0.25)
    along, across = (s.x - cx), (s.y - cy) - tilt * (s.x - cx)
    plate = _band(across, rng.uniform(0.015, 0.025), s) * _ramp(rng.uniform(0.14, 0.2) - np.abs(along), 0.03)
    s.add_opacity(0.85 * sev * plate * s.masks["lungs"])


def _lesion(s: _Scene, sev: float, rng: np.random.Generator, radius: tuple[float, float]) -> None:
    cx, cy = _random_lung_point(s, rng, vert=(0.2, 0.8))
    r = rng.uniform(*radius)
    lobulation = 1.0 + 0.15 * np.cos(5.0 * np.arctan2(s.y - cy, s.x - cx) + rng.uniform(0, 6.3))
    d = r * lobulation - np.hypot(s.x - cx, s.y - cy)
    s.add_opacity(0.7 * sev * _ramp(d, max(0.015, s.edge)) * s.masks["lungs"])


def _pleural_thickening(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    side = float(rng.choice([-1.0, 1.0]))
    name = "right" if side < 0 else "left"
    lo, hi = sorted(rng.uniform(-0.6, 0.4, size=2))
    rind = np.exp(-((s.masks[f"{name}_lung_lateral_sd"] / 0.05) ** 2)) * _smoothstep(lo - 0.1, lo, s.y) * _smoothstep(hi + 0.2, hi, s.y)
    s.add_opacity(0.75 * sev * rind * s.masks[f"{name}_lung"])


def _fibrosis(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    """Peripheral, basal-predominant reticulation."""
    net = np.abs(np.sin(28.0 * s.x + 9.0 * _value_noise(s, int(rng.integers(2**62)), 10))) * np.abs(np.sin(28.0 * s.y))
    periphery = _smoothstep(0.3, 0.7, np.abs(s.x)) * _smoothstep(-0.2, 0.4, s.y)
    s.add_opacity(0.45 * sev * _smoothstep(0.6, 0.9, 1.0 - net) * periphery * s.masks["lungs"])


def _emphysema(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    s.lucency = s.lucency + 0.05 * sev * s.masks["lungs"]
    s.no_markings = np.maximum(s.no_markings, 0.5 * sev * _smoothstep(0.3, 0.7, np.abs(s.x)))


def _hernia(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    """Retrocardiac hiatal hernia: a rounded density with an air-fluid level."""
    cx, cy, r = rng.uniform(0.0, 0.1), s.g["heart_y"] + 0.12, rng.uniform(0.08, 0.12)
    disc = _ramp(r - np.hypot(s.x - cx, s.y - cy), s.edge)
    s.overlays.append((sev * disc * _ramp(s.y - cy + 0.02, s.edge), 0.85))
    s.overlays.append((sev * disc * _ramp(cy - 0.02 - s.y, s.edge) * 0.8, 0.35))


def _support_devices(s: _Scene, sev: float, rng: np.random.Generator) -> None:
    """Radio-opaque lines: endotracheal tube, central venous catheter, nasogastric tube, ECG leads."""
    x, y = s.x, s.y
    lines = np.zeros_like(x)
    kinds = rng.permutation(4)[: int(rng.integers(1, 4))]
    for kind in kinds:
        if kind == 0:  # endotracheal tube down the trachea
            tip = rng.uniform(-0.5, -0.35)
            lines = np.maximum(lines, _band(x - 0.01 - 0.02 * (y + 1.0), 0.012, s) * (y < tip))
        elif kind == 1:  # central line from a subclavian vein to the SVC
            side = float(rng.choice([-1.0, 1.0]))
            xs = side * x
            curve = -0.72 + 0.5 * (0.6 - xs) ** 2 + rng.uniform(-0.03, 0.03)
            lines = np.maximum(lines, _band(y - curve, 0.008, s) * (xs > 0.05) * (xs < 0.85) * (y > -0.9))
        elif kind == 2:  # nasogastric tube to the stomach below the left dome
            path = 0.02 + 0.35 * _smoothstep(0.3, 0.75, y)
            lines = np.maximum(lines, _band(x - path, 0.009, s) * (y < s.g["base_y"] + 0.2))
        else:  # ECG electrodes
            for _ in range(3):
                cx, cy = rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.4)
                lines = np.maximum(lines, _band(np.hypot(x - cx, y - cy) - 0.035, 0.007, s))
    s.overlays.append((sev * lines, _METAL))


#: findings that change the anatomy before the masks are built
_SHAPE: dict[str, Callable[[_Scene, float, np.random.Generator], None]] = {
    "Cardiomegaly": _cardiomegaly_shape,
    "Enlarged Cardiomediastinum": _mediastinum_shape,
    "Emphysema": _emphysema_shape,
    "Fracture": _fracture_shape,
}
#: findings drawn as layers on top of the anatomy
_DRAW: dict[str, Callable[[_Scene, float, np.random.Generator], None]] = {
    "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Lung Opacity": _lung_opacity,
    "Consolidation": _consolidation,
    "Pneumonia": _pneumonia,
    "Infiltration": _infiltration,
    "Edema": _edema,
    "Atelectasis": _atelectasis,
    "Lung Lesion": lambda s, sev, rng: _lesion(s, sev, rng, (0.05, 0.1)),
    "Nodule": lambda s, sev, rng: _lesion(s, sev, rng, (0.03, 0.05)),
    "Mass": lambda s, sev, rng: _lesion(s, sev, rng, (0.1, 0.16)),
    "Pleural Other": _pleural_thickening,
    "Fibrosis": _fibrosis,
    "Emphysema": _emphysema,
    "Hernia": _hernia,
    "Support Devices": _support_devices,
}


def _check_findings(findings: Mapping[str, float]) -> None:
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise UserError(f"unknown phantom finding(s) {unknown}; known: {', '.join(FINDINGS)}")


def _finding_rng(p: PhantomParams, name: str) -> np.random.Generator:
    return np.random.default_rng(stable_seed("finding", p.image_seed, name))


def _build_scene(p: PhantomParams, resolution: int, findings: Mapping[str, float]) -> _Scene:
    if resolution < MIN_RESOLUTION:
        raise UserError(f"phantom resolution {resolution} is too small; use at least {MIN_RESOLUTION}")
    _check_findings(findings)
    centres = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2.0 - 1.0
    u, v = np.meshgrid(centres - p.shift[0], centres - p.shift[1])
    c, s_ = math.cos(math.radians(p.rotation_deg)), math.sin(math.radians(p.rotation_deg))
    x, y = (c * u + s_ * v) / p.scale, (-s_ * u + c * v) / p.scale
    geometry = {k: float(getattr(p, k)) for k in (
        "lung_lateral", "lung_medial", "apex_y", "base_y", "lung_rise", "dome_height", "right_dome_raise",
        "ctr", "heart_x", "heart_y", "heart_ry", "rib_spacing", "rib_curve", "rib_y0")}
    scene = _Scene(p=p, x=x, y=y, edge=max(0.012, 2.5 / (resolution * p.scale)), g=geometry)
    for name in FINDINGS:  # fixed order: the result does not depend on the mapping's order
        if findings.get(name, 0.0) > 0 and name in _SHAPE:
            _SHAPE[name](scene, float(findings[name]), _finding_rng(p, name))
    _build_masks(scene)
    scene.opacity, scene.lucency, scene.no_markings = (np.zeros_like(x) for _ in range(3))
    for name in FINDINGS:
        if findings.get(name, 0.0) > 0 and name in _DRAW:
            _DRAW[name](scene, float(findings[name]), _finding_rng(p, name))
    return scene


def _mix(img: np.ndarray, value: float | np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return img + (value - img) * alpha


def draw_phantom(params: PhantomParams, findings: Mapping[str, float] | None = None, resolution: int = 256) -> np.ndarray:
    """Draw one phantom as a ``(resolution, resolution)`` uint8 image.

    ``findings`` maps names in :data:`FINDINGS` to a severity in (0, 1] (0 or absent: not drawn;
    the corpus writers use 0.5 for uncertain labels, i.e. a faint sign).
    """
    s = _build_scene(params, resolution, findings or {})
    m, x, y = s.masks, s.x, s.y
    female_soft = 0.05 * sum(_blob(s, side * 0.45, 0.5, 0.22) for side in _SIDES.values()) if params.female else 0.0
    soft = _SOFT + 0.07 * (1.0 - np.clip(np.abs(x) / 0.95, 0, 1) ** 2) + 0.08 * _smoothstep(0.3, 0.7, y) + female_soft
    img = _mix(np.full_like(x, _AIR), soft, m["body"])
    lung = _LUNG + _lung_markings(s) * (1.0 - s.no_markings) - s.lucency
    lung = _mix(lung, _FLUID, s.opacity)
    img = _mix(img, lung, m["lungs"] * m["body"])
    gastric = _ramp(0.1 - np.hypot(x - 0.38, y - s.g["base_y"] - 0.12), s.edge)
    img = _mix(img, 0.3, 0.6 * gastric * (1.0 - m["lungs"]))
    vertebrae = 0.025 * (np.cos(y * np.pi / (0.5 * s.g["rib_spacing"])) > 0.6) * (np.abs(x) < 0.07)
    img = _mix(img, _MEDIASTINUM + vertebrae, m["mediastinum"])
    trachea = _ramp(0.035 - np.abs(x - 0.01), s.edge) * _smoothstep(-0.3, -0.45, y)
    img = _mix(img, 0.42, 0.7 * trachea)
    heart = _HEART + 0.06 * np.clip(_heart_distance(s) / s.g["heart_ry"], 0.0, 1.0)
    img = _mix(img, heart, m["heart"])
    img = img + _rib_layer(s) * m["body"] * (0.03 + 0.06 * m["lungs"] * (1.0 - m["heart"]) * (1.0 - s.opacity))
    for alpha, value in s.overlays:
        img = _mix(img, value, np.clip(alpha, 0.0, 1.0))
    img = np.clip((img - 0.5) * params.contrast + 0.5 + params.exposure, 0.0, 1.0) ** params.gamma
    noise = np.random.default_rng(stable_seed("noise", params.image_seed)).standard_normal(img.shape, dtype=np.float32)
    img = np.clip(img + params.noise * noise, 0.0, 1.0)
    return np.round(img * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class PhantomGeometry:
    """Regions of one phantom in pixel coordinates (rows = y, columns = x).

    ``masks`` are boolean ``(resolution, resolution)`` arrays; ``boxes`` their bounding boxes
    ``(row0, row1, col0, col1)`` (end-exclusive). ``right``/``left`` are the PATIENT's sides
    (right lung on the left of the image). Regions: ``heart``, ``{right,left}_lung``, ``lungs``,
    ``{right,left}_apex`` (upper 30 % of a lung), ``{right,left}_base`` (lower 25 %),
    ``perihilar``, and when drawn: ``pneumothorax`` (the air space beyond the pleural line).
    ``cardiothoracic_ratio`` is measured on the heart and lung masks (widest extents).
    """

    masks: dict[str, np.ndarray]
    boxes: dict[str, tuple[int, int, int, int]]
    cardiothoracic_ratio: float


def phantom_geometry(params: PhantomParams, resolution: int = 256, findings: Mapping[str, float] | None = None) -> PhantomGeometry:
    """Regions of the phantom drawn from ``params`` (and ``findings``, which may reshape it)."""
    s = _build_scene(params, resolution, findings or {})
    g, y = s.g, s.y
    masks: dict[str, np.ndarray] = {"heart": s.masks["heart"] > 0.5, "lungs": s.masks["lungs"] > 0.5}
    for name in _SIDES:
        lung = s.masks[f"{name}_lung"] > 0.5
        masks[f"{name}_lung"] = lung
        masks[f"{name}_apex"] = lung & (y < g["apex_y"] + 0.3 * (g["base_y"] - g["apex_y"]))
        masks[f"{name}_base"] = lung & (y > g["base_y"] - g["dome_height"] - 0.25 * (g["base_y"] - g["dome_height"] - g["apex_y"]))
    hila = [np.hypot(s.x - side * (g["lung_medial"] + 0.14), y) < 0.25 for side in _SIDES.values()]
    masks["perihilar"] = masks["lungs"] & (hila[0] | hila[1])
    if "pneumothorax" in s.masks:
        masks["pneumothorax"] = (s.masks["pneumothorax"] > 0.99) & masks["lungs"]
    boxes = {}
    for name, mask in masks.items():
        rows, cols = np.nonzero(mask)
        if rows.size:
            boxes[name] = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
    heart_x, lung_x = s.x[masks["heart"]], s.x[masks["lungs"]]
    ctr = float(np.ptp(heart_x) / np.ptp(lung_x)) if heart_x.size and lung_x.size else float("nan")
    return PhantomGeometry(masks=masks, boxes=boxes, cardiothoracic_ratio=ctr)

