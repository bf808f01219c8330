"""Hub publishing: build a validated Hub-ready folder per kind, guard the data, upload it.

``export(kind, src, export_dir, repo_id=..., license=...)`` builds the folder;
``publish(kind, src, repo_id, license=...)`` builds it and uploads it with ``huggingface_hub``.
"""

from __future__ import annotations

from hf_cxr_diffusion.hub.export import REPO_TYPES, PublishResult, export, publish

__all__ = ["REPO_TYPES", "PublishResult", "export", "publish"]
