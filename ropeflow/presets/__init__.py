"""Model presets: the published rotary fields of a few model configs, shipped as small JSON files.

Nothing is downloaded. Each file holds only the fields ropeflow reads (and a ``_source`` note).
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
    if name not in names():
        raise ValueError(f"name: unknown preset {name!r}; allowed: {', '.join(names())}")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
