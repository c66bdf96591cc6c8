"""``ropeflow.warmup`` and ``ropeflow compile``: each case compiles the kernel it names, in this process or
in others that share Numba's on-disk cache; bad arguments are refused."""

from __future__ import annotations

import numpy as np
import pytest

import ropeflow
from ropeflow import warmup as W

pytestmark = pytest.mark.skipif("numba" not in ropeflow.available_backends(), reason="numba missing")


def _kernel_arg_types(case: W.WarmupCase) -> list:
    """The argument types of the kernel signatures (serial twin for decode, parallel kernel for prefill)
    compiled in this process for the case's input."""
    from ropeflow.backends import _numba

    kernel = _numba._apply_tiles.serial if case.size == "decode" else _numba._apply_tiles.parallel
    return [sig for sig in kernel.signatures]


def _expected_x_type(case: W.WarmupCase):
    from numba import types

    from ropeflow.backends import _numba

    # bfloat16 rows travel as uint32 words of two channels where the CPU takes them so (unit-stride rows,
    # parallel work)
    bfloat16 = types.uint32 if _numba.BF16_WORDS and case.size == "prefill" else types.int16
    raw = {"float16": types.uint16, "bfloat16": bfloat16, "float32": types.float32, "float64": types.float64}
    layout = "A" if case.variant == "strided" else "C"
    return types.Array(raw[case.dtype], 4, layout, readonly=case.variant == "read-only")


def test_cases_cover_every_dtype_table_and_variant():
    cases = W.warmup_cases(("float32", "float64"))
    decode = {(c.dtype, c.table, c.variant) for c in cases if c.size == "decode"}
    tables = {"float32": W.TABLE_DTYPES, "float64": ("float64",)}  # float64 inputs widen float32 tables
    assert decode == {(d, t, v) for d in ("float32", "float64") for t in tables[d] for v in W.VARIANTS}
    prefill = [(c.dtype, c.table, c.variant) for c in cases if c.size == "prefill"]
    assert prefill == [("float32", "float32", "contiguous"), ("float64", "float64", "contiguous")]
    assert cases[: len(prefill)] == [c for c in cases if c.size == "prefill"]  # the expensive ones first


@pytest.mark.parametrize("case", W.warmup_cases(), ids=str)
def test_each_case_compiles_the_kernel_it_names(case):
    """After compile_case, the kernel holds a signature whose input and table types are the case's (and
    the table travels read-only, as the cached tables do)."""
    from numba import types

    result = W.compile_case(case)
    assert result.case == case and result.seconds >= 0
    table = types.Array(types.float32 if case.table == "float32" else types.float64, 2, "C", readonly=True)
    x_type = _expected_x_type(case)
    found = [sig for sig in _kernel_arg_types(case) if sig[0] == x_type and sig[4] == table]
    assert found, f"{case}: no compiled signature with x {x_type} and table {table}"


def test_user_tables_and_read_only_ids_reuse_the_cached_tables_kernel():
    """Write access is part of a Numba type: a writeable user table or read-only ids would compile another
    kernel, so the launch passes tables read-only and ids writeable, and the results still match."""
    from ropeflow.backends import _numba

    rope = ropeflow.RotaryEmbedding(32, 64, backend="numba")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 32)).astype(np.float32)
    cos, sin = rope.cos_sin(64)
    ids = np.arange(10, dtype=np.int64).reshape(2, 5)
    want = rope.apply(x, position_ids=ids)[0]
    before = set(_numba._apply_tiles.serial.signatures)
    ids.flags.writeable = False
    got_ro_ids = rope.apply(x, position_ids=ids)[0]
    got_own_tables = ropeflow.apply_rotary(x, np.array(cos), np.array(sin), ids, backend="numba")
    assert set(_numba._apply_tiles.serial.signatures) == before
    np.testing.assert_array_equal(got_ro_ids, want)
    np.testing.assert_array_equal(got_own_tables, want)


def test_warmup_in_two_processes_returns_every_case_in_order():
    results = W.warmup("float64", jobs=2)
    assert [r.case for r in results] == W.warmup_cases(("float64",))


@pytest.mark.parametrize("kwargs,name", [({"jobs": 0}, "jobs"), ({"jobs": True}, "jobs"), ({"jobs": 1.5}, "jobs"),
                                         ({"dtypes": ("int8",)}, "dtypes"), ({"dtypes": ("float",)}, "dtypes"),
                                         ({"dtypes": ()}, "dtypes"), ({"dtypes": "f"}, "dtypes")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        W.warmup(**kwargs)


def test_a_dtype_name_alone_is_one_dtype():
    assert W.warmup_cases("float64") == W.warmup_cases(("float64",))


def test_bfloat16_without_ml_dtypes_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(W, "_bfloat16", lambda: None)
    assert all(c.dtype != "bfloat16" for c in W.warmup_cases())  # the default: what can run here
    with pytest.raises(ValueError, match="dtypes: 'bfloat16' needs ml_dtypes"):
        W.warmup_cases(("float32", "bfloat16"))


def test_ropeflow_kernels_lock_their_cache_files():
    from ropeflow.backends import _numba, _numba_cache

    for dispatcher in (_numba._apply_tiles.parallel, _numba._apply_tiles.serial, _numba._rotate_tile_narrow,
                       _numba._exact_pairs):
        assert type(dispatcher._cache._cache_file) is _numba_cache.LockedIndexDataCacheFile


def test_cache_saves_are_one_step_for_other_saves(tmp_path, monkeypatch):
    """Two saves of different keys at once, each from its own cache-file object (as from two processes; flock
    locks open files, so threads show it too): with the lock, neither's index update is lost, and each key
    loads its own data."""
    import threading
    import time

    from numba.core.caching import IndexDataCacheFile

    from ropeflow.backends import _numba_cache

    slow_load = IndexDataCacheFile._load_index

    def load_index_slowly(self):  # widen the read-modify-write window of the index
        overloads = slow_load(self)
        time.sleep(0.05)
        return overloads

    monkeypatch.setattr(IndexDataCacheFile, "_load_index", load_index_slowly)

    def save_both(cls):
        folder = tmp_path / cls.__name__
        folder.mkdir()
        files = [cls(str(folder), "f", ("stamp", 1)) for _ in range(2)]
        errors = []

        def save(f, i):
            try:
                f.save(f"key{i}", f"data{i}")
            except OSError as exc:  # unlocked, both may write the same files at once
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(f, i)) for i, f in enumerate(files)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader = IndexDataCacheFile(str(folder), "f", ("stamp", 1))
        return [reader.load(f"key{i}") for i in range(2)], errors

    assert save_both(_numba_cache.LockedIndexDataCacheFile) == (["data0", "data1"], [])
    loaded, errors = save_both(IndexDataCacheFile)
    assert errors or loaded != ["data0", "data1"]  # the race the lock closes


def test_cli_compile(capsys):
    from ropeflow.cli import main

    assert main(["compile", "--dtype", "float64", "--jobs", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(W.warmup_cases(("float64",))) + 1
    assert out[-1].startswith(f"{len(out) - 1} kernels ready in ")
    assert "prefill float64 x float64 table, contiguous" in out[0]
