"""Per-model defaults for rotary fields a ``config.json`` may omit, keyed by ``model_type``.

A published ``config.json`` often leaves out fields whose value is the default of the model's transformers
config class (``google/gemma-3-4b-it`` gives no ``rope_theta``, ``head_dim`` nor ``num_attention_heads`` in its
``text_config``). These are those defaults, read from the config classes of transformers 5.24
(``CONFIG_MAPPING[model_type]()``); ``chatglm`` is not in transformers and follows THUDM's
``configuration_chatglm.py``. Only the fields ropeflow reads are listed; ``head_dim`` only where the class has
a fixed default (elsewhere transformers derives it as ``hidden_size // num_attention_heads``). ``mrope_section`` /
``mrope_interleaved``: the defaults of the models' rotary modules (``rope_parameters.get("mrope_section", ...)``;
Qwen3-VL's and Qwen3.5's modules always interleave). ``query_pre_attn_scalar`` (Gemma 2 and 3) and
``attention_multiplier`` (Granite) set the attention's softmax scale (:func:`ropeflow.softmax_scale`).

``layout`` is the rotation layout the model's attention applies (DESIGN 1.4): ``"interleaved"`` for GPT-J,
ChatGLM / GLM, Cohere and Llama 4 (pairs ``(2j, 2j + 1)``), ``"deepseek"`` for DeepSeek-V3 (interleaved
input permuted to halves, transformers' ``rope_interleave=True``), else ``"half"``.
"""

from __future__ import annotations

from typing import Any

_LLAMA_LIKE = {"rope_theta": 10000.0, "hidden_size": 4096, "num_attention_heads": 32}

MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {**_LLAMA_LIKE, "max_position_embeddings": 2048},
    "mistral": {**_LLAMA_LIKE, "max_position_embeddings": 131072},
    "ministral": {**_LLAMA_LIKE, "max_position_embeddings": 131072},
    "mixtral": {**_LLAMA_LIKE, "rope_theta": 1000000.0, "max_position_embeddings": 131072},
    "qwen2": {**_LLAMA_LIKE, "max_position_embeddings": 32768},
    "qwen2_moe": {**_LLAMA_LIKE, "hidden_size": 2048, "num_attention_heads": 16, "max_position_embeddings": 32768},
    "qwen3": {**_LLAMA_LIKE, "max_position_embeddings": 32768, "head_dim": 128},
    "qwen3_moe": {**_LLAMA_LIKE, "hidden_size": 2048, "max_position_embeddings": 32768},
    "qwen2_vl_text": {"rope_theta": 1000000.0, "hidden_size": 8192, "num_attention_heads": 64,
                      "max_position_embeddings": 32768, "mrope_section": [16, 24, 24]},
    "qwen2_5_vl_text": {"rope_theta": 1000000.0, "hidden_size": 8192, "num_attention_heads": 64,
                        "max_position_embeddings": 32768, "mrope_section": [16, 24, 24]},
    "qwen3_vl_text": {"rope_theta": 500000.0, "hidden_size": 4096, "num_attention_heads": 32,
                      "max_position_embeddings": 128000, "head_dim": 128, "mrope_section": [24, 20, 20],
                      "mrope_interleaved": True},
    "qwen3_next": {"rope_theta": 10000.0, "hidden_size": 2048, "num_attention_heads": 16,
                   "max_position_embeddings": 32768, "head_dim": 256, "partial_rotary_factor": 0.25},
    "qwen3_5_text": {"rope_theta": 10000.0, "hidden_size": 4096, "num_attention_heads": 16,
                     "max_position_embeddings": 32768, "head_dim": 256, "partial_rotary_factor": 0.25,
                     "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    "phi3": {"rope_theta": 10000.0, "hidden_size": 3072, "num_attention_heads": 32,
             "max_position_embeddings": 4096, "original_max_position_embeddings": 4096},
    "phi": {"rope_theta": 10000.0, "hidden_size": 2048, "num_attention_heads": 32, "max_position_embeddings": 2048,
            "partial_rotary_factor": 0.5},
    "gptj": {"rope_theta": 10000.0, "n_embd": 4096, "n_head": 16, "n_positions": 2048, "rotary_dim": 64,
             "layout": "interleaved"},
    "gpt_neox": {"rotary_emb_base": 10000.0, "hidden_size": 6144, "num_attention_heads": 64,
                 "max_position_embeddings": 2048, "rotary_pct": 0.25},
    "falcon": {"rope_theta": 10000.0, "hidden_size": 4544, "num_attention_heads": 71, "max_position_embeddings": 2048},
    "cohere": {"rope_theta": 500000.0, "hidden_size": 8192, "num_attention_heads": 64,
               "max_position_embeddings": 8192, "layout": "interleaved"},
    "cohere2": {"rope_theta": 10000.0, "hidden_size": 8192, "num_attention_heads": 64, "head_dim": 128,
                "max_position_embeddings": 8192, "layout": "interleaved"},
    "glm": {**_LLAMA_LIKE, "head_dim": 128, "max_position_embeddings": 131072, "partial_rotary_factor": 0.5,
            "layout": "interleaved"},
    "glm4": {**_LLAMA_LIKE, "head_dim": 128, "max_position_embeddings": 131072, "partial_rotary_factor": 0.5,
             "layout": "interleaved"},
    "chatglm": {**_LLAMA_LIKE, "kv_channels": 128, "seq_length": 2048, "rope_ratio": 1.0,
                "partial_rotary_factor": 0.5, "layout": "interleaved"},
    "gpt_oss": {"rope_theta": 150000.0, "hidden_size": 2880, "num_attention_heads": 64, "head_dim": 64,
                "max_position_embeddings": 131072},
    "deepseek_v2": {**_LLAMA_LIKE, "max_position_embeddings": 2048, "qk_rope_head_dim": 64, "layout": "interleaved"},
    "deepseek_v3": {"rope_theta": 10000.0, "hidden_size": 7168, "num_attention_heads": 128,
                    "max_position_embeddings": 4096, "qk_rope_head_dim": 64, "layout": "deepseek"},
    "gemma": {"rope_theta": 10000.0, "hidden_size": 3072, "num_attention_heads": 16, "head_dim": 256,
              "max_position_embeddings": 8192},
    "gemma2": {"rope_theta": 10000.0, "hidden_size": 2304, "num_attention_heads": 8, "head_dim": 256,
               "max_position_embeddings": 8192, "query_pre_attn_scalar": 256},
    "gemma3_text": {"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "hidden_size": 2304,
                    "num_attention_heads": 8, "head_dim": 256, "max_position_embeddings": 131072,
                    "query_pre_attn_scalar": 256},
    "llama4_text": {"rope_theta": 500000.0, "hidden_size": 5120, "num_attention_heads": 40, "head_dim": 128,
                    "max_position_embeddings": 131072, "layout": "interleaved"},
    "olmo2": {**_LLAMA_LIKE, "max_position_embeddings": 2048},
    "granite": {**_LLAMA_LIKE, "max_position_embeddings": 2048, "attention_multiplier": 1.0},
    # softmax-scale fields only (the rest of these files is read as stated)
    "granitemoe": {"attention_multiplier": 1.0},
    "granitemoeshared": {"attention_multiplier": 1.0},
    "granitemoehybrid": {"attention_multiplier": 1.0},
    "granite_swa": {"attention_multiplier": 1.0},
    "vaultgemma": {"query_pre_attn_scalar": 256},
    "starcoder2": {"rope_theta": 10000.0, "hidden_size": 3072, "num_attention_heads": 24,
                   "max_position_embeddings": 4096},
    "smollm3": {"rope_theta": 2000000.0, "hidden_size": 2048, "num_attention_heads": 16,
                "max_position_embeddings": 32768},
    "ernie4_5": {"rope_theta": 500000.0, "hidden_size": 1024, "num_attention_heads": 16, "head_dim": 128,
                 "max_position_embeddings": 131072},
    "modernbert": {"global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "hidden_size": 768,
                   "num_attention_heads": 12, "max_position_embeddings": 8192},
}

#: Multimodal / wrapper model types whose language model carries the rotary fields (under ``text_config`` in
#: newer files, at the top level in older ones), and aliases of architectures transformers knows by another name.
TEXT_MODEL_TYPES: dict[str, str] = {
    "gemma3": "gemma3_text",
    "llama4": "llama4_text",
    "qwen2_vl": "qwen2_vl_text",
    "qwen2_5_vl": "qwen2_5_vl_text",
    "qwen3_vl": "qwen3_vl_text",
    "qwen3_5": "qwen3_5_text",
    "mistral3": "mistral",
    "kimi_k2": "deepseek_v3",
    "RefinedWebModel": "falcon",
    "RefinedWeb": "falcon",
}


def model_defaults(model_type: Any) -> dict[str, Any]:
    """The defaults of ``model_type`` (its language model's for multimodal types); ``{}`` when unknown."""
    if not isinstance(model_type, str):
        return {}
    return MODEL_DEFAULTS.get(model_type) or MODEL_DEFAULTS.get(TEXT_MODEL_TYPES.get(model_type, ""), {})
