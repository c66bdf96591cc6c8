"""Model presets: the published rotary fields of model configs, shipped as small JSON files.

Nothing is downloaded. Each file holds only the fields ropeflow reads, as the model's ``config.json`` gives them,
and a ``_source`` (the Hugging Face file they come from). Most are also in the test corpus
(``tests/data/configs/``), which checks them against transformers' own rotary modules. Gemma 3 has two rotary
configurations: ``RotaryEmbedding.from_preset("gemma-3-4b-it", layer_type="sliding_attention")``.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def names() -> list[str]:
    """The preset names, e.g. ``["deepseek-v3", "kimi-k2", ...]``."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def load(name: str) -> dict[str, Any]:
    """The config dict of preset ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a preset name (a string), got {name!r} ({type(name).__name__})")
    if name not in names():
        raise ValueError(f"name: unknown preset {name!r}; allowed: {', '.join(names())}")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
