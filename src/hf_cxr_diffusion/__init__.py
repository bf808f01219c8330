"""hf-cxr-diffusion: fine-tune Stable Diffusion on chest X-rays, make and measure synthetic data."""

from __future__ import annotations

__version__ = "0.1.0"
