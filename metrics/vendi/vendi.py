"""Vendi score of order q on TorchXRayVision DenseNet-121 features (protocol xrv-fid-v2)."""

import evaluate

from .cxr_core import ImageInputsMixin
from .cxr_core import compute_metric
from .cxr_core import metric_info

_DESCRIPTION = """\
Vendi score (Friedman & Dieng, 2023): the exponential of the order-q Rényi entropy of the eigenvalues
of the cosine similarity matrix K/n of the generated images' 1024-d TorchXRayVision DenseNet-121
features (protocol `xrv-fid-v2`). Computed through the d x d dual X^T X / n, so 25,000+ images cost one
1024 x 1024 eigensolve. Ranges from 1 (all images identical) to n; higher is more diverse. It grows
with n: compare scores at the same number of images.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images (PIL, numpy H x W / H x W x C 8- or 16-bit, file paths) or
        precomputed feature vectors.
    q (float): order of the entropy, > 0 or float("inf"); default 1 (Shannon).
    weights, weights_path, allow_random_weights, device, batch_size: as for xrv_fid.
Returns:
    vendi (float), n_synthetic (int), q (float), kernel ("cosine"), protocol (str), and
    random_weights (True) when the network was random.
Examples:
    >>> import evaluate
    >>> vendi = evaluate.load("/path/to/metrics/vendi")
    >>> vendi.compute(predictions=generated, q=1.0, allow_random_weights=True)  # doctest: +SKIP
    {'vendi': ..., 'n_synthetic': 100, 'q': 1.0, 'kernel': 'cosine', 'protocol': 'xrv-fid-v2', ...}
"""

_CITATION = """\
@article{friedman2023vendi,
  title={The Vendi Score: A Diversity Evaluation Metric for Machine Learning},
  author={Friedman, Dan and Dieng, Adji Bousso},
  journal={Transactions on Machine Learning Research}, year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Vendi(ImageInputsMixin, evaluate.Metric):
    def _info(self):
        urls = ["https://arxiv.org/abs/2210.02410", "https://github.com/mlmed/torchxrayvision"]
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["predictions"], urls)

    def _compute(self, predictions, q=1.0, **kwargs):
        score = compute_metric("vendi", predictions, None, {"vendi_q": q}, **kwargs)
        keep = ("n_synthetic", "q", "kernel", "protocol", "weights", "random_weights")
        return {"vendi": score["score"], **{k: score[k] for k in keep if k in score}}
