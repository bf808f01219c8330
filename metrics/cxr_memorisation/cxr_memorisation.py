"""CXR memorisation: nearest-training-neighbour similarity of generated chest X-rays (xrv features)."""

import evaluate

from .cxr_core import ImageInputsMixin
from .cxr_core import compute_metric
from .cxr_core import metric_info

_DESCRIPTION = """\
For every generated image, the highest cosine similarity of its TorchXRayVision DenseNet-121 features
(protocol `xrv-fid-v2`, centred on the training mean) to any training image's; reports the fraction
above a threshold (likely copies of a training patient's image) and the closest pairs. Synthetic
medical data that reproduces training images leaks patient data (Carlini et al., 2023;
Packhäuser et al., 2022). Lower fractions are better.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images (PIL, numpy 8/16-bit, file paths) or precomputed feature vectors.
    references: the TRAINING images of the generator (same kinds).
    threshold (float): similarity above which an image is flagged; default 0.95 (fixed) unless `held_out` is given.
    held_out: real images NOT in the training set (same kinds); the threshold is then calibrated as the
        `percentile` (99) of their own nearest-training-neighbour similarities, recorded in the result.
    top_k (int): closest pairs listed; default 8.
    weights, weights_path, allow_random_weights, device, batch_size: as for xrv_fid.
Returns:
    fraction_above_threshold (float), n_flagged (int), max_similarity (list, one per generated image),
    top_pairs (list of {synthetic_index, training_index, similarity}), threshold, n_synthetic,
    n_training, protocol, and random_weights (True) when the network was random.
Examples:
    >>> import evaluate
    >>> mem = evaluate.load("/path/to/metrics/cxr_memorisation")
    >>> mem.compute(predictions=generated, references=training_images, allow_random_weights=True)  # doctest: +SKIP
"""

_CITATION = """\
@inproceedings{carlini2023extracting,
  title={Extracting Training Data from Diffusion Models},
  author={Carlini, Nicholas and Hayes, Jamie and Nasr, Milad and Jagielski, Matthew and Sehwag, Vikash and
          Tram{\\`e}r, Florian and Balle, Borja and Ippolito, Daphne and Wallace, Eric},
  booktitle={USENIX Security}, year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CxrMemorisation(ImageInputsMixin, evaluate.Metric):
    def _info(self):
        urls = ["https://arxiv.org/abs/2301.13188"]
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["predictions", "references"], urls)

    def _compute(self, predictions, references, threshold=None, top_k=8, held_out=None, **kwargs):
        if threshold is None and held_out is None:
            threshold = 0.95
        options = {"memorisation_threshold": threshold, "top_k": top_k}
        return compute_metric("memorisation", predictions, references, options, held_out=held_out, **kwargs)
