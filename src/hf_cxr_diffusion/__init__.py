"""hf-cxr-diffusion: fine-tune Stable Diffusion on chest X-rays, make and measure synthetic data.

The notebook API, one function per stage (imported lazily, so ``import hf_cxr_diffusion`` is cheap)::

    import hf_cxr_diffusion as cxr

    cxr.make_tiny_model("tiny-sd")                                    # offline test/demo pipeline
    cxr.make_phantoms("corpus", layout="chexpert", n=200)             # phantom corpus (not medical data)
    cxr.prepare(corpus="chexpert", data_dir="corpus", output_dir="prepared", resolution=512)  # -> Prepared
    cxr.train(cxr.TrainConfig(pretrained_model="tiny-sd", dataset="prepared", output_dir="run", method="lora"))
    cxr.generate("tiny-sd", cxr.load_prompt_plan(dataset="prepared", per_class=8), "synthetic", adapter="run")
    cxr.evaluate_images(real_images, synthetic_images, allow_random_weights=True)
    cxr.run_experiments("prepared", "synthetic", "classify", "baseline,synth-50", labels=["Cardiomegaly"])
    cxr.publish("adapter", "run", "ORG/NAME", license="mit", dry_run=True)
    cxr.load_adapter(pipe, "run")                                      # any method's saved adapter
    cxr.run_study("configs/study/paradigm-phantom.yaml", "study")       # train, sample, score, tabulate
"""

from __future__ import annotations

from hf_cxr_diffusion._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "make_tiny_model": "models.tiny",
    "build_clip_tokenizer": "models.tokenizer",
    "load_pipeline": "models.loading",
    "make_phantoms": "phantoms.corpus",
    "prepare": "data.preparation",
    "prepare_dataset": "data.preparation",
    "PrepareConfig": "data.config",
    "load_dataset_dict": "data.loading",
    "attach_images": "data.attach",
    "TrainConfig": "training.config",
    "train": "training.trainer",
    "get_method": "methods.registry",
    "load_adapter": "methods.loading",
    "generate": "generation.generator",
    "load_prompt_plan": "generation.prompts",
    "evaluate_images": "metrics.api",
    "evaluate_datasets": "metrics.folders",
    "evaluate_folders": "metrics.folders",
    "run_experiments": "downstream.experiments",
    "export": "hub.export",
    "publish": "hub.export",
    "run_demo": "demo",
    "run_study": "study",
    "UserError": "errors",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
