"""Positions benchmark: M-RoPE apply and a packed (varlen) batch, against a per-sequence loop and transformers.

    python benchmarks/bench_positions.py                  # CPU: numba (and numpy), torch + transformers if installed
    python benchmarks/bench_positions.py --backend cupy   # GPU: the CUDA kernel, torch on CUDA if available

Cases (float32; every timing includes building the per-call position form):

* ``mrope``: Qwen2.5-VL-7B attention at 4096 tokens: q ``(1, 28, 4096, 128)``, k ``(1, 4, 4096, 128)``, position
  ids ``(3, 1, 4096)`` from :func:`ropeflow.mrope_position_ids` (text, a 1288-token image, text, a 4-frame
  video, text). ropeflow: ``rope.apply(q, k, position_ids=pos3)`` (per-token tables composed, then one kernel
  call for q and k). transformers: ``Qwen2_5_VLRotaryEmbedding(x, pos3)`` then ``apply_rotary_pos_emb`` (its
  PyTorch code). Also the tables alone: ``rope(x, position_ids=pos3)`` vs the module's forward.
* ``packed``: 16 sequences of 32..512 tokens (4096 in all) at per-sequence offsets (chunked prefill), q
  ``(4096, 32, 128)``, k ``(4096, 8, 128)``. ropeflow: one ``rope.apply(q, k, cu_seqlens=..., offset=...,
  seq_axis=-3)``; a per-sequence loop: ``rope.apply`` on each sequence's slice; transformers:
  ``LlamaRotaryEmbedding(x, position_ids)`` with the packed position row, then ``apply_rotary_pos_emb``
  (``unsqueeze_dim=2``), which is how transformers rotates packed batches.

CPU: best of ``--repeats`` (default 7). GPU: median of ``--repeats`` (default 30) after a warm-up, CUDA
events. Ratios are measured in the same run. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "benchmarks")]

from _common import best_of, cupy_median, describe_cpu, run, torch_cuda_median  # noqa: E402

import ropeflow  # noqa: E402

HEAD_DIM, THETA, MAX_POS = 128, 1000000.0, 128000
SECTION = [16, 24, 24]
MROPE_Q, MROPE_K = (1, 28, 4096, 128), (1, 4, 4096, 128)
PACKED_HEADS = (32, 8)
N_SEQS, TOTAL = 16, 4096


def mrope_ids() -> np.ndarray:
    """(3, 1, 4096) ids of a text / image / text / video / text sequence (merge size 2)."""
    image, video = (1, 56, 92), (4, 24, 28)  # 28 * 46 = 1288 image tokens; 4 * 12 * 14 = 672 video tokens
    n_image, n_video = image[1] * image[2] // 4, video[0] * video[1] * video[2] // 4
    text = TOTAL - n_image - n_video
    types = np.array([0] * 100 + [1] * n_image + [0] * 30 + [2] * n_video + [0] * (text - 130))
    ids, _ = ropeflow.mrope_position_ids(types, [image], [video], tokens_per_second=2, second_per_grid_ts=[1.0])
    return ids


def packed_batch(rng) -> tuple[np.ndarray, np.ndarray, list[int]]:
    cuts = np.sort(rng.choice(np.arange(32, TOTAL - 32), N_SEQS - 1, replace=False))
    lengths = np.diff(np.concatenate([[0], cuts, [TOTAL]]))
    while lengths.min() < 32 or lengths.max() > 512:  # 16 sequences of 32..512 tokens
        cuts = np.sort(rng.choice(np.arange(32, TOTAL - 32), N_SEQS - 1, replace=False))
        lengths = np.diff(np.concatenate([[0], cuts, [TOTAL]]))
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    offsets = rng.integers(0, 8192, N_SEQS)
    return cu, offsets, lengths.tolist()


def _transformers():
    try:
        import torch
        from transformers.models.llama.configuration_llama import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding, apply_rotary_pos_emb
    except ImportError:
        return None
    import transformers

    qwen = Qwen2_5_VLRotaryEmbedding(Qwen2_5_VLTextConfig(
        hidden_size=28 * HEAD_DIM, num_attention_heads=28, max_position_embeddings=MAX_POS,
        rope_parameters={"rope_type": "default", "mrope_section": SECTION, "rope_theta": THETA}))
    llama = LlamaRotaryEmbedding(LlamaConfig(hidden_size=32 * HEAD_DIM, num_attention_heads=32,
                                             max_position_embeddings=MAX_POS, rope_theta=THETA))
    return torch, transformers.__version__, qwen, apply_rotary_pos_emb, llama, llama_apply


def cpu_main(repeats: int) -> None:
    tf = _transformers()
    torch = tf[0] if tf else None
    print(f"machine: {describe_cpu()}; numba {_numba_version()}"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {tf[1]}" if tf
             else ", torch/transformers absent"))
    print(f"best of {repeats}; float32; q and k rotated; ratios = other / ropeflow numba, same run\n")
    rng = np.random.default_rng(0)

    # ---------------------------------------------------------------------------------------- M-RoPE
    pos3 = mrope_ids()
    q = rng.standard_normal(MROPE_Q).astype(np.float32)
    k = rng.standard_normal(MROPE_K).astype(np.float32)
    rows = []
    for backend in ("numba", "numpy"):
        rope = ropeflow.RotaryEmbedding(HEAD_DIM, MAX_POS, THETA, backend=backend, mrope_section=SECTION)
        rope.cos_sin(int(pos3.max()) + 1)
        rows.append((f"ropeflow {backend} apply", best_of(lambda: rope.apply(q, k, position_ids=pos3), repeats,
                                                          warmup=True)))
        if backend == "numba":
            t_tables = best_of(lambda: rope(q, position_ids=pos3), repeats, warmup=True)
            plain = ropeflow.RotaryEmbedding(HEAD_DIM, MAX_POS, THETA, backend=backend)
            rows.append(("ropeflow numba plain RoPE apply (same q, k; text ids (1, 4096))",
                         best_of(lambda: plain.apply(q, k, position_ids=pos3[0]), repeats, warmup=True)))
    if tf:
        _, _, qwen, qwen_apply, _, _ = tf
        tq, tk, tp = torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(pos3)

        def hf_mrope():
            with torch.no_grad():
                cos, sin = qwen(tq, tp)
                return qwen_apply(tq, tk, cos, sin)

        def hf_tables():
            with torch.no_grad():
                return qwen(tq, tp)

        rows.append(("transformers Qwen2_5_VLRotaryEmbedding + apply_rotary_pos_emb", best_of(hf_mrope, repeats,
                                                                                              warmup=True)))
    _report(f"M-RoPE apply, q {MROPE_Q}, k {MROPE_K}, ids (3, 1, {TOTAL})", rows)
    table_rows = [("ropeflow numba rope(x, position_ids=pos3)", t_tables)]
    if tf:
        table_rows.append(("transformers Qwen2_5_VLRotaryEmbedding(x, pos3)", best_of(hf_tables, repeats,
                                                                                      warmup=True)))
    _report("M-RoPE tables (1, 4096, 128) cos and sin", table_rows)

    # ---------------------------------------------------------------------------------------- packed
    cu, offsets, lengths = packed_batch(rng)
    q = rng.standard_normal((TOTAL, PACKED_HEADS[0], HEAD_DIM)).astype(np.float32)
    k = rng.standard_normal((TOTAL, PACKED_HEADS[1], HEAD_DIM)).astype(np.float32)
    rope = ropeflow.RotaryEmbedding(HEAD_DIM, MAX_POS, THETA, backend="numba")
    rope.cos_sin(8192 + 512)

    def per_sequence():
        for i in range(N_SEQS):
            sl = slice(int(cu[i]), int(cu[i + 1]))
            rope.apply(q[sl], k[sl], offset=int(offsets[i]), seq_axis=-3)

    rows = [("ropeflow numba, one call (cu_seqlens)",
             best_of(lambda: rope.apply(q, k, cu_seqlens=cu, offset=offsets, seq_axis=-3), repeats, warmup=True)),
            ("ropeflow numba, a loop over the 16 sequences", best_of(per_sequence, repeats, warmup=True))]
    if tf:
        _, _, _, _, llama, llama_apply = tf
        tq, tk = torch.from_numpy(q)[None], torch.from_numpy(k)[None]  # (1, total, heads, dim)
        pos = torch.from_numpy(ropeflow.positions_from_cu_seqlens(cu, offsets))[None]

        def hf_packed():
            with torch.no_grad():
                cos, sin = llama(tq, pos)
                return llama_apply(tq, tk, cos, sin, unsqueeze_dim=2)

        rows.append(("transformers LlamaRotaryEmbedding + apply_rotary_pos_emb (packed position row)",
                     best_of(hf_packed, repeats, warmup=True)))
    _report(f"packed batch: {N_SEQS} sequences of {min(lengths)}..{max(lengths)} tokens, q ({TOTAL}, "
            f"{PACKED_HEADS[0]}, {HEAD_DIM}), k ({TOTAL}, {PACKED_HEADS[1]}, {HEAD_DIM})", rows)


def gpu_main(repeats: int) -> None:
    import cupy

    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except ImportError:
        torch, torch_cuda = None, False
    tf = _transformers() if torch_cuda else None
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    print(f"device: {props['name'].decode()}, cupy {cupy.__version__}"
          + (f", torch {torch.__version__}, transformers {tf[1]}" if tf else ", torch CUDA/transformers absent"))
    print(f"median of {repeats} after warm-up (CUDA events); float32; ratios = other / ropeflow, same run\n")
    rng = np.random.default_rng(0)

    pos3 = mrope_ids()
    q_h = rng.standard_normal(MROPE_Q).astype(np.float32)
    k_h = rng.standard_normal(MROPE_K).astype(np.float32)
    q, k, p3 = cupy.asarray(q_h), cupy.asarray(k_h), cupy.asarray(pos3)
    rope = ropeflow.RotaryEmbedding(HEAD_DIM, MAX_POS, THETA, backend="cupy", mrope_section=SECTION)
    rope.apply(q, k, position_ids=p3)
    rows = [("ropeflow cupy apply", cupy_median(lambda: rope.apply(q, k, position_ids=p3), repeats))]
    if tf:
        _, _, qwen, qwen_apply, _, _ = tf
        qwen = qwen.cuda()
        tq, tk, tp = torch.from_dlpack(q), torch.from_dlpack(k), torch.from_dlpack(p3)

        def hf_mrope():
            with torch.no_grad():
                cos, sin = qwen(tq, tp)
                return qwen_apply(tq, tk, cos, sin)

        rows.append(("transformers Qwen2_5_VLRotaryEmbedding + apply_rotary_pos_emb",
                     torch_cuda_median(hf_mrope, repeats)))
    _report(f"M-RoPE apply, q {MROPE_Q}, k {MROPE_K}", rows)

    cu, offsets, lengths = packed_batch(rng)
    q = cupy.asarray(rng.standard_normal((TOTAL, PACKED_HEADS[0], HEAD_DIM)).astype(np.float32))
    k = cupy.asarray(rng.standard_normal((TOTAL, PACKED_HEADS[1], HEAD_DIM)).astype(np.float32))
    rope = ropeflow.RotaryEmbedding(HEAD_DIM, MAX_POS, THETA, backend="cupy")
    rope.cos_sin(8192 + 512)
    cu_d, off_d = cupy.asarray(cu), cupy.asarray(offsets)

    def per_sequence():
        for i in range(N_SEQS):
            sl = slice(int(cu[i]), int(cu[i + 1]))
            rope.apply(q[sl], k[sl], offset=int(offsets[i]), seq_axis=-3)

    rows = [("ropeflow cupy, one call (cu_seqlens on the device)",
             cupy_median(lambda: rope.apply(q, k, cu_seqlens=cu_d, offset=off_d, seq_axis=-3), repeats)),
            ("ropeflow cupy, a loop over the 16 sequences", cupy_median(per_sequence, repeats))]
    if tf:
        _, _, _, _, llama, llama_apply = tf
        llama = llama.cuda()
        tq, tk = torch.from_dlpack(q)[None], torch.from_dlpack(k)[None]
        pos = torch.as_tensor(ropeflow.positions_from_cu_seqlens(cu, offsets), device="cuda")[None]

        def hf_packed():
            with torch.no_grad():
                cos, sin = llama(tq, pos)
                return llama_apply(tq, tk, cos, sin, unsqueeze_dim=2)

        rows.append(("transformers LlamaRotaryEmbedding + apply_rotary_pos_emb", torch_cuda_median(hf_packed,
                                                                                                   repeats)))
    _report(f"packed batch: {N_SEQS} sequences of {min(lengths)}..{max(lengths)} tokens", rows)


def _numba_version() -> str:
    try:
        import numba

        return numba.__version__
    except ImportError:
        return "absent"


def _report(title: str, rows: list[tuple[str, float]]) -> None:
    base = rows[0][1]
    print(title)
    for name, t in rows:
        print(f"  {name:78s} {t * 1e3:9.2f} ms  {t / base:6.2f}x")
    print()


if __name__ == "__main__":
    run(__doc__, cpu_main, gpu_main)
