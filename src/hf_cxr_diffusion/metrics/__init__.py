"""Metrics for synthetic chest X-rays: FID, Vendi, class consistency, memorisation, Inception-FID, CLIP score.

Feature metrics are accumulators (:mod:`.base`) fed by one streaming pass of a feature model:
TorchXRayVision's DenseNet-121 under protocol ``xrv-fid-v2`` (default; torchxrayvision's own
preprocessing) or the phantom feature network under ``phantom-fid-v1`` (:mod:`.protocols`).
:func:`evaluate_folders` is the one call the CLI and the demo make.
"""

from hf_cxr_diffusion.metrics.api import EvalOptions, evaluate_features, evaluate_images
from hf_cxr_diffusion.metrics.base import Batch, Context, Metric
from hf_cxr_diffusion.metrics.catalog import METRICS, higher_is_better, metric_class, parse_metrics
from hf_cxr_diffusion.metrics.clip_score import CLIPScorer, clip_score
from hf_cxr_diffusion.metrics.consistency import ClassConsistency, HeadsClassifier, TorchClassifier
from hf_cxr_diffusion.metrics.extractor import FEATURE_MODELS, FeatureModel, load_feature_model
from hf_cxr_diffusion.metrics.features import DEFAULT_WEIGHTS, XRVFeatureExtractor, default_cache_dir, weights_file_name
from hf_cxr_diffusion.metrics.fid import FID, fid_from_features, fid_from_stats, frechet_distance
from hf_cxr_diffusion.metrics.folders import evaluate_datasets, evaluate_folders
from hf_cxr_diffusion.metrics.inception import inception_fid
from hf_cxr_diffusion.metrics.memorisation import Memorisation, memorisation, nearest_training_neighbours
from hf_cxr_diffusion.metrics.memorisation_report import save_pair_grid
from hf_cxr_diffusion.metrics.protocols import PROTOCOL, PROTOCOLS, Protocol, get_protocol, preprocess
from hf_cxr_diffusion.metrics.report import markdown_table, write_report
from hf_cxr_diffusion.metrics.stats import FeatureStats, GramStats
from hf_cxr_diffusion.metrics.vendi import Vendi, vendi_from_eigenvalues, vendi_from_stats, vendi_score

__all__ = [
    "DEFAULT_WEIGHTS", "FEATURE_MODELS", "FID", "METRICS", "PROTOCOL", "PROTOCOLS", "Batch", "CLIPScorer",
    "ClassConsistency", "Context", "EvalOptions", "FeatureModel", "FeatureStats", "GramStats", "HeadsClassifier",
    "Memorisation", "Metric", "Protocol", "TorchClassifier", "Vendi", "XRVFeatureExtractor", "clip_score",
    "default_cache_dir", "evaluate_datasets", "evaluate_features", "evaluate_folders", "evaluate_images",
    "fid_from_features", "fid_from_stats", "frechet_distance", "get_protocol", "higher_is_better", "inception_fid",
    "load_feature_model", "markdown_table", "memorisation", "metric_class", "nearest_training_neighbours",
    "parse_metrics", "preprocess", "save_pair_grid", "vendi_from_eigenvalues", "vendi_from_stats", "vendi_score",
    "weights_file_name", "write_report",
]
