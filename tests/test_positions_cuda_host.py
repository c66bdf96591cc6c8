"""Packed batches and M-RoPE through ``rope.cu``, run on the CPU (the harness of test_cuda_host.py).

``RotaryEmbedding.apply`` normalizes packed and M-RoPE positions into ``(batch, seq)`` table rows (and, for
M-RoPE, per-token tables); the CUDA kernel reads that form unchanged. Here the jobs the front end builds on
the host are captured and launched as one fused q + k CUDA launch (the argument tuple ``_cupy.apply_launch``
builds, as ``CupyBackend.apply`` does), every (block, thread) serially, with guard zones around the outputs.
The results must equal the naive references of test_positions.py, and the numba backend bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_host.harness import CXX, Arena, HostKernels
from reference import apply_naive
from test_positions import naive_mrope_apply, naive_packed_positions, rng_values

from ropeflow import RotaryEmbedding, apply
from ropeflow.backends import _cupy

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler on the PATH to build the host execution of "
                                                    "rope.cu")

SHAPES = [None, ((1, 1, 1), (1, 1, 1)), ((2, 3, 1), (3, 2, 1))]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> HostKernels:
    return HostKernels(tmp_path_factory.mktemp("rope_host_positions"))


def captured_jobs(monkeypatch, rope, *args, **kwargs):
    """The (q job, k job) that ``rope.apply`` hands to the backend, and its host result."""
    seen = []
    real_run = apply.RotaryJob.run

    def spy(self, other=None):
        seen.append((self, other))
        real_run(self, other)

    monkeypatch.setattr(apply.RotaryJob, "run", spy)
    result = rope.apply(*args, **kwargs)
    monkeypatch.setattr(apply.RotaryJob, "run", real_run)
    q_job, k_job = seen[0]  # (host backends then run k on its own: a second, k-only record)
    return q_job, k_job, result


def run_on_host_kernel(kernels, q_job, k_job, layout):
    """Launch the CUDA kernel for both jobs at once, on arena copies of q and k; returns (q_out, k_out)."""
    arena = Arena(nbytes=1 << 20, seed=1)
    q = arena.array(q_job.x4.shape, q_job.x4.dtype)
    k = arena.array(k_job.x4.shape, k_job.x4.dtype)
    q[...], k[...] = q_job.x4, k_job.x4
    q_out = arena.array(q.shape, q.dtype)
    k_out = arena.array(k.shape, k.dtype)
    error = arena.array((3,), np.int64)
    outs = []
    for shape in SHAPES:
        error[...] = 0
        before = arena.snapshot()
        launch = _cupy.apply_launch(q, q_out, q_job.cos, q_job.sin, q_job.positions, layout, q_job.rotary_dim,
                                    False, k, k_out, error=error)
        assert launch.grid[2] == 2  # one launch for q and k (grid z: 0 q, 1 k)
        kernels.run(launch, *(shape or (None, None)))
        arena.assert_only_written(before, q_out, k_out, error)
        assert not error.any()
        outs.append((q_out.copy(), k_out.copy()))
    for q_o, k_o in outs[1:]:
        np.testing.assert_array_equal(q_o, outs[0][0])
        np.testing.assert_array_equal(k_o, outs[0][1])
    return outs[0]


@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_packed_batch_on_the_cuda_kernel(kernels, monkeypatch, layout, dtype):
    rope = RotaryEmbedding(32, 4096, 10000.0, backend="numba", layout=layout)
    lengths, offsets = [4, 0, 7, 2], np.array([9, 3, 0, 300])
    cu = np.cumsum([0] + lengths)
    q, k = rng_values((13, 4, 40), 1, dtype), rng_values((13, 2, 32), 2, dtype)
    q_job, k_job, (q_host, k_host) = captured_jobs(monkeypatch, rope, q, k, cu_seqlens=cu, offset=offsets,
                                                   seq_axis=-3)
    np.testing.assert_array_equal(q_job.positions, naive_packed_positions(lengths, offsets)[None])
    q_dev, k_dev = run_on_host_kernel(kernels, q_job, k_job, layout)
    np.testing.assert_array_equal(q_dev.view(np.uint16 if dtype == "float16" else np.uint32),
                                  q_host.transpose(1, 0, 2)[None].view(np.uint16 if dtype == "float16" else np.uint32))
    np.testing.assert_array_equal(k_dev, k_host.transpose(1, 0, 2)[None])
    cos, sin = rope.cos_sin(302)
    for got, x in ((q_dev, q), (k_dev, k)):
        want = apply_naive(x.transpose(1, 0, 2)[None], cos, sin, naive_packed_positions(lengths, offsets)[None],
                           layout, 32)
        eps = float(np.finfo(dtype).eps)
        np.testing.assert_allclose(got.astype(np.float64), want, atol=8 * eps + 4e-7, rtol=eps)


@pytest.mark.parametrize("section,interleaved", [([16, 24, 24], False), ([24, 20, 20], True), ([6, 4, 6], True)])
def test_mrope_on_the_cuda_kernel(kernels, monkeypatch, section, interleaved):
    dim = 2 * sum(section)
    rope = RotaryEmbedding(dim, 32768, 1e6, backend="numba", mrope_section=section, mrope_interleaved=interleaved)
    pos3 = np.random.default_rng(3).integers(0, 20000, (3, 2, 5))
    q, k = rng_values((2, 4, 5, dim), 4), rng_values((2, 2, 5, dim), 5)
    q_job, k_job, (q_host, k_host) = captured_jobs(monkeypatch, rope, q, k, position_ids=pos3)
    assert q_job.cos.shape == (10, dim) and k_job.positions is q_job.positions
    q_dev, k_dev = run_on_host_kernel(kernels, q_job, k_job, "half")
    np.testing.assert_array_equal(q_dev, q_host)
    np.testing.assert_array_equal(k_dev, k_host)
    for got, x in ((q_dev, q), (k_dev, k)):
        want = naive_mrope_apply(x, pos3, rope.inv_freq, section, interleaved)
        np.testing.assert_allclose(got.astype(np.float64), want, atol=4e-6, rtol=0)
