"""Build hook: copy the shipped top-level folders into the wheel (they stay the one source of truth).

``hf_cxr_diffusion.resources.SHIPPED`` names them; ``build_py`` copies each into
``hf_cxr_diffusion/_shipped/<name>/`` of the build (symlinks followed, caches left out), where
``hf_cxr_diffusion.resources.resource_dir`` finds them in an installed wheel. Everything else is in
``pyproject.toml``.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_resources", ROOT / "src" / "hf_cxr_diffusion" / "resources.py")
resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resources)


class BuildWithShippedFolders(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "hf_cxr_diffusion" / resources.PACKAGED_DIR
        for name in resources.SHIPPED:
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithShippedFolders})
