"""The phantom drawer's canvas: the patient-frame pixel grid, noise and shape primitives, and the normal anatomy
(lungs, heart, ribs, vessel markings) that :mod:`.findings` draws on and :mod:`.draw` composes."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hf_cxr_diffusion.phantoms.draw import PhantomParams

SIDES = {"right": -1.0, "left": 1.0}  # patient side -> sign of x on the image

# intensities (0 = black, 1 = white) of the tissue classes before the acquisition transform
AIR, SOFT, LUNG, MEDIASTINUM, HEART, FLUID, METAL = 0.03, 0.47, 0.19, 0.64, 0.68, 0.62, 0.97


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, stable across runs (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class Scene:
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


def ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask from a signed distance (positive inside)."""
    return np.clip(0.5 + d / width, 0.0, 1.0)


def smoothstep(a: float, b: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=32)
def _interp_weights(resolution: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index left of each pixel and the smoothstep weight of the next lattice point."""
    pos = (np.arange(resolution) + 0.5) / resolution * cells
    index = np.minimum(np.floor(pos).astype(np.intp), cells - 1)
    t = (pos - index).astype(np.float32)
    return index, t * t * (3.0 - 2.0 * t)


def value_noise(s: Scene, seed: int, cells: int, octaves: int = 3) -> np.ndarray:
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


def blob(s: Scene, cx: float, cy: float, r: float) -> np.ndarray:
    """Gaussian blob of radius ``r`` centred at (cx, cy)."""
    return np.exp(-((s.x - cx) ** 2 + (s.y - cy) ** 2) / (2.0 * r * r))


def band(dist: np.ndarray, width: float, s: Scene) -> np.ndarray:
    """A bright line of half-width ``width`` (never thinner than the soft edge) around ``dist == 0``."""
    w = max(width, 0.6 * s.edge)
    return np.exp(-((dist / w) ** 2))


def lung_point(s: Scene, side: float, lateral: float, vertical: float) -> tuple[float, float]:
    """A point inside a lung: ``vertical`` 0 = apex .. 1 = base, ``lateral`` 0 = medial .. 1 = lateral."""
    g = s.g
    y = g["apex_y"] + vertical * (g["base_y"] - g["dome_height"] - g["apex_y"])
    t = np.clip((y - g["apex_y"]) / g["lung_rise"], 0.0, 1.0)
    half = g["lung_medial"] + (g["lung_lateral"] - g["lung_medial"]) * np.sqrt(t)
    x = g["lung_medial"] + lateral * (half - g["lung_medial"])
    return float(side * x), float(y)


def random_lung_point(
    s: Scene, rng: np.random.Generator, vert: tuple[float, float] = (0.2, 0.9), lat: tuple[float, float] = (0.25, 0.8)
) -> tuple[float, float]:
    side = float(rng.choice([-1.0, 1.0]))
    return lung_point(s, side, rng.uniform(*lat), rng.uniform(*vert))


def pick_sides(rng: np.random.Generator, p_both: float) -> list[float]:
    if rng.random() < p_both:
        return [-1.0, 1.0]
    return [float(rng.choice([-1.0, 1.0]))]


# ---------------------------------------------------------------- anatomy
def lung_distances(s: Scene, side: float) -> dict[str, np.ndarray]:
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


def heart_distance(s: Scene) -> np.ndarray:
    g = s.g
    width = g["ctr"] * 2.0 * g["lung_lateral"]
    rx = np.where(s.x > g["heart_x"], np.float32(0.64 * width), np.float32(0.36 * width))
    rn = np.hypot((s.x - g["heart_x"]) / rx, (s.y - g["heart_y"]) / g["heart_ry"])
    return (1.0 - rn) * g["heart_ry"]


def build_masks(s: Scene) -> None:
    g, x, y, e = s.g, s.x, s.y, s.edge
    body_half = 0.24 + 0.72 * smoothstep(-0.98, -0.62, y)
    s.masks["body"] = ramp(body_half - np.abs(x), 2 * e)
    for name, side in SIDES.items():
        d = lung_distances(s, side)
        s.masks[f"{name}_lung_sd"] = d["inside"]
        s.masks[f"{name}_lung_lateral_sd"] = d["lateral"]
        s.masks[f"{name}_lung"] = ramp(d["inside"], e)
    s.masks["lungs"] = np.maximum(s.masks["right_lung"], s.masks["left_lung"])
    upper = g["lung_medial"] + 0.015 + g.get("mediastinum_widening", 0.0) * smoothstep(0.1, -0.4, y)
    knob = 0.075 - np.hypot(x - 0.14, y + 0.3)
    s.masks["mediastinum"] = np.maximum(ramp(upper - np.abs(x - 0.01), e), ramp(knob, e)) * ramp(y + 1.2, e)
    s.masks["heart"] = ramp(heart_distance(s), e)


def rib_layer(s: Scene) -> np.ndarray:
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
    clavicle = band(y - (g["apex_y"] + 0.04 - 0.2 * (xm - 0.1)), 0.03, s) * ((xm > 0.06) & (xm < 0.7))
    inside = (xm > 0.04) & (xm < g["lung_lateral"] + 0.1)
    return (inside * (posterior + anterior) + 1.3 * clavicle) * smoothstep(g["base_y"] + 0.2, g["base_y"], y)


def lung_markings(s: Scene) -> np.ndarray:
    """Vessels branching out of each hilum, tapering towards the periphery, plus fine parenchymal texture."""
    seed = s.p.anatomy_seed
    warp = value_noise(s, stable_seed(seed, "warp"), 5)
    segments = smoothstep(0.3, 0.6, value_noise(s, stable_seed(seed, "segments"), 10))
    texture = value_noise(s, stable_seed(seed, "texture"), 24, octaves=2)
    dx, dy = np.abs(s.x) - (s.g["lung_medial"] + 0.12), s.y + np.float32(0.05)  # from the nearer hilum
    r = np.hypot(dx, dy)
    wave = 0.5 + 0.5 * np.cos(9.0 * np.arctan2(dy, dx) + 7.0 * warp + 5.0 * r)
    vessels = np.exp(-(1.0 - wave) * (3.0 + 20.0 * r) - r / 0.55) + 0.6 * np.exp(-((r / 0.09) ** 2))
    return 0.18 * vessels * (0.3 + 0.7 * segments) + 0.3 * (texture - 0.5)
