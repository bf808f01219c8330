import subprocess
import sys

import hf_cxr_diffusion


def test_every_public_name_resolves():
    for name in hf_cxr_diffusion.__all__:
        assert getattr(hf_cxr_diffusion, name) is not None, name
    assert callable(hf_cxr_diffusion.load_adapter) and callable(hf_cxr_diffusion.train)


def test_import_is_light():
    code = "import sys, hf_cxr_diffusion, hf_cxr_diffusion.cli; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_no_lazy_export_is_shadowed_by_a_submodule() -> None:
    """A lazily exported name equal to a submodule's name would become that module once the submodule is
    imported (``from hf_cxr_diffusion.data import prepare`` gave the module while data/prepare.py existed)."""
    import importlib
    import pkgutil

    for package in ("hf_cxr_diffusion", "hf_cxr_diffusion.data", "hf_cxr_diffusion.training", "hf_cxr_diffusion.phantoms",
                    "hf_cxr_diffusion.downstream"):
        module = importlib.import_module(package)
        submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
        assert not submodules & set(module.__all__), (package, submodules & set(module.__all__))
    from hf_cxr_diffusion.data import prepare
    import hf_cxr_diffusion.data.preparation  # noqa: F401  (importing the submodule changes nothing)
    from hf_cxr_diffusion.data import prepare as again

    assert callable(prepare) and again is prepare
