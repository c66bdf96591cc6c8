"""The array-API shim: namespaces, devices and dtypes, over array-api-compat.

Nothing else in the front end imports an array library for the *caller's* arrays; it asks this module.
Supported caller arrays are NumPy arrays (host backends) and CuPy arrays (the ``cupy`` backend).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import array_api_compat
import numpy as np

#: The output dtypes ropeflow builds or casts tables to.
SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64")


def namespace(x: Any, name: str = "x") -> Any:
    """The array-API namespace of ``x`` (NumPy or CuPy), or a ``TypeError`` naming ``name`` and what is allowed."""
    if type(x) is np.ndarray:  # the hot path: no lookups beyond this
        return _numpy_namespace or numpy_namespace()
    if not (is_numpy(x) or is_cupy(x)):
        hint = ""
        if type(x).__module__.startswith("torch"):
            hint = " (for a torch.Tensor pass x.detach().cpu().numpy(), or a CuPy array via cupy.from_dlpack)"
        raise TypeError(
            f"{name}: expected a NumPy or CuPy array, got {type(x).__module__}.{type(x).__name__}{hint}"
        )
    return array_api_compat.array_namespace(x)


def array_module(x: Any) -> Any:
    """The array library's own module for a NumPy or CuPy array (``numpy`` or ``cupy``): the front end's hot
    path uses the handful of functions both spell alike, without the array-API wrappers."""
    return np if isinstance(x, np.ndarray) else cupy_module()


def cupy_module() -> Any:
    """The ``cupy`` module (only called for CuPy arrays, so it is already imported)."""
    return sys.modules["cupy"]


_numpy_namespace = None


def numpy_namespace() -> Any:
    """array-api-compat's NumPy namespace, imported on first use (it costs ~0.2 s: not at ``import ropeflow``)."""
    global _numpy_namespace
    if _numpy_namespace is None:
        import array_api_compat.numpy as xp

        _numpy_namespace = xp
    return _numpy_namespace


def is_numpy(x: Any) -> bool:
    """True for a NumPy ndarray (bfloat16 arrays from ml_dtypes included)."""
    return isinstance(x, np.ndarray)


def is_cupy(x: Any) -> bool:
    """True for a CuPy ndarray; never imports CuPy."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(x, cupy.ndarray)


def device_key(x: Any) -> int | str:
    """A hashable key of the device that holds ``x``: ``"cpu"`` or the CUDA device ordinal."""
    if is_cupy(x):
        return int(x.device.id)
    return "cpu"


def device_scope(x: Any) -> Any:
    """A context manager making ``x``'s device current (CuPy allocates on the current device), a no-op for
    NumPy arrays."""
    if type(x) is np.ndarray or not is_cupy(x):
        return _NO_SCOPE
    return x.device


_NO_SCOPE = contextlib.nullcontext()


def bfloat16_dtype() -> np.dtype:
    """NumPy's bfloat16 dtype from ``ml_dtypes``, or a ``TypeError`` saying how to get it."""
    try:
        import ml_dtypes
    except ImportError as exc:
        raise TypeError(
            "dtype: 'bfloat16' needs the ml_dtypes package (pip install 'ropeflow[bfloat16]')"
        ) from exc
    return np.dtype(ml_dtypes.bfloat16)


_dtype_names: dict[Any, str] = {}


def dtype_name(dtype: Any, parameter: str = "dtype") -> str:
    """Canonical name (one of ``SUPPORTED_DTYPES``) of a dtype given as a string or dtype object."""
    try:
        return _dtype_names[dtype]
    except (KeyError, TypeError):
        pass
    name = None
    if dtype is None:  # np.dtype(None) is float64: a silent choice, not the caller's
        raise TypeError(f"{parameter}: expected a dtype, got None; allowed: {', '.join(SUPPORTED_DTYPES)}")
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except Exception:  # noqa: BLE001 - NumPy raises TypeError, ValueError or SyntaxError (b",") on odd specs
            name = str(dtype)
    name = name.removeprefix("numpy.").removeprefix("torch.")
    aliases = {"half": "float16", "float": "float32", "double": "float64", "single": "float32"}
    name = aliases.get(name, name)
    if name not in SUPPORTED_DTYPES:
        raise TypeError(f"{parameter}: unsupported dtype {dtype!r}; allowed: {', '.join(SUPPORTED_DTYPES)}")
    try:
        _dtype_names[dtype] = name
    except TypeError:  # unhashable dtype spec
        pass
    return name


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a canonical name (bfloat16 through ml_dtypes)."""
    if name == "bfloat16":
        return bfloat16_dtype()
    return np.dtype(name)


def overlaps_itself(a: Any) -> bool:
    """Whether two elements of NumPy or CuPy array ``a`` may share memory (a broadcast or expanded view with a
    zero stride, or ``as_strided`` rows that overlap). Contiguous arrays never do; otherwise the axes longer than
    1, sorted by stride, must each step past the whole extent of the axes inside them. Conservative: a few
    interleaved layouts that never overlap (e.g. shape (2, 3), strides (12, 8) of 4-byte items) count as
    overlapping."""
    flags = a.flags
    if a.size <= 1 or flags.c_contiguous or flags.f_contiguous:
        return False
    extent = a.itemsize
    for stride, length in sorted((abs(st), n) for n, st in zip(a.shape, a.strides, strict=True) if n > 1):
        if stride < extent:
            return True
        extent += stride * (length - 1)
    return False


def same_view(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` view the same elements the same way (an in-place call: ``out=x``)."""
    if a is b:
        return True
    ptr_a = a.data.ptr if is_cupy(a) else a.__array_interface__["data"][0]
    ptr_b = b.data.ptr if is_cupy(b) else b.__array_interface__["data"][0]
    return ptr_a == ptr_b and a.strides == b.strides and a.shape == b.shape
