"""The registry: names, configs with help text, user errors."""

from __future__ import annotations

import dataclasses

import pytest

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods import METHODS, get_method


def test_registry_has_every_method_and_each_field_has_help():
    assert set(METHODS) == {"full", "lora", "dora", "bitfit", "difffit", "selora", "dylora", "adalora"}
    for name, cls in METHODS.items():
        assert cls.name == name
        method = get_method(name)
        for field in dataclasses.fields(method.config):
            assert field.metadata.get("help"), f"{name}.{field.name} has no help text"
        assert type(method.config).from_dict(method.config.to_dict()) == method.config


def test_unknown_method_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown fine-tuning method 'lorra'.*did you mean 'lora'.*--method valid names: adalora, bitfit, difffit, dora, dylora, full, lora, selora"):
        get_method("lorra")


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match=r"unknown option.*'rnak'.*valid.*'rank'"):
        get_method("lora", {"rnak": 4})
    with pytest.raises(UserError, match="non-empty subset"):
        get_method("full", {"components": ["unet", "clip"]})
    with pytest.raises(UserError, match="non-empty subset"):
        get_method("bitfit", {"components": []})
    with pytest.raises(UserError, match="expansion_interval"):
        get_method("selora", {"expansion_interval": 0})


def test_dora_is_lora_with_use_dora():
    assert get_method("dora").config.use_dora and not get_method("lora").config.use_dora


def test_full_param_groups_use_per_component_learning_rates(components):
    method = get_method("full", {"components": ["unet", "vae"], "vae_lr": 1e-5})
    method.apply(components)
    groups = {g["name"]: g for g in method.param_groups(components, 1e-4)}
    assert {k: g["lr"] for k, g in groups.items()} == {"unet": 1e-4, "vae": 1e-5}
    assert sum(p.numel() for p in groups["unet"]["params"]) == sum(p.numel() for p in components.unet.parameters())
    assert not method.trains("text_encoder") and method.trains("vae")


def test_load_adapter_needs_a_method_file(tmp_path):
    from hf_cxr_diffusion.methods import load_adapter

    with pytest.raises(UserError, match="cxr_method.json"):
        load_adapter(object(), tmp_path)
    (tmp_path / "cxr_method.json").write_text('{"method": "magic", "config": {}, "format": "cxr_adapter_safetensors"}')
    with pytest.raises(UserError, match="cxr_adapter.safetensors is missing"):
        load_adapter(object(), tmp_path)
    (tmp_path / "cxr_adapter.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="unknown fine-tuning method 'magic'"):
        load_adapter(object(), tmp_path)
