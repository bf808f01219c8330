"""XRV-FID: Fréchet distance of TorchXRayVision DenseNet-121 features (protocol xrv-fid-v2)."""

import evaluate

from .cxr_core import ImageInputsMixin
from .cxr_core import compute_metric
from .cxr_core import metric_info

_DESCRIPTION = """\
Fréchet distance (Heusel et al., 2017) between Gaussians fitted to the 1024-d pooled features of the
TorchXRayVision DenseNet-121 (`densenet121-res224-all` by default) of generated and real chest X-rays,
under the documented, versioned preprocessing protocol `xrv-fid-v2` (grayscale, bit-depth scaling to
[-1024, 1024], centre crop, 224 px bilinear-antialias resize). Exact to pytorch-fid's
`calculate_frechet_distance`; streaming float64 statistics. Lower is better.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images (PIL, numpy H x W / H x W x C 8- or 16-bit, file paths) or
        precomputed 1024-d feature vectors.
    references: real images (same kinds); the counts may differ from `predictions`.
    weights (str): xrv DenseNet weights name, default "densenet121-res224-all".
    weights_path (str): the weights file or its folder; default ~/.torchxrayvision/models_data/.
    allow_random_weights (bool): use a random DenseNet when the weights are missing; the result
        then carries "random_weights": True. Default False (a missing file is an error).
    device (str), batch_size (int): where and how many images per forward pass.
Returns:
    xrv_fid (float), n_real (int), n_synthetic (int), protocol (str), weights (str),
    and random_weights (True) when the network was random.
Examples:
    >>> import evaluate
    >>> fid = evaluate.load("/path/to/metrics/xrv_fid")
    >>> fid.compute(predictions=generated, references=real, allow_random_weights=True)  # doctest: +SKIP
    {'xrv_fid': ..., 'n_real': 100, 'n_synthetic': 100, 'protocol': 'xrv-fid-v2', ...}
"""

_CITATION = """\
@inproceedings{heusel2017gans,
  title={GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium},
  author={Heusel, Martin and Ramsauer, Hubert and Unterthiner, Thomas and Nessler, Bernhard and Hochreiter, Sepp},
  booktitle={NeurIPS}, year={2017}
}
@inproceedings{cohen2022torchxrayvision,
  title={TorchXRayVision: A library of chest X-ray datasets and models},
  author={Cohen, Joseph Paul and Viviano, Joseph D. and Bertin, Paul and Morrison, Paul and Torabian, Parsa and
          Guarrera, Matteo and Lungren, Matthew P and Chaudhari, Akshay and Brooks, Rupert and Hashir, Mohammad and Bertrand, Hadrien},
  booktitle={Medical Imaging with Deep Learning}, year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class XrvFid(ImageInputsMixin, evaluate.Metric):
    def _info(self):
        urls = ["https://github.com/mlmed/torchxrayvision", "https://github.com/mseitzer/pytorch-fid"]
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["predictions", "references"], urls)

    def _compute(self, predictions, references, **kwargs):
        fid = compute_metric("xrv_fid", predictions, references, **kwargs)
        return {"xrv_fid": fid.pop("score"), **fid}
