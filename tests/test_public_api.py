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
