"""The CUDA kernels of ``rope.cu``, run on the CPU (DESIGN 3): the unmodified source compiled as host C++ behind
``tests/cuda_host/cuda_shim.h``, launched with the argument tuples ``_cupy.py`` builds, every (block, thread)
serially, for several grid/block shapes, with guard zones around every output. Results are compared with the
numba backend: tables within 1 ulp (the two libms differ), rotations bit for bit (same tables).

What this cannot show (a GPU must): the accuracy of CUDA's own sincosf/sincos, timing, streams.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
from cuda_host.harness import CXX, Arena, HostKernels, marshal

from ropeflow.backends import _cupy, get_backend
from ropeflow.scaling import compute_frequencies

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++/clang++) on the PATH to build the "
                                                    "host execution of rope.cu")

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": BF16, "float32": np.dtype(np.float32),
          "float64": np.dtype(np.float64)}
#: The builder's own launch shape plus shapes that make every grid-stride loop iterate (x, y and z).
SHAPES = [None, ((1, 1, 1), (1, 1, 1)), ((2, 3, 1), (3, 2, 1)), ((1, 2, 3), (5, 1, 2))]


@pytest.fixture(scope="session")
def kernels(tmp_path_factory) -> HostKernels:
    return HostKernels(tmp_path_factory.mktemp("rope_host"))


@pytest.fixture(scope="session")
def numba():
    return get_backend("numba")


def run_all_shapes(kernels: HostKernels, arena: Arena, launch: _cupy.Launch, outputs, reset, check) -> None:
    """Run ``launch`` once per shape in SHAPES: ``reset()`` restores the inputs/outputs, ``check()`` compares,
    and no byte outside ``outputs`` may change."""
    for shape in SHAPES:
        reset()
        before = arena.snapshot()
        grid, block = (None, None) if shape is None else shape
        kernels.run(launch, grid, block)
        arena.assert_only_written(before, *outputs)
        check(shape)


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between two float arrays of one dtype (0 for equal values)."""
    ib = {4: np.int32, 8: np.int64}[a.itemsize]
    ia, ibb = a.view(ib).astype(np.int64), b.view(ib).astype(np.int64)
    top = np.int64(1) << (8 * a.itemsize - 1)
    ka = np.where(ia < 0, -(ia + top) if a.itemsize == 8 else -(ia & 0x7FFFFFFF), ia)
    kb = np.where(ibb < 0, -(ibb + top) if a.itemsize == 8 else -(ibb & 0x7FFFFFFF), ibb)
    return np.abs(ka - kb)


# ------------------------------------------------------------------------------------------------- tables
TABLE_ROWS = [(0, 17, 1.0, 1.0), (1000, 33, 4.0, 1.0), (12345, 9, 1.0, 1.25), (2**20 + 3, 5, 2.5, 0.7)]


@pytest.mark.parametrize("precision,out_dtype", [("reference", "float32"), ("exact", "float32"),
                                                 ("exact", "float64")])
@pytest.mark.parametrize("dim", [2, 6, 64, 512])
@pytest.mark.parametrize("start,rows,divisor,scale", TABLE_ROWS)
def test_table_kernels_match_numba(kernels, numba, precision, out_dtype, dim, start, rows, divisor, scale):
    freqs = compute_frequencies(None, dim, 10000.0, 4096, precision)
    freqs = dataclasses.replace(freqs, position_divisor=divisor, attention_scaling=scale)
    arena = Arena(nbytes=2 * rows * dim * 8 + 4096, seed=dim + rows)
    cos, sin = arena.array((rows, dim), out_dtype), arena.array((rows, dim), out_dtype)
    want_cos, want_sin = np.empty((rows, dim), out_dtype), np.empty((rows, dim), out_dtype)
    numba.build_rows(numba.prepare(freqs), start, want_cos, want_sin)
    launch = _cupy.table_launch(freqs.inv_freq, freqs, start, cos, sin)
    assert launch.name == _cupy.kernel_name(freqs.inv_freq.dtype, out_dtype)
    initial = arena.snapshot()
    # the libms differ by at most 1 ulp; a scaling multiply after it can turn 1 ulp into 2 (same binade)
    allowed = 1 if scale == 1.0 else 2

    def reset():
        arena.buf[:] = initial

    def check(shape):
        for got, want in ((cos, want_cos), (sin, want_sin)):
            assert np.all(np.isfinite(got)), shape
            worst = int(ulps(got, want).max())
            assert worst <= allowed, f"{launch.name} {shape}: {worst} ulps from numba"
        # columns j and j + half hold the same value
        assert np.array_equal(cos[:, : dim // 2], cos[:, dim // 2:])

    run_all_shapes(kernels, arena, launch, (cos, sin), reset, check)


@pytest.mark.parametrize("src", ["float32", "float64"])
@pytest.mark.parametrize("dst", ["float16", "bfloat16"])
def test_table_casts_round_once(kernels, numba, src, dst):
    """The float16/bfloat16 table casts round the storage table once (compared with NumPy's direct float16
    conversion and numba's bfloat16 encoder)."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(-1, 1, 500), rng.uniform(-1, 1, 200) * 2.0**-20,
                             [0.0, -0.0, 1.0, -1.0, 2.0**-25, 3 * 2.0**-26, 1 + 2.0**-8, 1 + 3 * 2.0**-9, 65520.0,
                              1e-45, 2.0**-133, 1 + 2.0**-8 + 2.0**-30]]).astype(src).reshape(-1, 2)
    arena = Arena(nbytes=values.nbytes * 2 + 4096, seed=7)
    table = arena.array(values.shape, src)
    table[...] = values
    out = arena.array(values.shape, DTYPES[dst])
    if dst == "float16":
        with np.errstate(over="ignore"):
            want = values.astype(np.float16)  # NumPy converts float32/float64 to float16 directly, rounding once
    else:
        from ropeflow.backends._numba import _encode

        encode = numba_encoder(_encode)
        want = encode(values.astype(np.float64).ravel()).view(BF16).reshape(values.shape)
        if src == "float32":
            assert np.array_equal(want.view(np.uint16), values.astype(BF16).view(np.uint16))
    launch = _cupy.cast_launch(table, out)
    initial = arena.snapshot()
    run_all_shapes(kernels, arena, launch, (out,), lambda: arena.buf.__setitem__(slice(None), initial),
                   lambda shape: np.testing.assert_array_equal(out.view(np.uint16), want.view(np.uint16)))


def numba_encoder(encode):
    from numba import njit

    @njit
    def run(v):
        out = np.empty(v.shape, np.uint16)
        for i in range(v.size):
            out[i] = encode(v[i], 7, 127)
        return out

    return run


# ------------------------------------------------------------------------------------------------ rotation
def random_values(rng, shape, dtype) -> np.ndarray:
    """Normal values with a few large and tiny ones (16-bit overflow, subnormal rounding paths)."""
    v = rng.standard_normal(shape)
    flat = v.reshape(-1)
    flat[::7] *= 2e4
    flat[3::11] *= 2.0**-20
    return np.clip(v, -6e4, 6e4).astype(DTYPES[dtype])  # finite in float16


@dataclasses.dataclass
class Tensor:
    """One of q/k: its input view, its output view (the input itself in place) and the reference result."""

    x: np.ndarray
    out: np.ndarray
    values: np.ndarray
    initial_out: np.ndarray


def make_tensor(arena, rng, shape, dtype, style, inplace, qkv=None) -> Tensor:
    b, h, s, d = shape
    if qkv is not None:  # a slice of a fused (batch, seq, heads_total, head_dim) buffer
        buf, lo = qkv
        x = buf[:, :, lo:lo + h, :].transpose(0, 2, 1, 3)
    elif style == "transposed":  # stored (batch, seq, heads, head_dim), viewed (batch, heads, seq, head_dim)
        x = arena.array(shape, DTYPES[dtype], order=(0, 2, 1, 3))
    elif style == "strided":  # holes between channels and between rows
        x = arena.array(shape, DTYPES[dtype], order=(1, 0, 3, 2), spread=(1, 2, 1, 2))
    else:
        x = arena.array(shape, DTYPES[dtype])
    values = random_values(rng, shape, dtype)
    x[...] = values
    if inplace:
        out = x
    else:
        out = arena.array(shape, DTYPES[dtype], order=(0, 2, 1, 3) if style == "strided" else None)
    return Tensor(x, out, values, out.copy())


SCENARIOS = {
    # name: (q shape, k shape or None, rotary_dim, q in place, k in place, style, broadcast positions, inverse)
    "basic": ((2, 3, 5, 64), (2, 1, 5, 64), 64, False, False, "contiguous", False, False),
    "broadcast_positions": ((2, 2, 6, 32), (2, 2, 6, 32), 32, False, False, "contiguous", True, False),
    "partial_out_of_place": ((2, 2, 5, 96), (2, 1, 5, 96), 64, False, False, "contiguous", False, False),
    "partial_in_place": ((1, 3, 4, 48), (1, 2, 4, 48), 32, True, True, "contiguous", False, False),
    "inverse": ((2, 2, 3, 16), (2, 2, 3, 16), 16, False, False, "contiguous", False, True),
    "transposed": ((2, 3, 4, 32), (2, 1, 4, 32), 32, False, False, "transposed", False, False),
    "strided": ((2, 2, 3, 40), (2, 2, 3, 40), 24, False, False, "strided", True, False),
    "fused_qkv": ((2, 4, 3, 32), (2, 2, 3, 32), 32, False, True, "fused", False, False),
    "q96_k80": ((2, 4, 3, 96), (2, 2, 3, 80), 64, False, False, "contiguous", False, False),
    "q64_k80": ((2, 2, 3, 64), (2, 1, 3, 80), 64, False, False, "contiguous", False, False),
    "q_in_place_k_not": ((1, 2, 3, 40), (1, 3, 3, 48), 32, True, False, "contiguous", False, False),
    "q_only": ((3, 2, 5, 34), None, 34, False, False, "contiguous", False, False),
    "strided_tables": ((2, 2, 4, 18), (2, 1, 4, 18), 18, False, False, "contiguous", False, False),
}
TABLE_LEN = 40


def reference(numba, t: Tensor, cos, sin, positions, layout, rotary_dim, inverse) -> np.ndarray:
    """The numba backend's rotation of contiguous copies (out of place: the pass-through channels are copied,
    which is what an in-place call leaves untouched)."""
    x = np.ascontiguousarray(t.values)
    out = np.empty_like(x)
    numba.apply(x, out, np.ascontiguousarray(cos), np.ascontiguousarray(sin), np.ascontiguousarray(positions),
                layout, rotary_dim, inverse)
    return out


def build_case(numba, scenario, layout, dtype, table_dtype, seed=0):
    q_shape, k_shape, rotary_dim, q_inplace, k_inplace, style, broadcast, inverse = SCENARIOS[scenario]
    rng = np.random.default_rng(seed)
    arena = Arena(nbytes=1 << 18, seed=seed)
    qkv = None
    if style == "fused":
        b, hq, s, d = q_shape
        hk = k_shape[1]
        buf = arena.array((b, s, hq + 2 * hk, d), DTYPES[dtype])
        qkv = buf
    q = make_tensor(arena, rng, q_shape, dtype, style, q_inplace, None if qkv is None else (qkv, 0))
    k = None
    if k_shape is not None:
        k = make_tensor(arena, rng, k_shape, dtype, style, k_inplace, None if qkv is None else (qkv, q_shape[1]))
    freqs = compute_frequencies(None, rotary_dim, 10000.0, 4096, "exact" if table_dtype == "float64" else "reference")
    cos = np.empty((TABLE_LEN, rotary_dim), table_dtype)
    sin = np.empty((TABLE_LEN, rotary_dim), table_dtype)
    numba.build_rows(numba.prepare(freqs), 0, cos, sin)
    if scenario == "strided_tables":
        big = arena.array((TABLE_LEN, rotary_dim), table_dtype, spread=(3, 2))
        big[...] = cos
        cos_view = big
        sin_view = arena.array((TABLE_LEN, rotary_dim), table_dtype, order=(1, 0))
        sin_view[...] = sin
    else:
        cos_view, sin_view = cos, sin
    b, _, s, _ = q_shape
    if broadcast:
        positions = np.broadcast_to(rng.integers(0, TABLE_LEN, s)[None, :], (b, s))
    else:
        positions = rng.integers(0, TABLE_LEN, (b, s))
    positions = positions.astype(np.int64) if not broadcast else positions
    tensors = [q] if k is None else [q, k]
    want = [reference(numba, t, cos, sin, positions, layout, rotary_dim, inverse) for t in tensors]
    return arena, tensors, want, cos_view, sin_view, positions, rotary_dim, inverse


def launch_for(tensors, cos, sin, positions, layout, rotary_dim, inverse, error):
    q, k = tensors[0], (tensors[1] if len(tensors) > 1 else None)
    x, kx = _cupy.deepseek_sources(layout, q.x, q.out, None if k is None else k.x, None if k is None else k.out,
                                   np.may_share_memory)
    return _cupy.apply_launch(x, q.out, cos, sin, positions, layout, rotary_dim, inverse,
                              kx, None if k is None else k.out, error=error)


@pytest.mark.parametrize("table_dtype", ["float32", "float64"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_apply_kernels_match_numba_bit_for_bit(kernels, numba, scenario, layout, dtype, table_dtype):
    arena, tensors, want, cos, sin, positions, rotary_dim, inverse = build_case(numba, scenario, layout, dtype,
                                                                                table_dtype)
    error = arena.array((3,), np.int64)
    error[...] = 0
    launch = launch_for(tensors, cos, sin, positions, layout, rotary_dim, inverse, error)
    assert launch.name == _cupy.apply_kernel_name(dtype, layout, table_dtype)
    outputs = [t.out for t in tensors] + [error]

    def reset():
        for t in tensors:
            t.x[...] = t.values
            if t.out is not t.x:
                t.out[...] = t.initial_out

    def check(shape):
        assert not error.any(), f"error buffer set: {error}"
        for name, t, w in zip("qk", tensors, want, strict=False):
            got = t.out.view(np.uint16 if t.out.itemsize == 2 else f"u{t.out.itemsize}")
            exp = w.view(got.dtype)
            bad = np.argwhere(got != exp)
            assert bad.size == 0, f"{name} {launch.name} {shape}: {len(bad)} elements differ from numba, first " \
                                  f"{tuple(bad[0])}: {t.out[tuple(bad[0])]!r} vs {w[tuple(bad[0])]!r}"

    run_all_shapes(kernels, arena, launch, outputs, reset, check)


def test_the_cases_cover_every_kernel_instance():
    """The parametrizations above launch every instance the module is compiled with."""
    covered = {"rope_table_ref"} | {_cupy.kernel_name("float64", o) for o in ("float32", "float64")}
    covered |= {_cupy.cast_kernel_name(s, d) for s in ("float32", "float64") for d in ("float16", "bfloat16")}
    covered |= {_cupy.apply_kernel_name(d, lay, t) for d in DTYPES for lay in _cupy.LAYOUT_CODES
                for t in ("float32", "float64")}
    assert covered == set(_cupy.kernel_names())


# ------------------------------------------------------------------------------- the defects, one test each
def test_defect_float32_input_float64_tables_rounds_once(kernels, numba):
    """Defect 1: float32 input with float64 (exact) tables. The kernel reads the float64 table (no cast, no
    double rounding) and equals numba; the old path (table cast to float32 first) does not."""
    arena, tensors, want, cos, sin, positions, rotary_dim, inverse = build_case(numba, "basic", "half", "float32",
                                                                                "float64", seed=5)
    error = np.zeros(3, np.int64)
    launch = launch_for(tensors, cos, sin, positions, "half", rotary_dim, inverse, error)
    assert launch.name == "rope_apply<float, double, 0>"
    assert launch.args[30] is cos and launch.args[31] is sin  # the tables themselves: no per-call cast
    kernels.run(launch)
    np.testing.assert_array_equal(tensors[0].out.view(np.uint32), want[0].view(np.uint32))
    old = reference(numba, tensors[0], cos.astype(np.float32), sin.astype(np.float32), positions, "half",
                    rotary_dim, inverse)
    assert np.any(old != want[0]), "the case does not distinguish one rounding from two"


@pytest.mark.parametrize("q_dim,k_dim", [(96, 80), (64, 80), (80, 96)])
def test_defect_q_and_k_with_different_head_dims(kernels, numba, q_dim, k_dim):
    """Defects 2 and 3: each tensor has its own head_dim and pass-through width. q 96 / k 80 used to write past
    k_out (caught here by the guard zones), q 64 / k 80 used to be refused."""
    arena = Arena(nbytes=1 << 17, seed=11)
    rng = np.random.default_rng(11)
    q = make_tensor(arena, rng, (2, 3, 4, q_dim), "float32", "contiguous", False)
    k = make_tensor(arena, rng, (2, 1, 4, k_dim), "float32", "contiguous", False)
    freqs = compute_frequencies(None, 64, 10000.0, 4096, "reference")
    cos, sin = np.empty((8, 64), np.float32), np.empty((8, 64), np.float32)
    numba.build_rows(freqs, 0, cos, sin)
    positions = rng.integers(0, 8, (2, 4)).astype(np.int64)
    error = arena.array((3,), np.int64)
    error[...] = 0
    launch = _cupy.apply_launch(q.x, q.out, cos, sin, positions, "half", 64, False, k.x, k.out, error=error)
    before = arena.snapshot()
    kernels.run(launch)
    arena.assert_only_written(before, q.out, k.out, error)
    for t in (q, k):
        np.testing.assert_array_equal(t.out, reference(numba, t, cos, sin, positions, "half", 64, False))


class _OnDevice(np.ndarray):
    """A NumPy array that claims to live on a CUDA device (``.device.id``), as CuPy arrays do."""

    def __new__(cls, a, device):
        obj = np.asarray(a).view(cls)
        obj._device = types.SimpleNamespace(id=device)
        return obj

    def __array_finalize__(self, obj):
        self._device = getattr(obj, "_device", None)

    @property
    def device(self):
        return self._device


def _device_case(q_dev=1, out_dev=1, k_dev=1, table_dev=1, pos_dev=1, err_dev=1):
    def on(a, d):
        return _OnDevice(a, d)

    q = np.zeros((1, 2, 3, 8), np.float32)
    k = np.zeros((1, 1, 3, 8), np.float32)
    tab = np.ones((4, 8), np.float32)
    pos = np.zeros((1, 3), np.int64)
    return dict(x=on(q, q_dev), out=on(q.copy(), out_dev), cos=on(tab, table_dev), sin=on(tab.copy(), table_dev),
                positions=on(pos, pos_dev), layout="half", rotary_dim=8, inverse=False, k=on(k, k_dev),
                k_out=on(k.copy(), k_dev), error=on(np.zeros(3, np.int64), err_dev))


def test_defect_launch_runs_on_q_device_and_refuses_other_devices():
    """Defect 4: q on device 1 while device 0 is current. The launch names q's device; an array on any other
    device is a ValueError naming it (not an illegal memory access)."""
    assert _cupy.apply_launch(**_device_case()).device == 1
    for name, kw in [("out", "out_dev"), ("k", "k_dev"), ("cos", "table_dev"), ("positions", "pos_dev"),
                     ("error", "err_dev")]:
        with pytest.raises(ValueError, match=rf"^{name}: on device 0, but q is on device 1"):
            _cupy.apply_launch(**_device_case(**{kw: 0}))


class _FakeCupy:
    """Just enough of CuPy for CupyBackend.apply: records the current device of every call. It has no
    allocation functions, so an allocation on the hot path fails the test."""

    def __init__(self, kernels: HostKernels) -> None:
        self.current = 0
        self.calls: list[tuple[str, int]] = []
        fake = self

        class Device:
            def __init__(self, d):
                self.d = d

            def __enter__(self):
                self.prev, fake.current = fake.current, self.d
                return self

            def __exit__(self, *exc):
                fake.current = self.prev

        self.cuda = types.SimpleNamespace(Device=Device)
        self.may_share_memory = np.may_share_memory
        self.kernels = kernels

    def module(self, device):
        fake = self

        class Module:
            def get_function(self, name):
                def launch(grid, block, args):
                    fake.calls.append((name, fake.current))
                    fake.kernels.run(_cupy.Launch(name, grid, block, args, device))

                return launch

        return Module()


def test_backend_apply_launches_on_q_device_without_allocating(kernels, numba):
    """CupyBackend.apply itself (with a fake CuPy that runs the kernel on the host): the launch happens under
    q's device, q-only calls pass null k pointers (no dummy allocation), and the result is numba's."""
    fake = _FakeCupy(kernels)
    backend = object.__new__(_cupy.CupyBackend)
    backend.cupy = fake
    backend._modules = {}
    backend.module = fake.module
    error = _OnDevice(np.zeros(3, np.int64), 1)
    backend._errors = {1: error}
    rng = np.random.default_rng(2)
    x = _OnDevice(rng.standard_normal((2, 2, 3, 16)).astype(np.float32), 1)
    out = _OnDevice(np.zeros_like(x), 1)
    freqs = compute_frequencies(None, 16, 10000.0, 4096, "reference")
    cos, sin = np.empty((6, 16), np.float32), np.empty((6, 16), np.float32)
    numba.build_rows(freqs, 0, cos, sin)
    positions = _OnDevice(rng.integers(0, 6, (2, 3)).astype(np.int64), 1)
    backend.apply(x, out, _OnDevice(cos, 1), _OnDevice(sin, 1), positions, "interleaved", 16, False)
    assert fake.calls == [("rope_apply<float, float, 1>", 1)] and fake.current == 0
    want = np.empty_like(np.asarray(x))
    numba.apply(np.asarray(x), want, cos, sin, np.asarray(positions), "interleaved", 16, False)
    np.testing.assert_array_equal(np.asarray(out), want)
    launch = _cupy.apply_launch(x, out, _OnDevice(cos, 1), _OnDevice(sin, 1), positions, "half", 16, False,
                                error=error)
    assert launch.args[15:17] == (None, None) and launch.grid[2] == 1


def test_out_of_range_positions_are_never_read(kernels, numba):
    """A position outside the tables: that row's rotated channels become NaN (its pass-through channels are
    still copied), the error buffer records it, and no table row beyond the table is read: the rows past
    the table's end in memory hold a sentinel that would show up in the output."""
    arena = Arena(nbytes=1 << 16, seed=4)
    rng = np.random.default_rng(4)
    t = make_tensor(arena, rng, (2, 2, 4, 24), "float32", "contiguous", False)
    freqs = compute_frequencies(None, 16, 10000.0, 4096, "reference")
    full_cos, full_sin = np.full((12, 16), 1e30, np.float32), np.full((12, 16), 1e30, np.float32)
    numba.build_rows(freqs, 0, full_cos[2:8], full_sin[2:8])
    cos, sin = full_cos[2:8], full_sin[2:8]  # 6 rows; rows -2, -1 and 6.. hold the sentinel
    positions = np.array([[0, 6, 3, 1], [2, -1, 5, 9]], np.int64)
    error = np.zeros(3, np.int64)
    launch = _cupy.apply_launch(t.x, t.out, cos, sin, positions, "half", 16, False, error=error)
    for shape in SHAPES:
        error[:] = 0
        t.out[...] = 0
        kernels.run(launch, *(shape or (None, None)))
        bad = (positions < 0) | (positions >= 6)
        assert np.isnan(t.out[:, :, :, :16].transpose(0, 2, 1, 3)[bad]).all()
        np.testing.assert_array_equal(t.out[..., 16:], t.values[..., 16:])
        good = np.where(bad, 0, positions)
        want = reference(numba, t, cos, sin, good, "half", 16, False)
        ok = ~bad
        np.testing.assert_array_equal(t.out.transpose(0, 2, 1, 3)[ok], want.transpose(0, 2, 1, 3)[ok])
        assert error[0] == 1 and error[1] in (6, -1, 9) and error[2] == 6
        err = _cupy.position_error(error)
        assert isinstance(err, ValueError) and str(err).startswith(f"positions: a rotation read position {error[1]}")
    assert _cupy.position_error(np.zeros(3, np.int64)) is None


# ------------------------------------------------------------------------------------ argument checking
def test_byte_strides_not_multiple_of_itemsize_are_refused():
    raw = np.zeros(4096, np.uint8)
    x = np.ndarray((1, 1, 2, 8), np.float32, buffer=raw, offset=0, strides=(512, 512, 130, 4))
    out = np.zeros((1, 1, 2, 8), np.float32)
    tab = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"^q: byte strides \(512, 512, 130, 4\) are not multiples of the "
                                         r"itemsize 4"):
        _cupy.apply_launch(x, out, tab, tab, np.zeros((1, 2), np.int64), "half", 8, False,
                           error=np.zeros(3, np.int64))


def test_data_address_not_multiple_of_itemsize_is_refused():
    """A view at an odd byte offset with element-multiple strides passed the stride check: on a GPU each access
    is a misaligned-address fault, which poisons the whole CUDA context (x86 hides it here)."""
    raw = np.zeros(4096, np.uint8)
    x = np.ndarray((1, 1, 2, 8), np.float32, buffer=raw, offset=2, strides=(64, 64, 32, 4))
    out = np.zeros((1, 1, 2, 8), np.float32)
    tab = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"^q: its data address 0x[0-9a-f]+ is not a multiple of the itemsize 4"):
        _cupy.apply_launch(x, out, tab, tab, np.zeros((1, 2), np.int64), "half", 8, False,
                           error=np.zeros(3, np.int64))


def test_marshal_checks_count_kind_and_size(kernels):
    params = kernels.params["rope_table_ref"]
    f = np.zeros(4, np.float32)
    good = (f, np.int64(0), np.int64(1), np.int32(2), np.float32(1), np.float32(1), np.int32(0), np.int32(0), f, f)
    assert len(marshal(good, params, "rope_table_ref")) == 10
    bad_cases = {
        "arguments for": good[:-1],
        "4 bytes for a 8-byte": good[:1] + (np.int32(0),) + good[2:],
        "8 bytes for a 4-byte": good[:3] + (3,) + good[4:],  # a Python int travels as int64, as in CuPy
        "scalar for a floating": good[:4] + (np.int32(1),) + good[5:],
        "an array/None for a": good[:1] + (f,) + good[2:],
        "a scalar for a pointer": (np.int64(0),) + good[1:],
        "a float64 array for a pointer": (np.zeros(4),) + good[1:],
    }
    for message, args in bad_cases.items():
        with pytest.raises(AssertionError, match=message):
            marshal(args, params, "rope_table_ref")


def test_guard_zones_catch_a_stray_write():
    arena = Arena(nbytes=4096, seed=1)
    a = arena.array((4, 4), np.float32)
    b = arena.array((4,), np.float32)
    before = arena.snapshot()
    a[...] = 1.0
    arena.assert_only_written(before, a)
    b[0] = 2.0
    with pytest.raises(AssertionError, match="4 bytes outside the outputs"):
        arena.assert_only_written(before, a)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 12, 96, 1000, 65535, 2**20 + 1, 2**30, 2**31 - 1])
def test_fast_divisor_is_exact_below_2_31(d):
    mul, shr = _cupy.fast_divisor(d)
    n = np.unique(np.concatenate([np.arange(0, 5000), np.arange(2**31 - 5000, 2**31),
                                  np.random.default_rng(d).integers(0, 2**31, 20000),
                                  np.arange(1, 2**31 // d, max(1, 2**31 // d // 3000)) * d - 1])).astype(object)
    n = [int(v) for v in n if 0 <= v < 2**31]
    got = [v if mul == 0 else ((v * mul) >> 32) >> shr for v in n]
    assert got == [v // d for v in n]
    assert 0 <= mul < 2**32 and 0 <= shr < 32


class _FakeCupyWithMemory(_FakeCupy):
    """_FakeCupy plus host "device memory", for the table path (allocation is expected there)."""

    def __init__(self, kernels: HostKernels) -> None:
        super().__init__(kernels)
        self.cuda.runtime = types.SimpleNamespace(getDevice=lambda: self.current)
        self.empty, self.asarray, self.ascontiguousarray, self.zeros = np.empty, np.asarray, np.ascontiguousarray, \
            np.zeros


@pytest.mark.parametrize("precision", ["reference", "exact"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cupy_backend_serves_16_bit_tables(kernels, numba, monkeypatch, precision, dtype):
    """RotaryEmbedding.cos_sin(dtype=bfloat16/float16) through CupyBackend (fake CuPy, host kernels): the table
    kernel fills the storage table, the cast kernel rounds it once; equal to numba's table cast by NumPy /
    ml_dtypes (float32 storage) or rounded once by numba's encoder (float64 storage)."""
    import array_api_compat.numpy as xp_np

    import ropeflow
    from ropeflow import backends

    fake = _FakeCupyWithMemory(kernels)
    backend = object.__new__(_cupy.CupyBackend)
    backend.cupy, backend.xp, backend._modules, backend._errors = fake, xp_np, {}, {}
    backend.module = fake.module
    monkeypatch.setitem(backends._instances, "cupy", backend)
    rope = ropeflow.RotaryEmbedding(32, 4096, 50000.0, backend="cupy", precision=precision)
    cos, sin = rope.cos_sin(77, dtype)
    assert cos.dtype == DTYPES[dtype] and cos.shape == (77, 32)
    names = [name for name, _ in fake.calls]
    assert names[0] == _cupy.kernel_name(rope.inv_freq.dtype, "float32" if precision == "reference" else "float64")
    assert names[1:] == [_cupy.cast_kernel_name("float32" if precision == "reference" else "float64", dtype)] * 2
    (table,) = {id(t): t for t in rope._tables.values()}.values()
    master_cos, master_sin = table._snapshot.cos[:77], table._snapshot.sin[:77]
    freqs = compute_frequencies(None, 32, 50000.0, 4096, precision)
    want_cos, want_sin = np.empty(master_cos.shape, master_cos.dtype), np.empty(master_cos.shape, master_cos.dtype)
    numba.build_rows(freqs, 0, want_cos, want_sin)
    from ropeflow.backends._numba import _encode

    for got, master, numba_master in ((cos, master_cos, want_cos), (sin, master_sin, want_sin)):
        assert ulps(master, numba_master).max() <= 1  # the kernel's storage table is numba's to 1 ulp
        if dtype == "float16":
            want = master.astype(np.float16)
        else:
            want = numba_encoder(_encode)(master.astype(np.float64).ravel()).view(BF16).reshape(got.shape)
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))  # one rounding of the master


def test_row_order_follows_the_strides(numba):
    """The rotation kernel walks token-major memory (head stride below seq stride) in (batch, seq, head) row
    order and everything else in (batch, head, seq) order (issue 16): the "transposed" and "fused_qkv"
    scenarios of the bit-for-bit test above launch the first order, the others the second."""
    head_major = np.zeros((2, 3, 4, 32), np.float32)
    token_major = np.zeros((2, 4, 3, 32), np.float32).transpose(0, 2, 1, 3)
    assert not _cupy.token_major_order(head_major)
    assert _cupy.token_major_order(token_major)
    assert not _cupy.token_major_order(token_major[:, :1])  # one head: no order to choose
    assert not _cupy.token_major_order(token_major[:, :, :1])  # one position (decode)
    for name in SCENARIOS:
        arena, tensors, _, cos, sin, positions, rotary_dim, inverse = build_case(numba, name, "half", "float32",
                                                                                 "float32")
        error = arena.array((3,), np.int64)
        launch = launch_for(tensors, cos, sin, positions, "half", rotary_dim, inverse, error)
        assert int(launch.args[-2]) == (name in ("transposed", "fused_qkv")), name
