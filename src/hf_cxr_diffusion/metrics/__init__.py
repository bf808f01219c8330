"""Metrics for synthetic chest X-rays: XRV-FID, Vendi, class consistency, memorisation, Inception-FID, CLIP score.

All scores are computed on TorchXRayVision DenseNet-121 features under the versioned
preprocessing protocol ``xrv-fid-v1`` (see :mod:`.features`) with streaming float64 statistics.
The ``evaluate`` modules in ``metrics/xrv_fid`` and ``metrics/vendi`` are thin wrappers.
"""

from hf_cxr_diffusion.metrics.api import METRICS, evaluate_datasets, evaluate_features, evaluate_images, parse_metrics
from hf_cxr_diffusion.metrics.clip_score import CLIPScorer, clip_score
from hf_cxr_diffusion.metrics.consistency import ConsistencyCounter
from hf_cxr_diffusion.metrics.features import (
    DEFAULT_WEIGHTS,
    PROTOCOL,
    Protocol,
    XRVFeatureExtractor,
    default_cache_dir,
    preprocess,
    weights_file_name,
)
from hf_cxr_diffusion.metrics.fid import fid_from_features, fid_from_stats, frechet_distance
from hf_cxr_diffusion.metrics.inception import inception_fid
from hf_cxr_diffusion.metrics.memorisation import memorisation, nearest_training_neighbours, save_pair_grid
from hf_cxr_diffusion.metrics.report import markdown_table, write_report
from hf_cxr_diffusion.metrics.stats import FeatureStats
from hf_cxr_diffusion.metrics.vendi import vendi_from_eigenvalues, vendi_from_stats, vendi_score

__all__ = [
    "DEFAULT_WEIGHTS",
    "METRICS",
    "PROTOCOL",
    "CLIPScorer",
    "ConsistencyCounter",
    "FeatureStats",
    "Protocol",
    "XRVFeatureExtractor",
    "clip_score",
    "default_cache_dir",
    "evaluate_datasets",
    "evaluate_features",
    "evaluate_images",
    "fid_from_features",
    "fid_from_stats",
    "frechet_distance",
    "inception_fid",
    "markdown_table",
    "memorisation",
    "nearest_training_neighbours",
    "parse_metrics",
    "preprocess",
    "save_pair_grid",
    "vendi_from_eigenvalues",
    "vendi_from_stats",
    "vendi_score",
    "weights_file_name",
    "write_report",
]
