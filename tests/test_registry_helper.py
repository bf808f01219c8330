"""The lazy registry helper: nothing imported until an entry is used; unknown names are UserErrors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.registry import Registry


def _registry() -> Registry:
    return Registry(
        "codec",
        {"json": "json:dumps", "json-decoder": ".decoder:JSONDecoder", "gzip": "gzip:compress"},
        package="json",
        option="--codec",
        normalize=lambda n: n.strip().lower(),
    )


def test_entries_load_on_first_use_and_relative_paths_use_the_package():
    import json
    import json.decoder

    reg = _registry()
    assert list(reg) == ["json", "json-decoder", "gzip"] and len(reg) == 3
    assert reg[" JSON "] is json.dumps
    assert reg["json-decoder"] is json.decoder.JSONDecoder  # ".decoder" is relative to package "json"
    assert "Gzip" in reg and "zip" not in reg and 3 not in reg


def test_unknown_name_lists_the_valid_ones_and_suggests_the_closest():
    with pytest.raises(UserError, match=r"^unknown codec 'jsn' \(did you mean 'json'\?\); --codec valid names: gzip, json, json-decoder$"):
        _registry()["jsn"]
    with pytest.raises(UserError, match=r"^unknown codec 'zzzz'; --codec valid names: gzip, json, json-decoder$"):
        _registry()["zzzz"]


def test_malformed_entry_is_rejected_at_definition():
    with pytest.raises(ValueError, match="not 'module:Attr'"):
        Registry("codec", {"json": "json.dumps"})


def test_listing_method_names_imports_no_method_module():
    code = (
        "import sys\n"
        "from hf_cxr_diffusion.methods.registry import METHODS\n"
        "names = sorted(METHODS)\n"
        "loaded = [m for m in sys.modules if m.startswith('hf_cxr_diffusion.methods.') and m.rsplit('.', 1)[1] in names]\n"
        "print(names, loaded)\n"
        "assert loaded == [], loaded\n"
        "assert METHODS['bitfit'].name == 'bitfit' and 'hf_cxr_diffusion.methods.bitfit' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
