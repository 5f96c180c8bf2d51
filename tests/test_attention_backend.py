import sys
import types

import pytest
import torch_brain.nn.rotary_attention as rotary_attention

from neurobridge.models import attention_backend, set_attention_backend


@pytest.fixture
def restore_backend():
    saved = rotary_attention.xops
    yield
    rotary_attention.xops = saved


def test_sdpa_backend_hides_xformers_from_torch_brain(monkeypatch, restore_backend):
    fake = types.ModuleType("xformers.ops")
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", fake)
    set_attention_backend("auto")  # torch_brain's own choice: xformers when importable
    assert rotary_attention.xops is fake and attention_backend() == "auto"
    set_attention_backend("sdpa")
    assert rotary_attention.xops is None and attention_backend() == "sdpa"


def test_auto_without_xformers_is_sdpa(monkeypatch, restore_backend):
    monkeypatch.setitem(sys.modules, "xformers.ops", None)  # import fails
    set_attention_backend("auto")
    assert attention_backend() == "sdpa"


def test_unknown_backend_lists_the_choices(restore_backend):
    with pytest.raises(ValueError, match=r"one of \['sdpa', 'auto'\].*'flash'"):
        set_attention_backend("flash")
