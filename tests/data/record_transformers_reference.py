"""Record transformers' own rotary embeddings for the config corpus in ``tests/data/configs/``.

Run from the repository root (needs ``torch`` and ``transformers``; CPU is enough):

    python tests/data/record_transformers_reference.py

and commit ``tests/data/transformers_reference.json``, which ``tests/test_config_corpus.py`` checks ropeflow
against when transformers is not installed (CI). What is recorded, per config and layer type, is what the
model's own ``*RotaryEmbedding`` module (found in ``transformers.models.<family>.modeling_<family>``) gives:

* ``inv_freq`` at construction, as float32 bit patterns (exact), and ``attention_scaling``;
* the same after a forward pass at a long length, for the families whose frequencies depend on it
  (LongRoPE: beyond ``original_max_position_embeddings``; dynamic NTK: beyond ``max_position_embeddings``);
* cos and sin rows at a few positions, as float32 bit patterns.

The legacy LongRoPE name ``"su"`` is renamed ``"longrope"`` before transformers sees it (transformers 5.24
raises on it; ropeflow reads both). Three files name architectures transformers does not ship; they are read
through the transformers class of the same math: ``chatglm`` through ``GlmConfig`` (THUDM's ChatGLM code
rotates ``kv_channels * 0.5`` channels in interleaved pairs with base ``10000 * rope_ratio``, which is transformers'
GLM port), ``kimi_k2`` through ``DeepseekV3Config``, ``RefinedWebModel`` through ``FalconConfig``.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys
import warnings

import numpy as np
import torch
import transformers
from transformers import CONFIG_MAPPING

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # this checkout's ropeflow, for the layer-type names only
import ropeflow  # noqa: E402

SHORT_POSITIONS = (1, 1000)


def _fields(raw: dict) -> tuple[str, dict]:
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
    if isinstance(cfg.get("text_config"), dict):
        cfg = dict(cfg["text_config"])
    model_type = cfg.pop("model_type")
    if model_type == "chatglm":
        return "glm", {"hidden_size": cfg["hidden_size"], "num_attention_heads": cfg["num_attention_heads"],
                       "head_dim": cfg["kv_channels"], "partial_rotary_factor": 0.5,
                       "rope_theta": 10000.0 * cfg.get("rope_ratio", 1), "max_position_embeddings": cfg["seq_length"]}
    scaling = cfg.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("type") == "su":
        # transformers 5.24 raises KeyError (missing original_max_position_embeddings) on the legacy "su" name:
        # its standardization moves the top-level original only for "longrope". Give it the new name.
        cfg["rope_scaling"] = {**scaling, "type": "longrope"}
    return {"kimi_k2": "deepseek_v3", "RefinedWebModel": "falcon"}.get(model_type, model_type), cfg


def _rotary_class(config_cls: type) -> type:
    module = importlib.import_module(config_cls.__module__.replace(".configuration_", ".modeling_"))
    names = [n for n in dir(module) if n.endswith("RotaryEmbedding") and "Vision" not in n and "Audio" not in n
             and not n.startswith("_")]
    names.sort(key=lambda n: ("Text" not in n, len(n)))
    return getattr(module, names[0])


def _bits(t: torch.Tensor) -> list[int]:
    return np.ascontiguousarray(t.detach().to(torch.float32).numpy()).view(np.uint32).ravel().tolist()


def _forward(rot, head_dim: int, positions: list[int], layer_type: str | None):
    pos = torch.tensor([positions], dtype=torch.long)
    x = torch.zeros(1, 1, len(positions), head_dim, dtype=torch.float32)
    kwargs = {} if layer_type is None else {"layer_type": layer_type}
    try:
        out = rot(x, pos, **kwargs)
    except (RuntimeError, IndexError, ValueError):
        out = rot(x, pos[None].expand(3, 1, len(positions)), **kwargs)  # M-RoPE: (t, h, w) position ids
    if isinstance(out, torch.Tensor) and out.is_complex():  # Llama 4: freqs_cis
        return out.real.reshape(len(positions), -1), out.imag.reshape(len(positions), -1)
    cos, sin = out
    if type(rot).__name__ == "GPTJRotaryEmbedding":  # returns (sin, cos), each of width rotary_dim // 2
        cos, sin = sin, cos
    return cos.reshape(-1, len(positions), cos.shape[-1])[0], sin.reshape(-1, len(positions), sin.shape[-1])[0]


def _state(rot, layer_type: str | None) -> tuple[torch.Tensor | None, float]:
    if not hasattr(rot, "inv_freq") and hasattr(rot, "embed_positions"):  # GPT-J keeps only the tables
        return None, 1.0
    if layer_type is not None and hasattr(rot, f"{layer_type}_inv_freq"):
        return getattr(rot, f"{layer_type}_inv_freq"), float(getattr(rot, f"{layer_type}_attention_scaling"))
    return rot.inv_freq, float(rot.attention_scaling)


def record(path: pathlib.Path) -> dict:
    raw = json.loads(path.read_text())
    model_type, fields = _fields(raw)
    config_cls = CONFIG_MAPPING[model_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = config_cls.from_dict(json.loads(json.dumps(fields)))  # the path from_pretrained takes
    rot_cls = _rotary_class(config_cls)
    if getattr(config, "text_config", None) is not None:  # Qwen2.5-VL files with the text fields at the top
        config = config.text_config
    per_layer = hasattr(config, "layer_types") and isinstance(getattr(config, "rope_parameters", None), dict) and \
        any(t in config.rope_parameters for t in (getattr(config, "layer_types", None) or ()))
    out = {"transformers_class": f"{rot_cls.__module__}.{rot_cls.__name__}", "config_class": config_cls.__name__,
           "layer_types": {}}
    for layer_type in ropeflow.layer_types(raw):
        lt = layer_type if per_layer else None
        params = (config.rope_parameters[layer_type] if lt else getattr(config, "rope_parameters", None)) or \
            {"rope_type": "default"}
        rot = rot_cls(config=config)
        inv_freq, scaling = _state(rot, lt)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        entry = {"rope_type": params.get("rope_type"), "inv_freq": None if inv_freq is None else _bits(inv_freq),
                 "attention_scaling": scaling, "positions": list(SHORT_POSITIONS)}
        cos, sin = _forward(rot, head_dim, list(SHORT_POSITIONS), lt)
        entry["cos"], entry["sin"] = _bits(cos), _bits(sin)
        rope_type = params.get("rope_type")
        if rope_type in ("longrope", "dynamic"):
            edge = params["original_max_position_embeddings"] if rope_type == "longrope" else \
                config.max_position_embeddings
            long_positions = [edge, 2 * edge - 1]
            rot = rot_cls(config=config)
            cos, sin = _forward(rot, head_dim, long_positions, lt)
            long_inv, long_scaling = _state(rot, lt)
            entry["long"] = {"seq_len": 2 * edge, "positions": long_positions, "inv_freq": _bits(long_inv),
                             "attention_scaling": long_scaling, "cos": _bits(cos), "sin": _bits(sin)}
        out["layer_types"][layer_type] = entry
    return out


def record_all() -> dict:
    """``{config name: record}`` for every file of the corpus (what the tests compare with, live)."""
    return {p.stem: record(p) for p in sorted((HERE / "configs").glob("*.json"))}


def main() -> None:
    configs = sorted((HERE / "configs").glob("*.json"))
    result = {
        "_provenance": (f"recorded by tests/data/record_transformers_reference.py with transformers "
                        f"{transformers.__version__}, torch {torch.__version__}, on CPU; float32 values are "
                        "uint32 bit patterns"),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "configs": {},
    }
    for p in configs:
        result["configs"][p.stem] = record(p)
        print(p.stem, {t: (e["rope_type"], e["attention_scaling"]) for t, e in
                       result["configs"][p.stem]["layer_types"].items()}, flush=True)
    target = HERE / "transformers_reference.json"
    # one line per config: readable diffs, small file
    configs_text = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True, separators=(',', ':'))}"
                               for k, v in result.pop("configs").items())
    head = json.dumps(result, sort_keys=True, indent=1)[:-2]
    target.write_text(f'{head},\n "configs": {{\n{configs_text}\n}}}}\n')
    print(f"wrote {target} ({len(configs)} configs)")


if __name__ == "__main__":
    main()
