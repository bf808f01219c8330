"""The phantom feature network: a small CNN the project trains on phantom radiographs (NOT a medical model).

It plays, for phantoms, the role TorchXRayVision's DenseNet-121 (Cohen et al., MIDL 2022) plays for
real chest X-rays: its pooled activations are the feature space of FID, Vendi and memorisation, and
its 14 CheXpert heads (multi-label, trained on phantoms drawn from real CheXpert label rows) are
the classifier of class consistency, the role the paradigm study's pretrained classifier plays.
Numbers computed with it carry the protocol id :data:`PROTOCOL_ID` and say nothing about medical
image quality.

Protocol ``phantom-fid-v1`` (one image at a time): a 2-D grayscale array and its bit depth's
``maxval`` (the metrics' decoder gives both) -> centre square crop -> scale to [-1, 1] -> resize to
:data:`INPUT_SIZE` px with Pillow's antialiased bilinear filter on float32 -> ``1 x S x S`` tensor.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS
from hf_cxr_diffusion.errors import MissingWeightsError

logger = logging.getLogger(__name__)

PROTOCOL_ID = "phantom-fid-v1"
#: side of the network's input in pixels
INPUT_SIZE = 64
#: the network's labels: the 14 CheXpert observations, in the official column order
LABELS: tuple[str, ...] = CHEXPERT_LABELS
WEIGHTS_NAME = "phantom-features"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REBUILD_COMMAND = "cxr-diffusion pretrain-features --output-dir DIR"


@dataclass(frozen=True)
class PretrainFeaturesConfig:
    """How :func:`pretrain_features` trains the network.

    Args:
        seed: seed of the phantom corpus, the initial weights, the batches and the augmentation.
        num_images: phantom radiographs drawn (CheXpert layout, real label rows, U-Ones labels).
        epochs: passes over the training split.
        batch_size: images per step.
        learning_rate: AdamW peak learning rate (cosine decay).
    """

    seed: int = field(default=1, metadata={"help": "seed of corpus, init, batches and augmentation"})
    num_images: int = field(default=12000, metadata={"help": "phantom radiographs to draw"})
    epochs: int = field(default=6, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=64, metadata={"help": "images per step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate"})


@dataclass(frozen=True)
class FeatureNetConfig:
    """Shape of :class:`PhantomFeatureNet`.

    Args:
        widths: channels of the four convolution stages (each: two 3x3 conv + BN + ReLU, then 2x2 max-pool
            except after the last).
        num_labels: sigmoid heads (the CheXpert observations).
    """

    widths: tuple[int, ...] = (16, 32, 64, 128)
    num_labels: int = len(LABELS)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class PhantomFeatureNet(nn.Module):
    """VGG-style CNN: ``features(x)`` = ReLU + global average pool of the last stage; ``forward(x)`` = logits."""

    def __init__(self, config: FeatureNetConfig = FeatureNetConfig(), operating_points: list[float] | None = None) -> None:
        super().__init__()
        self.config = config
        #: per-label probability above which a head counts as positive (TorchXRayVision's ``op_threshs`` role)
        self.operating_points = torch.tensor(operating_points or [0.5] * config.num_labels, dtype=torch.float32)
        self.labels: tuple[str, ...] = LABELS
        layers: list[nn.Module] = []
        in_ch = 1
        for i, ch in enumerate(config.widths):
            for _ in range(2):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
                in_ch = ch
            if i < len(config.widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.feature_dim, config.num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 1 x S x S`` preprocessed images -> ``N x feature_dim`` pooled activations."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the :data:`LABELS` heads."""
        return self.head(self.features(x))


def preprocess_gray(gray: np.ndarray, maxval: float, size: int = INPUT_SIZE) -> torch.Tensor:
    """The ``phantom-fid-v1`` protocol on a 2-D grayscale array of bit depth ``maxval``: ``1 x size x size`` in [-1, 1]."""
    h, w = gray.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    crop = gray[top : top + side, left : left + side]
    scaled = (crop.astype(np.float64) / maxval * 2.0 - 1.0).astype(np.float32)
    if side != size:
        scaled = np.array(Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return torch.from_numpy(scaled)[None]


def shipped_weights_dir() -> Path:
    """The folder of the feature network shipped inside the package."""
    return Path(str(resources.files("hf_cxr_diffusion.phantoms") / "weights" / WEIGHTS_NAME))


def save_feature_net(model: PhantomFeatureNet, output_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` (fp16) + ``config.json`` (shape, labels, protocol, how it was made)."""
    from safetensors.torch import save_file

    from hf_cxr_diffusion.io import atomic_path, ensure_output_dir, write_json_atomic

    out = ensure_output_dir(output_dir)
    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    config = {"widths": list(model.config.widths), "num_labels": model.config.num_labels, "labels": list(LABELS),
              "operating_points": [round(float(t), 6) for t in model.operating_points],
              "input_size": INPUT_SIZE, "protocol": PROTOCOL_ID, **record}
    write_json_atomic(out / CONFIG_FILE, config)
    return out


def load_feature_net(weights_dir: str | Path | None = None, *, allow_random_weights: bool = False) -> tuple[PhantomFeatureNet, dict[str, Any]]:
    """The trained network (fp32, eval mode) and its provenance (``protocol``, ``weights``, ``sha256``, ``random_weights``).

    ``weights_dir`` defaults to the shipped folder. Missing or corrupt weights raise
    :class:`MissingWeightsError` naming the file and the command that rebuilds them, unless
    ``allow_random_weights`` (tests only), which gives a seeded random network flagged as such.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hf_cxr_diffusion.hashing import sha256_file

    folder = Path(weights_dir) if weights_dir is not None else shipped_weights_dir()
    path, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model = PhantomFeatureNet(FeatureNetConfig(widths=tuple(config["widths"]), num_labels=config["num_labels"]),
                                  operating_points=config.get("operating_points"))
        state = load_file(str(path))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        if not allow_random_weights:
            raise MissingWeightsError(
                f"phantom feature network weights {path} are missing or unreadable ({type(err).__name__}); "
                f"rebuild them with `{REBUILD_COMMAND}` and pass that folder, or reinstall hf-cxr-diffusion"
            ) from err
        torch.manual_seed(0)
        model = PhantomFeatureNet()
        logger.warning("phantom feature network: RANDOM weights (no usable file at %s); numbers are flagged random_weights", path)
        return model.eval(), {"protocol": PROTOCOL_ID, "weights": WEIGHTS_NAME, "sha256": None, "random_weights": True}
    provenance = {"protocol": PROTOCOL_ID, "weights": WEIGHTS_NAME if weights_dir is None else str(folder),
                  "sha256": sha256_file(path), "random_weights": False}
    return model.eval(), provenance


# --------------------------------------------------------------------------- training
def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small shifts (up to 3 px), gamma and blur jitter, so generated images (slightly soft) read like drawn ones."""
    n = x.shape[0]
    shifts = torch.randint(-3, 4, (n, 2), generator=gen)
    x = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2)) for img, (dy, dx) in zip(x, shifts)])
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.2, 0.2, generator=gen))
    x = ((x + 1) / 2).clamp(0, 1).pow(gamma) * 2 - 1
    blur = torch.rand(n, generator=gen) < 0.5
    if blur.any():
        kernel = torch.tensor([0.25, 0.5, 0.25])
        k2 = (kernel[:, None] * kernel[None, :])[None, None]
        x[blur] = torch.nn.functional.conv2d(torch.nn.functional.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k2)
    return x


def _split_arrays(ds) -> tuple[torch.Tensor, np.ndarray]:
    """Images of a prepared split under the protocol, and their multi-hot CheXpert labels."""
    from hf_cxr_diffusion.data.labels import multi_hot

    names = ds.features["labels"].feature.names
    if tuple(names) != LABELS:
        raise ValueError(f"expected the CheXpert label list, got {names}")
    images = torch.stack([preprocess_gray(np.asarray(img.convert("L")), 255.0) for img in ds["image"]])
    labels = np.array([multi_hot(ids, len(LABELS)) for ids in ds["labels"]], dtype=np.float32)
    return images, labels


@torch.no_grad()
def predict(model: PhantomFeatureNet, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Sigmoid probabilities of the :data:`LABELS` heads."""
    model.eval()
    return torch.cat([torch.sigmoid(model(images[s : s + batch_size])) for s in range(0, len(images), batch_size)]).numpy()


def label_aucs(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """Per-label ROC AUC (sklearn); ``None`` where the held-out set has only one class."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float | None] = {}
    for j, name in enumerate(LABELS):
        y = labels[:, j]
        out[name] = round(float(roc_auc_score(y, probs[:, j])), 4) if 0 < y.sum() < len(y) else None
    return out


def youden_operating_points(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """Per label, the probability threshold maximising Youden's J = TPR - FPR on held-out data (0.5 without both classes)."""
    from sklearn.metrics import roc_curve

    points = []
    for j in range(labels.shape[1]):
        if not 0 < labels[:, j].sum() < len(labels):
            points.append(0.5)
            continue
        fpr, tpr, thresholds = roc_curve(labels[:, j], probs[:, j])
        points.append(float(np.clip(thresholds[int(np.argmax(tpr - fpr))], 0.0, 1.0)))
    return points


def pretrain_features(output_dir: str | Path, config: PretrainFeaturesConfig = PretrainFeaturesConfig(), *,
                      work_dir: str | Path | None = None) -> Path:
    """Train the phantom feature network on a fresh phantom corpus; write weights, config and card to ``output_dir``."""
    import math
    import time

    from tqdm.auto import tqdm

    from hf_cxr_diffusion.data.preparation import prepare
    from hf_cxr_diffusion.io import ensure_output_dir, write_text_atomic
    from hf_cxr_diffusion.data.loading import load_split
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    out = Path(output_dir)
    work = ensure_output_dir(Path(work_dir) if work_dir is not None else out.with_name(out.name + "-work"))
    cpu0 = time.process_time()
    corpus, prepared = work / "corpus", work / "prepared"
    if not (prepared / "README.md").is_file():
        make_phantoms(corpus, layout="chexpert", n=config.num_images, seed=config.seed, resolution=INPUT_SIZE)
        prepare(corpus="chexpert", data_dir=corpus, output_dir=prepared, resolution=INPUT_SIZE, template="findings", uncertain="ones", overwrite=True)
    train_x, train_y = _split_arrays(load_split(str(prepared), "train"))
    test_x, test_y = _split_arrays(load_split(str(prepared), "test"))
    val_x, val_y = _split_arrays(load_split(str(prepared), "validation"))

    torch.manual_seed(config.seed)
    model = PhantomFeatureNet()
    gen = torch.Generator().manual_seed(config.seed + 7)
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=total, pct_start=0.1)
    positives = torch.from_numpy(train_y).mean(0).clamp(1e-3, 1 - 1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=((1 - positives) / positives).sqrt())
    progress = tqdm(total=total, desc="pretrain phantom features")
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        for s in range(0, len(order), config.batch_size):
            idx = order[s : s + config.batch_size]
            loss = loss_fn(model(_augment(train_x[idx], gen)), torch.from_numpy(train_y[idx.numpy()]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
    progress.close()
    model.load_state_dict({k: v.half().to(v.dtype) for k, v in model.state_dict().items()})  # what ships (fp16) is what is measured
    aucs = label_aucs(test_y, predict(model, test_x))
    model.operating_points = torch.tensor(youden_operating_points(val_y, predict(model, val_x)))
    record = {"config": asdict(config), "train_images": len(train_x), "held_out_images": len(test_x),
              "operating_points_from": f"Youden's J on the {len(val_x)} validation phantoms",
              "held_out_auc": aucs, "cpu_seconds": round(time.process_time() - cpu0, 1),
              "command": f"cxr-diffusion pretrain-features --output-dir {out.name} "
                         + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in asdict(config).items())}
    save_feature_net(model, out, record)
    write_text_atomic(out / "README.md", feature_card(record))
    logger.info("phantom feature network written to %s; held-out AUCs %s", out, aucs)
    return out


def feature_card(record: dict[str, Any]) -> str:
    """The shipped folder's card: what the network is, its held-out AUCs, and what it is not."""
    points = dict(zip(LABELS, record.get("operating_points", [0.5] * len(LABELS))))
    rows = "".join(f"| {name} | {'n/a (one class only)' if auc is None else f'{auc:.3f}'} | {points[name]:.3f} |\n"
                   for name, auc in record["held_out_auc"].items())
    return f"""# phantom-features: the phantom feature network of hf-cxr-diffusion

**Not a medical model.** A {sum(1 for _ in FeatureNetConfig().widths)}-stage CNN trained only on procedurally drawn chest X-ray
*phantoms* (labels from real CheXpert label rows, U-Ones), playing for phantoms the role TorchXRayVision's
DenseNet-121 plays for real radiographs: its pooled {FeatureNetConfig().feature_dim}-d activations are the feature space of FID,
Vendi and memorisation under protocol `{PROTOCOL_ID}`, its 14 heads the classifier of class consistency.
Numbers computed with it describe phantoms and the software, never medical image quality, and are never
comparable with XRV-FID numbers.

Trained on {record['train_images']} phantoms ({record['config']['epochs']} epochs), evaluated on {record['held_out_images']}
held-out phantoms of other patients. A head counts as positive above its operating point
({record.get('operating_points_from', 'default 0.5')}), the role of TorchXRayVision's `op_threshs`.
Rebuilt from seeds by `{record['command']}`.

| label | held-out ROC AUC | operating point |
|---|---:|---:|
{rows}"""
