"""Meta-tests that stop the registry, the adapters, the tiny-model table and the public API from drifting apart."""

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import vtc
import vtc.adapters
from vtc.adapters.base import Adapter
from vtc.registry import _REGISTRY, get_adapter, get_adapter_class, register_adapter
from vtc.testing import TINY_FAMILIES, build_tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"


def adapter_modules():
    return [m.name for m in pkgutil.iter_modules(vtc.adapters.__path__) if not m.name.startswith("_") and m.name != "base"]


def test_every_adapter_module_registers_something():
    vtc.supported_models()
    registered_modules = {cls.__module__.rsplit(".", 1)[-1] for cls in _REGISTRY.values()}
    for name in adapter_modules():
        assert name in registered_modules, f"adapters/{name}.py registers no adapter"


def test_every_registered_model_type_has_a_tiny_model():
    assert set(vtc.supported_models()) == set(TINY_FAMILIES)


@pytest.mark.parametrize("model_type", sorted(TINY_FAMILIES))
def test_every_adapter_implements_the_protocol(model_type):
    model = build_tiny_model(model_type)
    adapter = get_adapter(model)
    assert isinstance(adapter, Adapter) and model_type in type(adapter).model_types
    assert len(adapter.decoder_layers) == adapter.text_config.num_hidden_layers
    assert adapter.rotary_embedding is not None
    assert isinstance(adapter.image_token_id, int)
    assert adapter.projector is not None and len(adapter.projector_window) == 2
    assert isinstance(adapter.vision_has_cls, bool)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("llava")(type("Again", (Adapter,), {}))
    with pytest.raises(ValueError, match="lower-case"):
        register_adapter("Llava2")(type("Upper", (Adapter,), {}))


def test_third_party_registration_uses_the_same_decorator():
    try:
        @vtc.register_adapter("my_test_vlm")
        class MyAdapter(Adapter):
            pass

        assert get_adapter_class("my_test_vlm") is MyAdapter
        assert "my_test_vlm" in vtc.supported_models()
        assert MyAdapter.model_types == ("my_test_vlm",)
    finally:
        _REGISTRY.pop("my_test_vlm", None)


def test_subclass_does_not_inherit_parent_model_types():
    for model_type, cls in _REGISTRY.items():
        assert model_type in cls.model_types
        assert all(_REGISTRY.get(t) is cls for t in cls.model_types)


def test_public_all_equals_the_documented_api():
    documented = re.search(r"<!-- public-api -->(.*?)<!-- /public-api -->", README.read_text(), re.S).group(1)
    names = set(re.findall(r"`vtc\.(\w+)", documented))
    assert names == set(vtc.__all__)
    assert list(vtc.__all__) == sorted(vtc.__all__)
    for name in vtc.__all__:
        assert hasattr(vtc, name)


def test_import_vtc_does_not_import_the_adapters():
    code = "import sys, vtc; print('vtc.adapters' in sys.modules)"
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_core_never_names_a_model_family():
    core = Path(vtc.__file__).parent
    families = re.compile(r"llava|internvl|qwen|siglip|clip(?!_grad)", re.I)  # not torch's clip_grad_norm_
    offenders = [
        f"{path.relative_to(core)}:{i}"
        for path in core.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if families.search(line)
    ]
    assert offenders == []


def test_adapter_modules_import_cleanly():
    for name in adapter_modules():
        importlib.import_module(f"vtc.adapters.{name}")


def test_the_readme_lists_each_family_s_pruning_methods():
    """The supported-models table's baseline column names exactly the methods each adapter accepts before the
    language model (the in-decoder ones work on every family)."""
    table = README.read_text().split("## Supported models", 1)[1].split("\n\n")[1]
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    column = header.index("baselines before the LLM")
    listed = {row[0].strip("`"): set(re.findall(r"`(\w+)`", row[column])) for row in rows}
    assert listed == {t: set(get_adapter_class(t).prune_methods) for t in vtc.supported_models()}
