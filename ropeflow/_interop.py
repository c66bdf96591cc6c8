"""Any array in, the same array out: PyTorch and JAX arrays at the front end's edge (DESIGN 2, "Interop").

Backends only ever see NumPy or CuPy arrays. This module turns a caller's torch tensor or JAX array into one
of those without copying, and turns results back into the caller's library, device and dtype:

* torch, CPU: ``Tensor.numpy()`` (a view; bfloat16 travels as an int16 view re-read as ``ml_dtypes.bfloat16``).
* torch, CUDA: ``cupy.from_dlpack`` (a view on the tensor's device; the cupy backend runs there). The DLPack
  exchange makes CuPy's current stream wait for torch's current stream; ropeflow launches on CuPy's current
  stream, and ``torch.from_dlpack`` of the results makes torch's stream wait in turn. No host sync is added.
* JAX, CPU: ``numpy.asarray`` (a read-only view of the buffer); results come back through ``jax.numpy.asarray``
  (JAX arrays are immutable, so ``out=`` is refused for them).

Frameworks are never imported here: an array is recognised by its type's module, and the framework is taken
from ``sys.modules`` (it must be imported already, since the caller holds one of its arrays).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Origin:
    """Where a caller's array came from: ``library`` ("torch" or "jax") and its device (``"cpu"`` or
    ``"cuda:N"``), so results can be handed back there."""

    library: str
    device: str

    def key(self) -> tuple[str, str]:
        return (self.library, self.device)


def library_of(a: Any) -> str | None:
    """``"torch"`` or ``"jax"`` for a tensor/array of those libraries, else None (NumPy, CuPy, anything else)."""
    cls = type(a)
    try:
        return _LIBRARY_OF_TYPE[cls]
    except KeyError:
        pass
    library = None
    module = cls.__module__
    if module.startswith("torch"):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(a, torch.Tensor):
            library = "torch"
    elif module.startswith(("jax", "jaxlib")):
        jax = sys.modules.get("jax")
        if jax is not None and isinstance(a, jax.Array):
            library = "jax"
    if library is not None:
        _LIBRARY_OF_TYPE[cls] = library
    return library


_LIBRARY_OF_TYPE: dict[type, str] = {}


def _bfloat16() -> np.dtype:
    from ._xp import bfloat16_dtype

    return bfloat16_dtype()


def torch_to_native(t: Any, name: str) -> tuple[Any, Origin]:
    """A NumPy (CPU) or CuPy (CUDA) view of a torch tensor, or a TypeError naming ``name``."""
    torch = sys.modules["torch"]
    if t.is_cpu and not t.requires_grad and t.dtype != torch.bfloat16:  # the common case, fast
        try:
            return t.numpy(), _TORCH_CPU
        except (TypeError, RuntimeError):
            pass  # conjugate/negative views, unsupported dtypes: below
    if t.requires_grad:
        raise TypeError(f"{name}: the tensor requires grad, and ropeflow does not record autograd; pass "
                        f"{name}.detach() (and rotate inside torch.no_grad() for inference)")
    kind = t.device.type
    bf16 = t.dtype == torch.bfloat16
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    if kind == "cpu":
        if bf16:
            return t.view(torch.int16).numpy().view(_bfloat16()), _TORCH_CPU
        try:
            return t.numpy(), _TORCH_CPU
        except TypeError as exc:  # e.g. complex32, quantized
            raise TypeError(f"{name}: cannot read a torch {t.dtype} tensor ({exc})") from None
    if kind == "cuda":
        cupy = _cupy_for(name, "a torch CUDA tensor")
        device = f"cuda:{t.device.index}"
        if bf16:
            return cupy.from_dlpack(t.view(torch.int16)).view(_bfloat16()), Origin("torch", device)
        return cupy.from_dlpack(t), Origin("torch", device)
    raise TypeError(f"{name}: a torch tensor on {t.device}; ropeflow runs on the CPU (NumPy, Numba) and on CUDA "
                    f"GPUs (CuPy); move it with {name}.cpu() or {name}.cuda()")


def jax_to_native(a: Any, name: str) -> tuple[Any, Origin]:
    """A NumPy (CPU) or CuPy (GPU) view of a JAX array, or a TypeError naming ``name``."""
    tracer = getattr(getattr(sys.modules.get("jax"), "core", None), "Tracer", None)
    if tracer is not None and isinstance(a, tracer):
        raise TypeError(f"{name}: a traced JAX value (inside jax.jit, grad or vmap), which has no data to read; "
                        "ropeflow computes on concrete arrays: call it outside the traced function, or through "
                        "jax.pure_callback")
    devices = a.devices()
    if len(devices) != 1:
        raise TypeError(f"{name}: a JAX array sharded over {len(devices)} devices; pass a single-device array")
    device = next(iter(devices))
    if device.platform == "cpu":
        return np.asarray(a), Origin("jax", "cpu")
    if device.platform in ("gpu", "cuda"):
        cupy = _cupy_for(name, "a JAX GPU array")
        return cupy.from_dlpack(a), Origin("jax", f"cuda:{device.id}")
    raise TypeError(f"{name}: a JAX array on {device.platform}; ropeflow runs on the CPU and on CUDA GPUs (CuPy); "
                    f"move it with jax.device_put({name}, jax.devices('cpu')[0])")


def _cupy_for(name: str, what: str) -> Any:
    try:
        import cupy
    except ImportError:
        raise TypeError(f"{name}: {what} needs CuPy for the cupy backend (pip install 'ropeflow[cuda12]' or "
                        f"'ropeflow[cuda13]'), or move it to the CPU") from None
    return cupy


def torch_cpu_metadata(t: Any) -> tuple[np.dtype, int, int, Origin] | None:
    """``(NumPy dtype, ndim, shape[-2], origin)`` of a CPU torch tensor of 2+ dimensions without converting it
    (for calls that only need those), or None for any other tensor (the full conversion path handles it)."""
    if not t.is_cpu or t.ndim < 2:
        return None
    dtype = _TORCH_DTYPES.get(t.dtype)
    if dtype is None:
        name = str(t.dtype).removeprefix("torch.")
        if name not in ("float16", "bfloat16", "float32", "float64"):
            return None
        dtype = _bfloat16() if name == "bfloat16" else np.dtype(name)
        _TORCH_DTYPES[t.dtype] = dtype
    return dtype, t.ndim, t.shape[-2], _TORCH_CPU


_TORCH_DTYPES: dict[Any, np.dtype] = {}
_TORCH_CPU = Origin("torch", "cpu")


def to_native(a: Any, name: str) -> tuple[Any, Origin | None]:
    """``(array, origin)``: NumPy/CuPy arrays and anything unknown pass through with origin None; torch and JAX
    arrays become zero-copy NumPy/CuPy views and their origin."""
    library = library_of(a)
    if library == "torch":
        return torch_to_native(a, name)
    if library == "jax":
        return jax_to_native(a, name)
    return a, None


def to_native_or_none(a: Any, name: str) -> Any:
    """The NumPy/CuPy view of ``a`` (for positions and offsets: their origin does not matter)."""
    return a if a is None or type(a) is np.ndarray else to_native(a, name)[0]


def from_native(a: Any, origin: Origin | None) -> Any:
    """``a`` (NumPy or CuPy) in the caller's library: a zero-copy tensor for torch, a JAX array for JAX."""
    if origin is None:
        return a
    if origin.library == "torch":
        torch = sys.modules["torch"]
        if a.dtype.itemsize == 2 and a.dtype.kind != "f":  # bfloat16 (ml_dtypes); dtype.name is slow
            raw = a.view(np.int16)
            t = torch.from_numpy(raw) if isinstance(raw, np.ndarray) else torch.from_dlpack(raw)
            return t.view(torch.bfloat16)
        return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)
    jnp = sys.modules["jax.numpy"]
    return jnp.asarray(a)


def mark_written(*arrays: Any) -> None:
    """Tell autograd that ropeflow wrote into the torch tensors among ``arrays`` (``out=`` arrays, written through
    NumPy or CuPy views): see :func:`mark_torch_written`. Other arrays, and None, are skipped."""
    torch = sys.modules.get("torch")
    if torch is not None:
        tensors = tuple(a for a in arrays if isinstance(a, torch.Tensor))
        if tensors:
            mark_torch_written(tensors)


def mark_torch_written(tensors: tuple[Any, ...]) -> None:
    """Bump the autograd version counters of ``tensors`` (torch tensors ropeflow wrote through NumPy or CuPy
    views), as torch's own in-place operations do: a backward pass that saved their old values then raises
    torch's "modified by an inplace operation" error instead of computing gradients from the rotated values.
    About 0.5 us for two tensors."""
    torch = sys.modules["torch"]
    bump = getattr(getattr(torch.autograd, "graph", None), "increment_version", None)
    if bump is not None:
        bump(tensors)
    else:  # torch before 2.1: the private form, one tensor at a time
        for t in tensors:
            torch._C._increment_version(t)


def inference_tensor_outside_inference_mode(t: Any) -> bool:
    """Whether ``t`` (a torch tensor) is an inference tensor while inference mode is off: torch refuses its
    own in-place operations on it then, and so does ropeflow (it would write through a NumPy or CuPy view)."""
    return bool(t.is_inference()) and not sys.modules["torch"].is_inference_mode_enabled()


def writable_native(out: Any, name: str = "out") -> Any:
    """The native view of an ``out=`` array that is not a NumPy array (see :func:`to_native`), refusing
    what ropeflow cannot write into: immutable JAX arrays, and torch negative-bit or conjugate views (NumPy and
    CuPy cannot view them; :func:`torch_to_native` would hand back a resolved copy, and the results would
    never reach the caller's tensor)."""
    if library_of(out) == "torch":
        if out.is_neg() or out.is_conj():
            raise TypeError(f"{name}: a torch {'negative-bit' if out.is_neg() else 'conjugate'} view, which ropeflow "
                            "cannot write through; pass a tensor without that bit (resolve_neg() and resolve_conj() "
                            "make one) and copy the result back, or leave out=None and use the returned tensor")
        if inference_tensor_outside_inference_mode(out):
            raise ValueError(f"{name}: a torch inference tensor (made under torch.inference_mode()), which torch "
                             "allows no in-place update outside inference mode; call under torch.inference_mode(), "
                             "or pass a normal tensor (clone() makes one)")
    native, origin = to_native(out, name)
    if origin is not None and origin.library == "jax":
        raise TypeError(f"{name}: JAX arrays are immutable; leave {name}=None and use the returned array")
    return native
