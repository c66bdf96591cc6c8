"""Host-side logic of the cupy backend, testable without a GPU: kernel-name selection, launch
configuration, and the errors users see when CuPy or a GPU is missing."""

from __future__ import annotations

import builtins
import importlib
import sys

import numpy as np
import pytest

import ropeflow
from ropeflow import BackendUnavailableError
from ropeflow.backends import _cupy


@pytest.mark.parametrize("freq,out,name", [
    ("float32", "float32", "rope_table_ref"),
    ("float64", "float32", "rope_table_exact<float>"),
    ("float64", "float64", "rope_table_exact<double>"),
])
def test_kernel_name_selection(freq, out, name):
    assert _cupy.kernel_name(np.dtype(freq), np.dtype(out)) == name
    assert name == "rope_table_ref" or name in _cupy.name_expressions()


@pytest.mark.parametrize("freq,out", [("float32", "float64"), ("float64", "float16"), ("float16", "float16")])
def test_kernel_name_rejects_unsupported_dtypes(freq, out):
    with pytest.raises(TypeError, match="dtype: "):
        _cupy.kernel_name(np.dtype(freq), np.dtype(out))


@pytest.mark.parametrize("items,blocks", [(0, 1), (1, 1), (256, 1), (257, 2), (163840 * 32, 20480),
                                          (10**10, 65535 * 8)])
def test_launch_config(items, blocks):
    grid, block = _cupy.launch_config(items)
    assert block == (256,) and grid == (blocks,)
    assert grid[0] * block[0] >= min(items, 65535 * 8 * 256)  # the grid-stride loop covers the rest


def test_launch_config_rejects_negative():
    with pytest.raises(ValueError, match="work_items"):
        _cupy.launch_config(-1)


def test_cupy_missing_says_which_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(BackendUnavailableError, match=r"CuPy is not installed; pip install 'ropeflow\[cuda12\]'"):
        _cupy.make_backend()


def test_cupy_without_gpu_is_a_clear_error():
    pytest.importorskip("cupy")
    if "cupy" in ropeflow.available_backends():
        pytest.skip("a GPU is usable here")
    with pytest.raises(BackendUnavailableError, match="no usable CUDA GPU or driver"):
        _cupy.make_backend()
    assert "cupy" not in ropeflow.available_backends()


def test_numpy_input_to_cupy_backend_and_back(monkeypatch):
    """Mixing array libraries is a TypeError that says how to move the array."""
    from ropeflow import backends

    class FakeGpu:
        name, is_host = "cupy", False

    monkeypatch.setitem(backends._instances, "cupy", FakeGpu())
    rope = ropeflow.RotaryEmbedding(8, backend="cupy")
    with pytest.raises(TypeError, match=r"cupy.asarray\(x\)"):
        rope(np.zeros((2, 8), np.float32))


def test_import_ropeflow_is_lazy():
    code = ("import sys, ropeflow; bad = [m for m in ('numba', 'cupy', 'torch', 'matplotlib') "
            "if m in sys.modules]; assert not bad, bad")
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_module_reload_is_harmless():
    importlib.reload(_cupy)
    assert _cupy.kernel_name("float32", "float32") == "rope_table_ref"
