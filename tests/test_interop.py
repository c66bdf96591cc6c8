"""Any array in, the same array out (issue 15): torch and JAX arrays, zero-copy, bfloat16 included.

Every result is checked against the NumPy path on the same values (itself tested against the naive
reference in test_apply.py), and for type, dtype, device and memory sharing.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_bad_inputs import collector_paused, instance_state, registry_state

from ropeflow import RotaryEmbedding, apply_rotary

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


def as_numpy(t):
    """A NumPy copy of a torch tensor (bfloat16 via its bits), independent of ropeflow's conversion."""
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
    return t.detach().numpy().copy()


def random_tensor(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(TORCH_DTYPES[dtype])


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_call_returns_memoized_torch_tables(dtype):
    rope = RotaryEmbedding(64, 4096, 10000.0)
    x = random_tensor((1, 4, 10, 64), dtype)
    cos, sin = rope(x)
    assert isinstance(cos, torch.Tensor) and cos.dtype == x.dtype and cos.device == x.device
    assert tuple(cos.shape) == (10, 64)
    want_cos, want_sin = rope(np.zeros((1, 10, 64), as_numpy(x).dtype))
    assert np.array_equal(as_numpy(cos), want_cos) and np.array_equal(as_numpy(sin), want_sin)
    again, _ = rope(x, seq_len=5)
    assert again.data_ptr() == cos.data_ptr()  # a view of one memoized tensor, no copy per call
    like_cos, _ = rope.cos_sin(7, dtype, like=x)
    assert isinstance(like_cos, torch.Tensor) and like_cos.data_ptr() == cos.data_ptr()


def test_tables_do_not_warn_about_read_only_arrays(recwarn):
    rope = RotaryEmbedding(32, 128, 10000.0)
    rope(torch.zeros(3, 32))
    assert not [w for w in recwarn.list if "not writable" in str(w.message)]


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
def test_apply_rotary_torch_matches_numpy(dtype, layout):
    x = random_tensor((2, 4, 6, 32), dtype)
    rope = RotaryEmbedding(32, 64, 10000.0, precision="exact")
    cos, sin = rope.cos_sin(20, "float64")
    pos = torch.tensor([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]])
    got = apply_rotary(x, torch.from_numpy(cos.copy()), torch.from_numpy(sin.copy()), pos, layout=layout)
    want = apply_rotary(as_numpy(x), cos, sin, pos.numpy(), layout=layout)
    assert isinstance(got, torch.Tensor) and got.dtype == x.dtype
    assert np.array_equal(as_numpy(got).view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_out_rotates_the_callers_memory_in_place(dtype):
    x = random_tensor((1, 2, 5, 16), dtype, seed=1)
    want = apply_rotary(as_numpy(x), *RotaryEmbedding(16, 64).cos_sin(5))
    cos, sin = RotaryEmbedding(16, 64).cos_sin(5)
    ptr = x.data_ptr()
    result = apply_rotary(x, cos, sin, out=x)
    assert result is x and x.data_ptr() == ptr
    assert np.array_equal(as_numpy(x).view(np.uint8), want.view(np.uint8))


def test_strided_views_of_a_fused_qkv_buffer():
    """``qkv.view(...)[..., :d]``: q and k are strided views of one buffer, read in place."""
    b, s, hq, hk, d = 2, 7, 8, 2, 64
    qkv = random_tensor((b, s, (hq + 2 * hk) * d), "float32", seed=2)
    view = qkv.view(b, s, hq + 2 * hk, d)
    q, k = view[:, :, :hq], view[:, :, hq:hq + hk]
    rope = RotaryEmbedding(64, 128, 10000.0)
    offsets = torch.tensor([0, 40])
    q_rot, k_rot = rope.apply(q, k, offset=offsets, seq_axis=-3)
    wq, wk = rope.apply(as_numpy(q), as_numpy(k), offset=offsets.numpy(), seq_axis=-3)
    assert isinstance(q_rot, torch.Tensor)
    assert tuple(q_rot.shape) == (b, s, hq, d) and tuple(k_rot.shape) == (b, s, hk, d)
    assert np.array_equal(as_numpy(q_rot), wq) and np.array_equal(as_numpy(k_rot), wk)
    q_ip = q.clone()
    apply_rotary(q_ip, *rope.cos_sin(64), offset=offsets, seq_axis=-3, out=q_ip)
    assert np.array_equal(as_numpy(q_ip), wq)


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_embedding_apply_gqa_with_tensor_positions(dtype):
    q = random_tensor((2, 8, 5, 64), dtype, seed=3)
    k = random_tensor((2, 2, 5, 64), dtype, seed=4)
    pos = torch.tensor([[0, 1, 2, 3, 4], [10, 11, 12, 13, 100]], dtype=torch.int32)
    rope = RotaryEmbedding(64, 64, 10000.0, scaling={"rope_type": "dynamic", "factor": 2.0})
    q_rot, k_rot = rope.apply(q, k, pos)
    rope_np = RotaryEmbedding(64, 64, 10000.0, scaling={"rope_type": "dynamic", "factor": 2.0})
    wq, wk = rope_np.apply(as_numpy(q), as_numpy(k), pos.numpy())
    assert q_rot.dtype == q.dtype and k_rot.dtype == k.dtype
    assert np.array_equal(as_numpy(q_rot).view(np.uint8), wq.view(np.uint8))
    assert np.array_equal(as_numpy(k_rot).view(np.uint8), wk.view(np.uint8))


def _graph_saving(t):
    """A loss whose backward needs ``t``'s current values (``t`` itself does not require grad: it is saved
    for the gradient of a leaf ``w``), and ``w``."""
    w = torch.ones_like(t, requires_grad=True)
    return (t * w).sum(), w


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("how", ["apply in place", "apply q alone in place", "apply into out",
                                 "apply_rotary in place"])
def test_writes_into_tensors_are_seen_by_autograd(dtype, how, monkeypatch):
    """Rotated values written into a caller's tensor through a NumPy view bump its autograd version: a backward
    pass that saved the old values raises torch's error instead of silently computing gradients from the
    rotated ones. Inputs that were only read keep their version. float32 in place takes the torch hot path
    (checked: the general path is disabled for it), the rest the general path."""
    import ropeflow.rotary

    rope = RotaryEmbedding(16, 64)
    q, k = random_tensor((1, 2, 3, 16), dtype, seed=7), random_tensor((1, 1, 3, 16), dtype, seed=8)
    want = rope.apply(as_numpy(q), as_numpy(k), offset=5)  # also builds the table the hot path needs
    if how == "apply in place":
        written, read = (q, k), ()
    elif how == "apply q alone in place":
        written, read, want, k = (q,), (), want[:1], None
    elif how == "apply into out":
        written, read = (torch.zeros_like(q), torch.zeros_like(k)), (q, k)
    else:
        written, read, want = (q,), (), want[:1]
    if dtype == "float32" and how.startswith("apply ") and "in place" in how:
        monkeypatch.setattr(ropeflow.rotary, "make_job", None)  # the general path would fail on it
    loss, _ = _graph_saving(written[0])
    before = [t._version for t in written + read]
    if how == "apply_rotary in place":
        apply_rotary(q, *rope.cos_sin(8), offset=5, out=q)
    else:
        rope.apply(q, k, offset=5, out=written if k is not None else (q, None))
    for t, w in zip(written, want, strict=True):
        assert np.array_equal(as_numpy(t).view(np.uint8), w.view(np.uint8))
    after = [t._version for t in written + read]
    assert all(a > b for a, b in zip(after[:len(written)], before[:len(written)], strict=True))
    assert after[len(written):] == before[len(written):]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_autograd_version_bump_without_the_public_function(monkeypatch):
    """torch before 2.1 has no ``torch.autograd.graph.increment_version``; its private
    ``torch._C._increment_version`` takes one tensor (newer ones take a list, so it is recorded here, not
    run): it gets each written tensor once, and nothing else."""
    monkeypatch.delattr(torch.autograd.graph, "increment_version")
    calls = []
    monkeypatch.setattr(torch._C, "_increment_version", calls.append)
    rope = RotaryEmbedding(16, 64)
    q, k = random_tensor((1, 2, 3, 16), "float32", seed=10), random_tensor((1, 1, 3, 16), "float32", seed=14)
    q_out, k_out = torch.zeros_like(q), torch.zeros_like(k)
    rope.apply(q, k, offset=1, out=(q_out, k_out))
    assert len(calls) == 2 and calls[0] is q_out and calls[1] is k_out
    calls.clear()
    rope.apply(q, k, offset=1, out=(q, k))  # the hot path
    assert len(calls) == 2 and calls[0] is q and calls[1] is k


def test_a_refused_write_leaves_versions_alone():
    """A call that raises writes nothing (the no-trace rule), so no version moves."""
    rope = RotaryEmbedding(16, 64)
    q, k = random_tensor((1, 2, 3, 16), "float32", seed=11), random_tensor((1, 1, 3, 16), "float32", seed=12)
    with pytest.raises(ValueError, match="offset"):
        rope.apply(q, k, offset=-1, out=(q, k))
    with pytest.raises(ValueError):
        apply_rotary(q, *rope.cos_sin(8), offset=7, out=q)  # positions 7-9 past an 8-row table
    assert (q._version, k._version) == (0, 0)


def test_out_refuses_tensors_that_cannot_be_written_through_a_view():
    """A negative-bit view (``torch._neg_view``) has no NumPy view: converting it gives a resolved copy, so a
    write there would never reach the caller's tensor. ``out=`` refuses it by name, before writing anything;
    as an input it is fine."""
    rope = RotaryEmbedding(16, 64)
    q = random_tensor((1, 2, 3, 16), "float32", seed=13)
    neg = torch._neg_view(q.clone())
    before = neg.clone()
    with pytest.raises(TypeError, match=r"^out: a torch negative-bit view.*resolve_neg"):
        apply_rotary(neg, *rope.cos_sin(8), out=neg)
    with pytest.raises(TypeError, match=r"^out\[0\] \(q_out\): a torch negative-bit view"):
        rope.apply(q, out=(neg, None))
    assert torch.equal(neg, before) and neg._version == 0
    got = apply_rotary(neg, *rope.cos_sin(8))  # read: resolved, fine
    want = apply_rotary(as_numpy(neg.resolve_neg()), *rope.cos_sin(8))
    assert np.array_equal(as_numpy(got), want)


def test_out_refuses_inference_tensors_outside_inference_mode():
    """torch forbids in-place updates of inference tensors outside ``torch.inference_mode()``; ropeflow wrote
    them through NumPy views regardless (in place on the hot path too). Refused by name before writing;
    inside inference mode they are written, with the same values as a normal tensor."""
    rope = RotaryEmbedding(16, 64)
    with torch.inference_mode():
        q = random_tensor((1, 2, 3, 16), "float32", seed=14)
        k = random_tensor((1, 1, 3, 16), "float32", seed=15)
        q_out = torch.empty_like(q)
    rope.apply(as_numpy(q.clone()))  # the table exists: in-place calls would take the hot path
    q_before, k_before = q.clone(), k.clone()
    with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): a torch inference tensor.*inference_mode"):
        rope.apply(q, k, out=(q, k))
    with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): a torch inference tensor"):
        rope.apply(q.clone(), out=(q_out, None))
    with pytest.raises(ValueError, match=r"^out: a torch inference tensor"):
        apply_rotary(q, *rope.cos_sin(8), out=q)
    assert torch.equal(q, q_before) and torch.equal(k, k_before)
    want_q, want_k = rope.apply(as_numpy(q), as_numpy(k))
    with torch.inference_mode():
        rope.apply(q, k, out=(q, k))
    assert np.array_equal(as_numpy(q), want_q) and np.array_equal(as_numpy(k), want_k)


def test_out_refuses_tensors_whose_elements_share_memory():
    """An expanded tensor (stride 0) converts to a writeable NumPy view with shared elements: every head would
    write the same memory and only the last result would stay. Refused by name before writing, in place and
    as a separate ``out``, as torch's own ``out=`` refuses it."""
    rope = RotaryEmbedding(16, 64)
    q = random_tensor((1, 2, 3, 16), "float32", seed=15)
    rope.apply(as_numpy(q))  # the table exists: in-place calls would take the hot path, which declines
    base = torch.zeros(1, 1, 3, 16)
    expanded = base.expand(1, 2, 3, 16)
    partly = torch.as_strided(torch.zeros(200), (1, 2, 3, 16), (0, 8, 16, 1))
    for out in (expanded, partly):
        with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): its elements overlap in memory"):
            rope.apply(q, out=(out, None))
        with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): its elements overlap in memory"):
            rope.apply(out, out=(out, None))
        with pytest.raises(ValueError, match=r"^out: its elements overlap in memory"):
            apply_rotary(q, *rope.cos_sin(8), out=out)
        assert not out.any() and out._version == 0


def test_out_refuses_the_cached_tables():
    """torch views of the cached tables are writeable (torch has no read-only flag): ``rope.apply`` refuses
    one as ``out=`` by name, as ``apply_rotary`` refuses an out over its tables, and the cache stays intact."""
    rope = RotaryEmbedding(32, 64)
    cos, sin = rope.cos_sin(16, like=torch.zeros(1))
    before = cos.clone(), sin.clone()
    q = random_tensor((1, 1, 16, 32), "float32", seed=16)
    for table in (cos, sin):
        with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): shares memory with the cached cos/sin"):
            rope.apply(q, out=(table.view(1, 1, 16, 32), None))
        with pytest.raises(ValueError, match=r"^out\[1\] \(k_out\): shares memory with the cached cos/sin"):
            rope.apply(q, q, out=(torch.empty_like(q), table.view(1, 1, 16, 32)))
    assert torch.equal(cos, before[0]) and torch.equal(sin, before[1])


def test_out_refuses_tables_another_embedding_serves():
    """The check covered only the tables the call itself served: a torch view of another embedding's table (or
    of this one's base table after DeepSeek's policy moved on) was written, and that embedding's later calls
    read the rotated values."""
    other = RotaryEmbedding(16, 64, base=20000.0)
    view, _ = other(torch.ones(1, 1, 10, 16))
    before = view.clone()
    rope = RotaryEmbedding(16, 64)
    with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): shares memory with the cached cos/sin tables .*"
                                         r"another embedding"):
        rope.apply(torch.ones(1, 1, 10, 16), out=(view.view(1, 1, 10, 16), None))
    deepseek = RotaryEmbedding(16, 64, scaling={"type": "dynamic", "factor": 2.0}, dynamic_policy="reference")
    base_view, _ = deepseek(torch.ones(1, 1, 10, 16))
    deepseek(torch.ones(1, 1, 100, 16))  # now serves the scaled table; the base one stays shared
    with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): shares memory with the cached cos/sin tables"):
        deepseek.apply(torch.ones(1, 1, 10, 16), out=(base_view.view(1, 1, 10, 16), None))
    assert torch.equal(view, before)


@pytest.mark.parametrize("policy", ["stateless", "hf"])  # "reference" keeps the scaled table: no overlap
def test_refused_table_view_out_leaves_the_dynamic_state(policy):
    """The check of ``out`` against the tables ran after the tables were served: the refused call had already
    committed the dynamic policy's state (transformers' policy reset to the base frequencies). It now runs
    before anything is committed."""
    rope = RotaryEmbedding(8, 64, scaling={"type": "dynamic", "factor": 2.0}, dynamic_policy=policy)
    view, _ = rope(torch.ones(1, 1, 10, 8))
    rope(torch.ones(1, 1, 100, 8))
    with collector_paused():
        before = instance_state(rope), registry_state()
        with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): shares memory with the cached cos/sin"):
            rope.apply(torch.ones(1, 1, 10, 8), out=(view.view(1, 1, 10, 8), None))
        assert (instance_state(rope), registry_state()) == before


def test_clear_errors_for_tensors_that_cannot_come_in():
    rope = RotaryEmbedding(16, 64)
    with pytest.raises(TypeError, match=r"q: the tensor requires grad.*detach"):
        rope.apply(torch.zeros(1, 1, 2, 16, requires_grad=True))
    with pytest.raises(TypeError, match=r"x: a torch tensor on meta.*cpu\(\)"):
        rope(torch.zeros(2, 16, device="meta"))
    with pytest.raises(TypeError, match=r"position_ids: expected an integer array, got dtype float32"):
        rope.apply(torch.zeros(1, 1, 2, 16), position_ids=torch.zeros(2))
    assert rope.cache_info()["builds"] == 0


def test_import_is_lazy_about_frameworks():
    code = ("import sys, ropeflow, numpy as np; r = ropeflow.RotaryEmbedding(8, 16); r.apply(np.zeros((1, 2, 8)));"
            "print(sorted(m for m in ('torch', 'jax', 'cupy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------ JAX
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_jax_arrays_in_and_out(dtype):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    rng = np.random.default_rng(5)
    npdtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    xn = rng.standard_normal((1, 4, 6, 32)).astype(npdtype)
    x = jnp.asarray(xn)
    rope = RotaryEmbedding(32, 64, 10000.0)
    q_rot, _ = rope.apply(x, offset=3)
    assert isinstance(q_rot, jax.Array) and q_rot.dtype == x.dtype
    want, _ = rope.apply(xn, offset=3)
    assert np.array_equal(np.asarray(q_rot).view(np.uint8), want.view(np.uint8))
    cos, _ = rope(x)
    assert isinstance(cos, jax.Array) and cos.dtype == x.dtype and cos.shape == (6, 32)
    with pytest.raises(TypeError, match=r"out: JAX arrays are immutable"):
        apply_rotary(x, *rope.cos_sin(6), out=x)


def test_traced_jax_values_are_named():
    """Inside jax.jit the arrays are tracers without data: JAX's own ConcretizationTypeError ("The devices()
    method was called on traced array") escaped, naming none of ropeflow's arguments."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rope = RotaryEmbedding(16, 64)
    concrete = jnp.ones((1, 2, 5, 16), jnp.float32)
    calls = {"q": lambda q: rope.apply(q, offset=3)[0], "x": lambda q: rope(q)[0],
             "like": lambda q: rope.cos_sin(5, like=q)[0],
             "position_ids": lambda q: rope.apply(concrete, None, jnp.arange(5) + q[0, 0, 0, 0].astype(jnp.int32))[0]}
    for name, call in calls.items():
        with pytest.raises(TypeError, match=rf"^{name}: a traced JAX value \(inside jax.jit"):
            jax.jit(call)(concrete)
    assert rope.cache_info()["builds"] == 0


def test_q_and_k_from_different_libraries_are_refused():
    """Both were converted to NumPy before the one-library check, so it never fired: NumPy q with torch k
    returned a NumPy k, torch q with NumPy k a torch k."""
    rope = RotaryEmbedding(16, 64)
    q = random_tensor((1, 2, 3, 16), "float32", seed=21)
    for a, b, lib_k, lib_q in ((as_numpy(q), q, "torch", "numpy"), (q, as_numpy(q), "numpy", "torch")):
        with pytest.raises(TypeError, match=rf"^k: a {lib_k} array with a {lib_q} q; use one library"):
            rope.apply(a, b)
    assert rope.cache_info()["builds"] == 0


def test_float64_jax_tables_without_x64_are_refused():
    jax = pytest.importorskip("jax")
    rope = RotaryEmbedding(16, 64)
    x64 = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", False)
        with pytest.raises(TypeError, match=r"^dtype: float64 tables as JAX arrays need JAX's 64-bit mode"):
            rope.cos_sin(8, "float64", like=jax.numpy.ones(2))
        jax.config.update("jax_enable_x64", True)
        assert rope.cos_sin(8, "float64", like=jax.numpy.ones(2))[0].dtype == jax.numpy.float64
    finally:
        jax.config.update("jax_enable_x64", x64)
