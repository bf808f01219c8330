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

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS, NO_FINDING
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.phantoms.findings import DRAW, SHAPE
from hf_cxr_diffusion.phantoms.scene import (
    AIR, FLUID, HEART, LUNG, MEDIASTINUM, SIDES, SOFT, Scene, blob, build_masks, heart_distance, lung_markings, ramp, rib_layer,
    smoothstep, stable_seed,
)

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



def _check_findings(findings: Mapping[str, float]) -> None:
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise UserError(f"unknown phantom finding(s) {unknown}; known: {', '.join(FINDINGS)}")


def _finding_rng(p: PhantomParams, name: str) -> np.random.Generator:
    return np.random.default_rng(stable_seed("finding", p.image_seed, name))


def _build_scene(p: PhantomParams, resolution: int, findings: Mapping[str, float]) -> Scene:
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
    scene = Scene(p=p, x=x, y=y, edge=max(0.012, 2.5 / (resolution * p.scale)), g=geometry)
    for name in FINDINGS:  # fixed order: the result does not depend on the mapping's order
        if findings.get(name, 0.0) > 0 and name in SHAPE:
            SHAPE[name](scene, float(findings[name]), _finding_rng(p, name))
    build_masks(scene)
    scene.opacity, scene.lucency, scene.no_markings = (np.zeros_like(x) for _ in range(3))
    for name in FINDINGS:
        if findings.get(name, 0.0) > 0 and name in DRAW:
            DRAW[name](scene, float(findings[name]), _finding_rng(p, name))
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
    female_soft = 0.05 * sum(blob(s, side * 0.45, 0.5, 0.22) for side in SIDES.values()) if params.female else 0.0
    soft = SOFT + 0.07 * (1.0 - np.clip(np.abs(x) / 0.95, 0, 1) ** 2) + 0.08 * smoothstep(0.3, 0.7, y) + female_soft
    img = _mix(np.full_like(x, AIR), soft, m["body"])
    lung = LUNG + lung_markings(s) * (1.0 - s.no_markings) - s.lucency
    lung = _mix(lung, FLUID, s.opacity)
    img = _mix(img, lung, m["lungs"] * m["body"])
    gastric = ramp(0.1 - np.hypot(x - 0.38, y - s.g["base_y"] - 0.12), s.edge)
    img = _mix(img, 0.3, 0.6 * gastric * (1.0 - m["lungs"]))
    vertebrae = 0.025 * (np.cos(y * np.pi / (0.5 * s.g["rib_spacing"])) > 0.6) * (np.abs(x) < 0.07)
    img = _mix(img, MEDIASTINUM + vertebrae, m["mediastinum"])
    trachea = ramp(0.035 - np.abs(x - 0.01), s.edge) * smoothstep(-0.3, -0.45, y)
    img = _mix(img, 0.42, 0.7 * trachea)
    heart = HEART + 0.06 * np.clip(heart_distance(s) / s.g["heart_ry"], 0.0, 1.0)
    img = _mix(img, heart, m["heart"])
    img = img + rib_layer(s) * m["body"] * (0.03 + 0.06 * m["lungs"] * (1.0 - m["heart"]) * (1.0 - s.opacity))
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
    for name in SIDES:
        lung = s.masks[f"{name}_lung"] > 0.5
        masks[f"{name}_lung"] = lung
        masks[f"{name}_apex"] = lung & (y < g["apex_y"] + 0.3 * (g["base_y"] - g["apex_y"]))
        masks[f"{name}_base"] = lung & (y > g["base_y"] - g["dome_height"] - 0.25 * (g["base_y"] - g["dome_height"] - g["apex_y"]))
    hila = [np.hypot(s.x - side * (g["lung_medial"] + 0.14), y) < 0.25 for side in SIDES.values()]
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

