"""The cache (DESIGN 1.6): hits compute nothing, growth computes only new rows, identical configurations
share storage, and concurrent callers all get correct tables."""

from __future__ import annotations

import random
import threading

import numpy as np
from conftest import ULP32, assert_close, input_array, to_numpy
from reference import tables_from_inv_freq

import ropeflow
from ropeflow.scaling import standard_inv_freq


def test_hit_computes_nothing(backend):
    rope = ropeflow.RotaryEmbedding(64, 4096, 12345.0, backend=backend)
    x = input_array(backend, (1, 1, 100, 64), np.float32)
    rope(x)
    before = rope.cache_info()
    for n in (1, 50, 100):
        rope(x, seq_len=n)
    assert rope.cache_info() == before
    assert before["builds"] == 1 and before["rows_computed"] == 100


def test_growth_computes_only_new_rows_geometrically(backend):
    rope = ropeflow.RotaryEmbedding(32, 4096, 23456.0, backend=backend)
    x = input_array(backend, (1, 32), np.float32)
    rope(x, seq_len=100)
    rope(x, seq_len=150)  # grows to min(max(150, 200), 300) = 200: 100 new rows
    info = rope.cache_info()
    assert info == {"tables": 1, "builds": 2, "rows_computed": 200, "casts": 0}
    assert rope.max_seq_len_cached == 200
    rope(x, seq_len=180)  # hit
    assert rope.cache_info()["builds"] == 2
    rope(x, seq_len=1000)  # never more than twice the largest length asked
    assert rope.max_seq_len_cached <= 2000
    cos, sin = rope(x, seq_len=1000)
    ncos, nsin = tables_from_inv_freq(standard_inv_freq(32, 23456.0), 0, 1000)
    assert_close(to_numpy(cos), ncos, atol=4 * ULP32)
    assert_close(to_numpy(sin), nsin, atol=4 * ULP32)


def test_decode_loop_builds_logarithmically():
    rope = ropeflow.RotaryEmbedding(16, 8192, 34567.0)
    for n in range(1, 8193):
        rope.cos_sin(n)
    info = rope.cache_info()
    assert info["builds"] <= 15 and info["rows_computed"] <= 2 * 8192


def test_identical_configurations_share_one_table(backend):
    layers = [ropeflow.RotaryEmbedding(64, 163840, 10000.0, backend=backend) for _ in range(61)]
    x = input_array(backend, (1, 1, 512, 64), np.float32)
    tables = [layer(x)[0] for layer in layers]
    if backend != "cupy":
        assert all(np.shares_memory(tables[0], t) for t in tables[1:])
    else:
        assert all(t.data.ptr == tables[0].data.ptr for t in tables[1:])
    assert layers[0].cache_info()["builds"] == 1  # one table, built once, seen by all 61


def test_casts_are_memoized(backend):
    rope = ropeflow.RotaryEmbedding(64, 2048, 45678.0, backend=backend)
    x16 = input_array(backend, (1, 1, 64, 64), np.float16)
    a, _ = rope(x16)
    b, _ = rope(x16, seq_len=32)
    assert rope.cache_info()["casts"] == 1
    assert to_numpy(b).tolist() == to_numpy(a[:32]).tolist()


def test_threads_get_correct_tables(backend):
    rope = ropeflow.RotaryEmbedding(32, 4096, 56789.0, backend=backend)
    expected_cos, _ = tables_from_inv_freq(standard_inv_freq(32, 56789.0), 0, 3000)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(25):
                n = rng.randint(1, 3000)
                dtype = rng.choice([np.float32, np.float16])
                cos, sin = rope(input_array(backend, (1, 32), dtype), seq_len=n)
                assert cos.shape == (n, 32) and cos.dtype == dtype
                tol = 4 * ULP32 if dtype == np.float32 else 2.0**-10
                assert np.abs(to_numpy(cos).astype(np.float64) - expected_cos[:n]).max() <= tol
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert rope.max_seq_len_cached <= 2 * 3000
