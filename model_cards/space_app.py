"""Gradio Space: synthetic chest X-rays from a fine-tuned Stable Diffusion adapter. NOT FOR DIAGNOSIS.

Exported as ``app.py`` of a Space by ``cxr-diffusion publish space`` (``space_config.json`` beside it names
the base model, the adapter repo, the findings and the prompt template). Only ``gradio`` (the Space SDK),
``torch`` and ``diffusers`` are needed for LoRA adapters; :func:`generate` works without ``gradio``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CONFIG_FILE = "space_config.json"
CONFIG: dict[str, Any] = json.loads((Path(__file__).with_name(CONFIG_FILE)).read_text(encoding="utf-8"))


def load_pipeline(base: str | None = None, adapter: str | None = None) -> Any:
    """The base pipeline with the adapter applied (fp16 on CUDA, fp32 on CPU)."""
    import torch
    from diffusers import DiffusionPipeline

    base, adapter = base or CONFIG["base_model"], adapter or CONFIG["adapter"]
    cuda = torch.cuda.is_available()
    pipe = DiffusionPipeline.from_pretrained(base, dtype=torch.float16 if cuda else torch.float32, safety_checker=None)
    if CONFIG["loader"] == "load_lora_weights":
        pipe.load_lora_weights(adapter)
    else:  # DoRA / BitFit / DiffFit: hf-cxr-diffusion's loader (requirements.txt installs it)
        from hf_cxr_diffusion import load_adapter
        from huggingface_hub import snapshot_download

        load_adapter(pipe, adapter if Path(adapter).is_dir() else snapshot_download(adapter))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda" if cuda else "cpu")


@lru_cache(maxsize=1)
def _default_pipeline() -> Any:
    return load_pipeline()


def prompt_for(findings: list[str]) -> str:
    """The training prompt for the picked findings (``no finding`` when none is picked)."""
    return CONFIG["prompt_template"].format(findings=", ".join(findings) if findings else CONFIG["no_finding"])


def generate(findings: list[str], seed: int = 0, steps: int = 25, guidance: float = 4.0, pipe: Any = None) -> Any:
    """One synthetic image (PIL) for ``findings``; the same seed gives the same image."""
    import torch

    pipe = pipe if pipe is not None else _default_pipeline()
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return pipe(prompt_for(list(findings)), num_inference_steps=int(steps), guidance_scale=float(guidance),
                generator=generator).images[0]


def demo() -> Any:
    import gradio as gr

    return gr.Interface(
        fn=lambda findings, seed, steps: generate(findings, seed, steps),
        inputs=[gr.CheckboxGroup(CONFIG["findings"], label="findings"), gr.Number(0, label="seed", precision=0),
                gr.Slider(1, 100, value=25, step=1, label="denoising steps")],
        outputs=gr.Image(type="pil", label="synthetic chest X-ray (not a real patient, not for diagnosis)"),
        title=CONFIG["title"],
        description=CONFIG["disclaimer"],
    )


if __name__ == "__main__":
    demo().launch()
