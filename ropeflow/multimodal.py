"""M-RoPE position ids for text interleaved with images and videos (Qwen2-VL's ``get_rope_index``).

A multimodal sequence is runs of text tokens and runs of vision tokens. Text tokens advance one position per
token on all three axes (temporal, height, width). A vision grid of ``(t, h, w)`` patches, merged
``spatial_merge_size``-by-``spatial_merge_size`` into ``t * (h // m) * (w // m)`` tokens, starts at the
current position ``p``: token ``(i, y, x)`` gets ``(p + floor(i * time_interval), p + y, p + x)``; the text after
it starts at ``p + max(h, w) // m`` (transformers 5; ``advance="max"``: one past the grid's largest position,
as transformers 4, the original Qwen code and vLLM do; the two differ only for videos whose temporal extent
exceeds their spatial one).

Covered: Qwen2-VL (``time_interval`` 1), Qwen2.5-VL (videos: ``time_interval = tokens_per_second *
second_per_grid_t``, in float32 as transformers computes it; still images 1), Qwen3-VL / Qwen3.5
(``split_video_frames=True``: a video of ``t`` frames is ``t`` grids of one frame, each its own vision run
between timestamp text), left or right padding through ``attention_mask``. Not covered: audio (Qwen2.5-Omni).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._interop import from_native, to_native

ADVANCES = ("spatial", "max")


def _host_array(value: Any, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    """``value`` (array, tensor or nested lists) as a host NumPy array of ``ndim`` dimensions; an empty list
    gives an empty int64 array (NumPy would make it float64)."""
    native = to_native(value, name)[0]
    if type(native).__module__.startswith("cupy"):
        native = native.get()
    if isinstance(native, (str, bytes)) or native is None:
        raise TypeError(f"{name}: expected an integer array, got {value!r}")
    try:
        arr = np.asarray(native)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected an integer array, got {value!r} ({exc})") from None
    if arr.size == 0 and arr.dtype == np.float64 and not isinstance(native, np.ndarray):
        arr = arr.astype(np.int64)  # [] or [[]]: no values, so no dtype of their own
    if arr.ndim not in ndim:
        raise ValueError(f"{name}: expected {' or '.join(f'{n}-D' for n in ndim)}, got shape {arr.shape}")
    return arr


def _host_ints(value: Any, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    """``value`` as a host int64 array of ``ndim`` dimensions (bool counts as 0/1; unsigned values past
    int64 are refused, not wrapped)."""
    arr = _host_array(value, name, ndim)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: values must be below 2**63, got {int(arr.max())}")
    return arr.astype(np.int64)


def _host_mask(value: Any, n_batch: int, n_seq: int) -> np.ndarray:
    """``attention_mask`` as a ``(n_batch, n_seq)`` bool array: nonzero marks a real token (transformers'
    ``attention_mask.bool()``), for bool, integer and float masks; NaN is refused."""
    arr = _host_array(value, "attention_mask", (1, 2))
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.shape != (n_batch, n_seq):
        raise ValueError(f"attention_mask: expected shape {(n_batch, n_seq)} like token_types, got {arr.shape}")
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ValueError("attention_mask: NaN is neither a real token (nonzero) nor padding (0)")
    elif arr.dtype.kind not in "biu":
        raise TypeError(f"attention_mask: expected a bool, integer or float array, got dtype {arr.dtype}")
    return arr != 0


def _grids(value: Any, name: str, merge: int) -> np.ndarray:
    if value is None:
        return np.zeros((0, 3), np.int64)
    grids = _host_ints(value, name, (1, 2))
    if grids.shape in ((0,), (0, 3)):  # [] or an empty (n, 3) array: no grids
        return np.zeros((0, 3), np.int64)
    if grids.ndim == 1:
        grids = grids[None]
    if grids.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (n, 3) of (t, h, w) patch counts, got {grids.shape}")
    if grids.size and grids.min() < 1:
        raise ValueError(f"{name}: (t, h, w) must be >= 1, got {grids.tolist()}")
    bad = (grids[:, 1] % merge != 0) | (grids[:, 2] % merge != 0)
    if bad.any():
        raise ValueError(f"{name}: h and w must be multiples of spatial_merge_size={merge}, got "
                         f"{grids[bad][0].tolist()}")
    return grids


def _vision_ids(start: int, t: int, h: int, w: int, interval: np.float32 | None) -> np.ndarray:
    """``(3, t * h * w)`` ids of one merged grid at ``start`` (transformers' ``get_vision_position_ids``)."""
    if interval is None:
        temporal = np.arange(t, dtype=np.int64)
    else:  # float32, as torch: arange(t) * time_interval, truncated by .long()
        steps = np.arange(t, dtype=np.float32) * interval
        if not (np.isfinite(steps[-1]) and steps[-1] < 2.0**62):
            raise ValueError(f"tokens_per_second * second_per_grid_ts: a video's time step {float(interval)!r} "
                             f"gives temporal positions up to {float(steps[-1])!r}; they must stay below 2**62")
        temporal = steps.astype(np.int64)
    ids = np.empty((3, t, h, w), np.int64)
    ids[0] = temporal[:, None, None] + start
    ids[1] = (np.arange(h, dtype=np.int64) + start)[None, :, None]
    ids[2] = (np.arange(w, dtype=np.int64) + start)[None, None, :]
    return ids.reshape(3, -1)


def _seconds(second_per_grid_ts: Any) -> list[float]:
    """``second_per_grid_ts`` as a list of floats, each finite and >= 0 (TypeError / ValueError naming it)."""
    values = np.asarray(to_native(second_per_grid_ts, "second_per_grid_ts")[0]).reshape(-1)
    if values.dtype.kind not in "fiu" or values.dtype == np.bool_:
        raise TypeError(f"second_per_grid_ts: expected numbers, got {second_per_grid_ts!r} (dtype {values.dtype})")
    values = values.astype(np.float64)
    bad = ~(np.isfinite(values) & (values >= 0))
    if bad.any():
        raise ValueError(f"second_per_grid_ts: values must be finite and >= 0, got {values[bad][0]!r} at index "
                         f"{int(np.argmax(bad))}")
    return values.tolist()


def mrope_position_ids(
    token_types: Any,
    image_grid_thw: Any = None,
    video_grid_thw: Any = None,
    *,
    spatial_merge_size: int = 2,
    tokens_per_second: float | None = None,
    second_per_grid_ts: Sequence[float] | None = None,
    split_video_frames: bool = False,
    attention_mask: Any = None,
    advance: str = "spatial",
) -> tuple[Any, Any]:
    """M-RoPE position ids ``(3, batch, seq)`` and the decoding deltas ``(batch,)`` (both int64).

    token_types: ``(batch, seq)`` or ``(seq,)`` integers, 0 text, 1 image, 2 video (transformers'
        ``mm_token_type_ids``; vision-start/end and timestamp tokens are text).
    image_grid_thw, video_grid_thw: ``(n, 3)`` patch counts ``(t, h, w)`` of the images / videos, in order of
        appearance over the whole batch (the processor's ``image_grid_thw`` / ``video_grid_thw``). Each vision
        run of ``token_types`` consumes the next grids until it is covered; every grid must be used.
    spatial_merge_size: the vision tower's ``spatial_merge_size`` (2 for every Qwen-VL): ``h`` and ``w`` are
        divided by it.
    tokens_per_second, second_per_grid_ts: Qwen2.5-VL's video timing: video temporal steps are
        ``tokens_per_second * second_per_grid_ts[v]`` (float32) instead of 1; ``second_per_grid_ts=None``
        means 1 second per grid. Images always step by 1.
    split_video_frames: Qwen3-VL / Qwen3.5: every video frame is its own grid ``(1, h, w)``.
    attention_mask: ``(batch, seq)``, 1 for real tokens; padded slots get position 0.
    advance: ``"spatial"`` (transformers 5) or ``"max"`` (transformers 4 / vLLM): see the module docstring.

    Returns ``(position_ids, deltas)``: decoding token ``n`` (0-based over the real tokens, ``n >= seq``) of
    row ``b`` then sits at position ``n + deltas[b]`` on every axis, i.e. ``rope.apply(q, k, offset=n +
    deltas)``. NumPy arrays (torch tensors for torch ``token_types``).

        >>> ids, deltas = mrope_position_ids([0, 0, 1, 1, 1, 1, 0], image_grid_thw=[[1, 4, 4]])
        >>> ids[:, 0].tolist()
        [[0, 1, 2, 2, 2, 2, 4], [0, 1, 2, 2, 3, 3, 4], [0, 1, 2, 3, 2, 3, 4]]
        >>> deltas.tolist()
        [-2]
    """
    origin = to_native(token_types, "token_types")[1]
    types = _host_ints(token_types, "token_types", (1, 2))
    if types.ndim == 1:
        types = types[None]
    n_batch, n_seq = types.shape
    if types.size and (types.min() < 0 or types.max() > 2):
        raise ValueError(f"token_types: values must be 0 (text), 1 (image) or 2 (video), got "
                         f"{sorted(set(np.unique(types).tolist()) - {0, 1, 2})}")
    if isinstance(spatial_merge_size, bool) or not isinstance(spatial_merge_size, (int, np.integer)) \
            or not 1 <= spatial_merge_size < 2**63:
        raise ValueError(f"spatial_merge_size: expected an int >= 1 and below 2**63, got {spatial_merge_size!r}")
    merge = int(spatial_merge_size)
    if advance not in ADVANCES:
        raise ValueError(f"advance: expected one of {', '.join(map(repr, ADVANCES))}, got {advance!r}")
    if not isinstance(split_video_frames, (bool, np.bool_)):
        raise TypeError(f"split_video_frames: expected True or False, got {split_video_frames!r}")
    images = _grids(image_grid_thw, "image_grid_thw", merge)
    videos = _grids(video_grid_thw, "video_grid_thw", merge)
    intervals: list[np.float32 | None] = [None] * len(videos)
    if tokens_per_second is not None:
        if isinstance(tokens_per_second, (bool, np.bool_)) \
                or not isinstance(tokens_per_second, (int, float, np.integer, np.floating)):
            raise TypeError(f"tokens_per_second: expected a real number, got {tokens_per_second!r}")
        if not (math.isfinite(float(tokens_per_second)) and float(tokens_per_second) > 0):
            raise ValueError(f"tokens_per_second: must be finite and > 0, got {tokens_per_second!r}")
        seconds = [1.0] * len(videos) if second_per_grid_ts is None else _seconds(second_per_grid_ts)
        if len(seconds) != len(videos):
            raise ValueError(f"second_per_grid_ts: expected one value per video ({len(videos)}), got {len(seconds)}")
        intervals = [np.float32(np.float32(tokens_per_second) * np.float32(s)) for s in seconds]
    elif second_per_grid_ts is not None:
        raise ValueError("second_per_grid_ts: needs tokens_per_second (the vision config's, e.g. 2 for Qwen2.5-VL)")
    if split_video_frames:
        intervals = [iv for iv, g in zip(intervals, videos, strict=True) for _ in range(int(g[0]))]
        videos = np.repeat(videos, videos[:, 0], axis=0) if len(videos) else videos
        videos[:, 0] = 1
    if attention_mask is None:
        mask = np.ones((n_batch, n_seq), bool)
    else:
        mask = _host_mask(attention_mask, n_batch, n_seq)

    position_ids = np.zeros((3, n_batch, n_seq), np.int64)
    deltas = np.zeros(n_batch, np.int64)
    queues = {1: [images, 0, "image_grid_thw", [None] * len(images)], 2: [videos, 0, "video_grid_thw", intervals]}
    for b in range(n_batch):
        kinds = types[b][mask[b]]
        n = kinds.shape[0]
        if n == 0:
            continue
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(kinds)) + 1, [n]])
        pieces, current = [], 0
        for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            kind = int(kinds[start])
            length = stop - start
            if kind == 0:
                pieces.append(np.broadcast_to(np.arange(current, current + length, dtype=np.int64), (3, length)))
                current += length
                continue
            queue = queues[kind]
            grids, name = queue[0], queue[2]
            covered = 0
            while covered < length:
                if queue[1] >= len(grids):
                    raise ValueError(f"{name}: token_types row {b} has more {'image' if kind == 1 else 'video'} "
                                     f"tokens than the {len(grids)} grid(s) given cover")
                t, h, w = (int(v) for v in grids[queue[1]])
                interval = queue[3][queue[1]]
                needed = t * (h // merge) * (w // merge)  # Python ints: checked before anything is allocated
                if covered + needed > length:
                    raise ValueError(f"{name}: grid {queue[1]} {[t, h, w]} needs {needed} tokens (t * h * w / "
                                     f"{merge}**2) but token_types row {b} has a run of {length - covered} left at "
                                     f"token {start + covered}")
                ids = _vision_ids(current, t, h // merge, w // merge, interval)
                queue[1] += 1
                pieces.append(ids)
                covered += ids.shape[1]
                current = current + max(h, w) // merge if advance == "spatial" else int(ids.max()) + 1
        row = np.concatenate(pieces, axis=1)
        position_ids[:, b, mask[b]] = row
        deltas[b] = int(row.max()) + 1 - n
    for kind in (1, 2):
        grids, used, name = queues[kind][0], queues[kind][1], queues[kind][2]
        if used != len(grids):
            raise ValueError(f"{name}: {len(grids)} grid(s) given but token_types holds vision tokens for {used}")
    return from_native(position_ids, origin), from_native(deltas, origin)


__all__ = ["mrope_position_ids"]
