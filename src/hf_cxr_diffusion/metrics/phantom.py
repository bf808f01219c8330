"""The phantom feature network (:mod:`hf_cxr_diffusion.phantoms.features`) as a feature model.

Plays, for phantom radiographs, the roles TorchXRayVision's DenseNet plays for real chest X-rays:
pooled features for FID / Vendi / memorisation and 14 CheXpert heads for class consistency.
Every number carries protocol ``phantom-fid-v1`` and ``feature_model: phantom``; it says nothing
about medical image quality.
"""

from __future__ import annotations

import os

import torch

from hf_cxr_diffusion.metrics.extractor import FeatureModel
from hf_cxr_diffusion.metrics.protocols import PHANTOM_V1, Protocol


class PhantomFeatureExtractor(FeatureModel):
    """Features and label probabilities of the phantom feature network."""

    name = "phantom"

    def __init__(
        self,
        weights_dir: str | os.PathLike | None = None,
        *,
        allow_random_weights: bool = False,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        protocol: Protocol = PHANTOM_V1,
    ) -> None:
        from hf_cxr_diffusion.phantoms.features import LABELS, load_feature_net

        net, provenance = load_feature_net(weights_dir, allow_random_weights=allow_random_weights)
        super().__init__(net, protocol, device=device, batch_size=batch_size)
        self.feature_dim = net.config.feature_dim
        self.labels = list(LABELS)
        self.weights, self.weights_sha256 = provenance["weights"], provenance["sha256"]
        self.random_weights = bool(provenance["random_weights"])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def _probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the heads, normalised at the network's per-label operating points (0.5 = the operating point)."""
        import torchxrayvision as xrv

        out = torch.sigmoid(self.model.head(features))
        return xrv.models.op_norm(out, self.model.operating_points.to(out.device))
