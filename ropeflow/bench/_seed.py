"""The seed's PyTorch code that the benchmarks race against (DeepSeek-V3's ``DeepseekV3RotaryEmbedding``
table build and the LLaMA ``apply_rotary_pos_emb`` rotation), transcribed op for op. Imported only when
torch is installed; ``tests/torch_reference.py`` holds the same code for the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def table_builder(dim: int, base: float, device: str = "cpu") -> Callable[[int], tuple[Any, Any]]:
    """A function building the float32 cos/sin cache for ``seq_len`` positions as the seed's
    ``_set_cos_sin_cache`` does (``inv_freq`` computed once, as in the seed's ``__init__``)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float().to(device) / dim))

    def build(seq_len: int) -> tuple[Any, Any]:
        t = torch.arange(seq_len, device=device, dtype=inv_freq.dtype)
        freqs = torch.outer(t, inv_freq.to(t.device))
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(torch.float32), emb.sin().to(torch.float32)

    return build


def rotate_half(x: Any) -> Any:
    """``concat(-x2, x1)`` of the two halves of the last axis."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_half(x: Any, cos: Any, sin: Any, position_ids: Any, unsqueeze_dim: int = 1) -> Any:
    """LLaMA / GPT-NeoX: ``x * cos[pos] + rotate_half(x) * sin[pos]``."""
    cos = cos[position_ids].unsqueeze(unsqueeze_dim)
    sin = sin[position_ids].unsqueeze(unsqueeze_dim)
    return (x * cos) + (rotate_half(x) * sin)
