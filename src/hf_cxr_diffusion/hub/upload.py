"""Upload a validated export with ``huggingface_hub``: checks first, so no work is lost on failure.

The export stays on disk whatever happens here; every error names it and the command that
uploads it once the problem is fixed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub.files import list_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadResult:
    repo_id: str
    repo_type: str
    private: bool
    url: str
    files: tuple[str, ...]


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _retry_hint(export_dir: Path, repo_id: str, repo_type: str) -> str:
    command = f"hf upload {repo_id} {export_dir} --repo-type {repo_type}"
    return f"the export is kept at {export_dir}; upload it later with `{command}`"


def check_can_upload(export_dir: Path, repo_id: str, repo_type: str, token: str | None = None) -> str:
    """Return the token to use; raise :class:`UserError` when offline or not logged in."""
    from huggingface_hub import get_token

    hint = _retry_hint(export_dir, repo_id, repo_type)
    if _offline():
        raise UserError(f"HF_HUB_OFFLINE is set, so nothing can be uploaded; {hint}")
    token = token or get_token()
    if not token:
        raise UserError(f"no Hugging Face token: run `hf auth login` or set HF_TOKEN (write access); {hint}")
    return token


def upload_export(export_dir: Path, repo_id: str, repo_type: str, *, private: bool = True, revision: str | None = None,
                  create_pr: bool = False, token: str | None = None, space_sdk: str | None = None,
                  commit_message: str | None = None) -> UploadResult:
    """``create_repo`` (private unless asked otherwise) then ``upload_folder`` of exactly the export."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = check_can_upload(export_dir, repo_id, repo_type, token)
    api = HfApi(token=token)
    hint = _retry_hint(export_dir, repo_id, repo_type)
    try:
        repo_url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
        if private and not api.repo_info(repo_id, repo_type=repo_type).private:
            raise UserError(f"{repo_id} already exists and is PUBLIC; refusing to upload a private export; {hint}")
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(export_dir), repo_type=repo_type, revision=revision, create_pr=create_pr,
            commit_message=commit_message or "Upload with hf-cxr-diffusion publish",
        )
    except HfHubHTTPError as err:
        raise UserError(f"the Hub refused the upload to {repo_id}: {err}; {hint}") from err
    except (OSError, HfHubHTTPError.__mro__[1]) as err:  # the HTTP client's base error: connection, DNS, timeout
        raise UserError(f"cannot reach the Hub ({type(err).__name__}: {err}); {hint}") from err
    url = getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None) or str(repo_url)
    logger.info("uploaded %s to %s (%s, %s)", export_dir, repo_id, repo_type, "private" if private else "public")
    return UploadResult(repo_id, repo_type, private, str(url), tuple(list_files(export_dir)))
