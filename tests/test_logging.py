"""Quiet, honest logs: each warning printed once; a third-party warning filtered only where known harmless."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from diffusers import DiffusionPipeline

from hf_cxr_diffusion.methods.loading import load_adapter

NO_TE_KEYS = "No LoRA keys associated to CLIPTextModel"


def test_library_warnings_print_once_under_the_cli_logging(tmp_path):
    """huggingface_hub and datasets have their own stderr handler and propagate: each record used to print twice."""
    code = textwrap.dedent("""
        import logging
        from hf_cxr_diffusion.cli import configure_logging
        configure_logging(0)
        import datasets, huggingface_hub
        datasets.utils.logging.get_logger("datasets.builder").warning("datasets says once")
        huggingface_hub.utils.logging.get_logger("huggingface_hub.file_download").warning("hub says once")
        logging.getLogger("hf_cxr_diffusion.training").warning("we say once")
        logging.getLogger("hf_cxr_diffusion.training").info("and inform once")
    """)
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stderr
    for message in ("datasets says once", "hub says once", "we say once", "and inform once"):
        assert err.count(message) == 1, err


def test_the_text_encoder_lora_warning_is_dropped_only_for_unet_only_files(lora_run, tiny_model_dir, caplog):
    plain = DiffusionPipeline.from_pretrained(str(tiny_model_dir))
    plain.load_lora_weights(str(lora_run.output_dir))
    assert NO_TE_KEYS in caplog.text  # diffusers' own call warns for a U-Net-only LoRA
    caplog.clear()
    load_adapter(DiffusionPipeline.from_pretrained(str(tiny_model_dir)), lora_run.output_dir)
    assert NO_TE_KEYS not in caplog.text
