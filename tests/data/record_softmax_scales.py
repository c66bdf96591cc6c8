"""Record the softmax scale of transformers' own attention modules for the config corpus in
``tests/data/configs/``.

Run from the repository root (needs ``torch`` and ``transformers``; no weights are allocated: the modules are
built on torch's meta device):

    python tests/data/record_softmax_scales.py

and commit ``tests/data/softmax_scales.json``, which ``tests/test_config_corpus.py`` checks
``ropeflow.softmax_scale`` against when transformers is not installed (CI). What is recorded, per config, is the
``scaling`` attribute of the first ``*Attention`` class (text attention, not vision, audio or cross attention)
of the model's ``transformers.models.<family>.modeling_<family>`` that builds from the config with
``layer_idx=0`` (files of architectures transformers does not ship are read through the class of the same
math, as in ``record_transformers_reference.py``); configs with no such class are recorded as null.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import sys
import warnings

import torch
import transformers
from transformers import CONFIG_MAPPING

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record_transformers_reference import _fields  # noqa: E402  (the same reading of each file)


def attention_scaling(path: pathlib.Path) -> dict | None:
    """``{"attention_class": ..., "scaling": ...}`` for one config file, or None (no attention class)."""
    raw = json.loads(path.read_text())
    model_type, fields = _fields(raw)
    config_cls = CONFIG_MAPPING[model_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = config_cls.from_dict(json.loads(json.dumps(fields)))
    if getattr(config, "text_config", None) is not None:
        config = config.text_config
    module = importlib.import_module(config_cls.__module__.replace(".configuration_", ".modeling_"))
    names = sorted(n for n, c in vars(module).items() if inspect.isclass(c) and n.endswith("Attention")
                   and not any(part in n for part in ("Vision", "Audio", "Cross")))
    for name in names:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module_obj = getattr(module, name)(config, layer_idx=0)
        except Exception:  # noqa: BLE001 - another signature or sub-config: try the next class
            continue
        if isinstance(getattr(module_obj, "scaling", None), float | int):
            return {"attention_class": f"{module.__name__}.{name}", "scaling": float(module_obj.scaling)}
    return None


def main() -> None:
    configs = sorted((HERE / "configs").glob("*.json"))
    result = {
        "_provenance": (f"recorded by tests/data/record_softmax_scales.py with transformers "
                        f"{transformers.__version__}, torch {torch.__version__}"),
        "transformers_version": transformers.__version__,
        "configs": {p.stem: attention_scaling(p) for p in configs},
    }
    target = HERE / "softmax_scales.json"
    target.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}: {sum(v is not None for v in result['configs'].values())} of {len(configs)} configs")


if __name__ == "__main__":
    main()
