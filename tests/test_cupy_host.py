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


@pytest.mark.parametrize("x,table,layout,name", [
    ("float32", "float32", "half", "rope_apply<float, float, 0>"),
    ("float32", "float64", "interleaved", "rope_apply<float, double, 1>"),
    ("float16", "float64", "deepseek", "rope_apply<rope_half, double, 2>"),
    ("bfloat16", "float32", "half", "rope_apply<rope_bf16, float, 0>"),
    ("float64", None, "half", "rope_apply<double, double, 0>"),
    ("float16", None, "half", "rope_apply<rope_half, float, 0>"),
])
def test_apply_kernel_name_selection(x, table, layout, name):
    from ropeflow._xp import numpy_dtype

    assert _cupy.apply_kernel_name(numpy_dtype(x), layout, table) == name
    assert name in _cupy.name_expressions()


def test_apply_kernel_name_rejects_unsupported():
    with pytest.raises(TypeError, match="^cos.dtype: the cupy rotation kernel reads float32 or float64 tables"):
        _cupy.apply_kernel_name("float32", "half", "float16")
    with pytest.raises(TypeError, match="^x.dtype: "):
        _cupy.apply_kernel_name("int32", "half")
    with pytest.raises(ValueError, match="^layout: unknown layout 'neox'"):
        _cupy.apply_kernel_name("float32", "neox")
    with pytest.raises(TypeError, match="^dtype: no cast kernel from float16 to float32"):
        _cupy.cast_kernel_name("float16", np.float32)


@pytest.mark.parametrize("width,rows,depth,grid,block", [
    (32, 30, 2, (1, 4, 2), (32, 8, 1)),
    (1, 5, 1, (1, 1, 1), (1, 256, 1)),
    (48, 10**9, 1, (1, 65535, 1), (64, 4, 1)),
    (1000, 3, 2, (4, 3, 2), (256, 1, 1)),
    (0, 0, 1, (1, 1, 1), (1, 256, 1)),
])
def test_launch_config_2d(width, rows, depth, grid, block):
    assert _cupy.launch_config_2d(width, rows, depth) == (grid, block)
    assert block[0] * block[1] * block[2] <= 1024 and max(grid[1:]) <= _cupy.MAX_GRID_YZ


def test_compile_options_and_names_are_what_the_module_uses():
    import inspect

    src = inspect.getsource(_cupy.CupyBackend.module)
    assert "options=COMPILE_OPTIONS" in src and "name_expressions=name_expressions()" in src
    assert len(set(_cupy.name_expressions())) == len(_cupy.name_expressions()) == 30


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
