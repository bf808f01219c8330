"""Findings drawn on a phantom :class:`~hf_cxr_diffusion.phantoms.scene.Scene`, each after its textbook radiographic
signs (see :mod:`.draw`): :data:`SHAPE` changes the anatomy before the masks are built, :data:`DRAW` adds layers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hf_cxr_diffusion.phantoms.scene import (
    METAL, SIDES, Scene, band, blob, pick_sides, ramp, random_lung_point, smoothstep, value_noise,
)


def _cardiomegaly_shape(s: Scene, sev: float, rng: np.random.Generator) -> None:
    target = rng.uniform(0.58, 0.66)
    s.g["ctr"] += sev * (target - s.g["ctr"])


def _mediastinum_shape(s: Scene, sev: float, rng: np.random.Generator) -> None:
    s.g["mediastinum_widening"] = sev * rng.uniform(0.06, 0.1)


def _emphysema_shape(s: Scene, sev: float, rng: np.random.Generator) -> None:
    s.g["dome_height"] *= 1.0 - 0.7 * sev
    s.g["base_y"] += 0.08 * sev
    s.g["lung_lateral"] += 0.03 * sev


def _fracture_shape(s: Scene, sev: float, rng: np.random.Generator) -> None:
    s.fracture = (float(rng.choice([-1.0, 1.0])), rng.uniform(0.45, 0.7), int(rng.integers(3, 8)), 0.25 * sev)


def _effusion(s: Scene, sev: float, rng: np.random.Generator) -> None:
    """Dependent fluid: opaque base, concave-up meniscus rising laterally, blunted costophrenic angle."""
    g = s.g
    for side in pick_sides(rng, 0.3):
        name = "right" if side < 0 else "left"
        xm = side * s.x
        height = (0.18 + 0.22 * sev * rng.uniform(0.6, 1.0)) * (g["base_y"] - g["apex_y"])
        level = g["base_y"] - height
        lateral = np.clip((xm - g["lung_medial"]) / (g["lung_lateral"] - g["lung_medial"]), 0.0, 1.0)
        top = level - 0.14 * lateral**2
        alpha = ramp(s.y - top, 0.06) * (0.75 + 0.25 * sev) * ramp(s.masks[f"{name}_lung_sd"] + 0.05, s.edge)
        s.add_opacity(alpha)


def _pneumothorax(s: Scene, sev: float, rng: np.random.Generator) -> None:
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
    air = ramp(line_pos - d_lat, s.edge) * in_lung * (taper > 0)
    s.no_markings = np.maximum(s.no_markings, air)
    clear = (line_pos - d_lat > 3.0 * s.edge) & (s.masks[f"{name}_lung_sd"] > 2.0 * s.edge) & (taper > 0)
    s.masks["pneumothorax"] = clear.astype(np.float32)  # the air space away from its borders
    s.lucency = s.lucency + 0.05 * air
    line = band(d_lat - line_pos, 0.006, s) * in_lung * (taper > 0.02) * ramp(s.masks[f"{name}_lung_sd"] - 0.01, s.edge)
    s.overlays.append((0.45 * line * (0.5 + 0.5 * sev), 0.5))


def _patchy(s: Scene, rng: np.random.Generator, count: int, radius: tuple[float, float], strength: float, cluster: bool) -> None:
    """Ill-defined airspace opacities (blobs modulated by noise), scattered or clustered in one zone."""
    texture = value_noise(s, int(rng.integers(2**62)), 12)
    centre = random_lung_point(s, rng, vert=(0.35, 0.9))
    alpha = np.zeros_like(s.x)
    for _ in range(count):
        if cluster:
            cx, cy = centre[0] + rng.normal(0, 0.07), centre[1] + rng.normal(0, 0.07)
        else:
            cx, cy = random_lung_point(s, rng)
        alpha = np.maximum(alpha, blob(s, cx, cy, rng.uniform(*radius)))
    s.add_opacity(strength * alpha * (0.45 + 0.9 * texture) * s.masks["lungs"])


def _lung_opacity(s: Scene, sev: float, rng: np.random.Generator) -> None:
    _patchy(s, rng, int(rng.integers(2, 5)), (0.06, 0.12), 0.6 * sev, cluster=False)


def _consolidation(s: Scene, sev: float, rng: np.random.Generator) -> None:
    _patchy(s, rng, 3, (0.1, 0.16), 0.8 * sev, cluster=True)


def _pneumonia(s: Scene, sev: float, rng: np.random.Generator) -> None:
    _patchy(s, rng, int(rng.integers(3, 7)), (0.05, 0.09), 0.65 * sev, cluster=True)


def _infiltration(s: Scene, sev: float, rng: np.random.Generator) -> None:
    """Bilateral reticulo-nodular interstitial pattern, mid and lower zones."""
    net = value_noise(s, int(rng.integers(2**62)), 28, octaves=2)
    zones = smoothstep(-0.3, 0.2, s.y)
    s.add_opacity(0.4 * sev * smoothstep(0.45, 0.7, net) * zones * s.masks["lungs"])


def _edema(s: Scene, sev: float, rng: np.random.Generator) -> None:
    """Bilateral perihilar (bat-wing) haze."""
    spread = rng.uniform(0.2, 0.26)
    haze = sum(blob(s, side * (s.g["lung_medial"] + 0.14), 0.0, spread) for side in SIDES.values())
    s.add_opacity(0.55 * sev * np.clip(haze, 0.0, 1.0) * s.masks["lungs"])


def _atelectasis(s: Scene, sev: float, rng: np.random.Generator) -> None:
    """Plate-like (discoid) linear opacity in a lung base."""
    cx, cy = random_lung_point(s, rng, vert=(0.8, 0.9), lat=(0.35, 0.7))
    tilt = rng.uniform(-0.25, 0.25)
    along, across = (s.x - cx), (s.y - cy) - tilt * (s.x - cx)
    plate = band(across, rng.uniform(0.015, 0.025), s) * ramp(rng.uniform(0.14, 0.2) - np.abs(along), 0.03)
    s.add_opacity(0.85 * sev * plate * s.masks["lungs"])


def _lesion(s: Scene, sev: float, rng: np.random.Generator, radius: tuple[float, float]) -> None:
    cx, cy = random_lung_point(s, rng, vert=(0.2, 0.8))
    r = rng.uniform(*radius)
    lobulation = 1.0 + 0.15 * np.cos(5.0 * np.arctan2(s.y - cy, s.x - cx) + rng.uniform(0, 6.3))
    d = r * lobulation - np.hypot(s.x - cx, s.y - cy)
    s.add_opacity(0.7 * sev * ramp(d, max(0.015, s.edge)) * s.masks["lungs"])


def _pleural_thickening(s: Scene, sev: float, rng: np.random.Generator) -> None:
    side = float(rng.choice([-1.0, 1.0]))
    name = "right" if side < 0 else "left"
    lo, hi = sorted(rng.uniform(-0.6, 0.4, size=2))
    rind = np.exp(-((s.masks[f"{name}_lung_lateral_sd"] / 0.05) ** 2)) * smoothstep(lo - 0.1, lo, s.y) * smoothstep(hi + 0.2, hi, s.y)
    s.add_opacity(0.75 * sev * rind * s.masks[f"{name}_lung"])


def _fibrosis(s: Scene, sev: float, rng: np.random.Generator) -> None:
    """Peripheral, basal-predominant reticulation."""
    net = np.abs(np.sin(28.0 * s.x + 9.0 * value_noise(s, int(rng.integers(2**62)), 10))) * np.abs(np.sin(28.0 * s.y))
    periphery = smoothstep(0.3, 0.7, np.abs(s.x)) * smoothstep(-0.2, 0.4, s.y)
    s.add_opacity(0.45 * sev * smoothstep(0.6, 0.9, 1.0 - net) * periphery * s.masks["lungs"])


def _emphysema(s: Scene, sev: float, rng: np.random.Generator) -> None:
    s.lucency = s.lucency + 0.05 * sev * s.masks["lungs"]
    s.no_markings = np.maximum(s.no_markings, 0.5 * sev * smoothstep(0.3, 0.7, np.abs(s.x)))


def _hernia(s: Scene, sev: float, rng: np.random.Generator) -> None:
    """Retrocardiac hiatal hernia: a rounded density with an air-fluid level."""
    cx, cy, r = rng.uniform(0.0, 0.1), s.g["heart_y"] + 0.12, rng.uniform(0.08, 0.12)
    disc = ramp(r - np.hypot(s.x - cx, s.y - cy), s.edge)
    s.overlays.append((sev * disc * ramp(s.y - cy + 0.02, s.edge), 0.85))
    s.overlays.append((sev * disc * ramp(cy - 0.02 - s.y, s.edge) * 0.8, 0.35))


def _support_devices(s: Scene, sev: float, rng: np.random.Generator) -> None:
    """Radio-opaque lines: endotracheal tube, central venous catheter, nasogastric tube, ECG leads."""
    x, y = s.x, s.y
    lines = np.zeros_like(x)
    kinds = rng.permutation(4)[: int(rng.integers(1, 4))]
    for kind in kinds:
        if kind == 0:  # endotracheal tube down the trachea
            tip = rng.uniform(-0.5, -0.35)
            lines = np.maximum(lines, band(x - 0.01 - 0.02 * (y + 1.0), 0.012, s) * (y < tip))
        elif kind == 1:  # central line from a subclavian vein to the SVC
            side = float(rng.choice([-1.0, 1.0]))
            xs = side * x
            curve = -0.72 + 0.5 * (0.6 - xs) ** 2 + rng.uniform(-0.03, 0.03)
            lines = np.maximum(lines, band(y - curve, 0.008, s) * (xs > 0.05) * (xs < 0.85) * (y > -0.9))
        elif kind == 2:  # nasogastric tube to the stomach below the left dome
            path = 0.02 + 0.35 * smoothstep(0.3, 0.75, y)
            lines = np.maximum(lines, band(x - path, 0.009, s) * (y < s.g["base_y"] + 0.2))
        else:  # ECG electrodes
            for _ in range(3):
                cx, cy = rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.4)
                lines = np.maximum(lines, band(np.hypot(x - cx, y - cy) - 0.035, 0.007, s))
    s.overlays.append((sev * lines, METAL))


#: findings that change the anatomy before the masks are built
SHAPE: dict[str, Callable[[Scene, float, np.random.Generator], None]] = {
    "Cardiomegaly": _cardiomegaly_shape,
    "Enlarged Cardiomediastinum": _mediastinum_shape,
    "Emphysema": _emphysema_shape,
    "Fracture": _fracture_shape,
}
#: findings drawn as layers on top of the anatomy
DRAW: dict[str, Callable[[Scene, float, np.random.Generator], None]] = {
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

