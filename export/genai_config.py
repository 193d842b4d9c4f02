"""genai_config.json: what onnxruntime-genai needs to load an artifact folder as its own model
(`onnxruntime_genai.Model(artifact)`), so device users get that toolkit's C, C#, Java and
Python generation APIs on the same files. The graph's IO is optimum's (decoder.py); this file
names it for onnxruntime-genai and says whether past and present may share one buffer (true
for GroupQueryAttention graphs, whose seqlens_k is the last attended slot, so onnxruntime-genai's
capacity-sized mask with trailing zeros and edgedelta's left-padded mask both work)."""

from __future__ import annotations

from typing import Any

from .arch_facts import ArchFacts

FILE = "genai_config.json"


def _first(*values):
    return next((v for v in values if v is not None), None)


def genai_config(facts: ArchFacts, config: dict[str, Any], generation: dict[str, Any], in_place_kv: bool) -> dict[str, Any]:
    """The config dict. `config`/`generation`: the artifact's config.json and
    generation_config.json as dicts."""
    eos = _first(generation.get("eos_token_id"), config.get("eos_token_id"))
    pad = _first(generation.get("pad_token_id"), config.get("pad_token_id"), eos[0] if isinstance(eos, list) else eos)
    context = int(config.get("max_position_embeddings") or facts.max_positions or 2048)
    return {
        "model": {
            "bos_token_id": _first(generation.get("bos_token_id"), config.get("bos_token_id")),
            "eos_token_id": eos,
            "pad_token_id": pad,
            "context_length": context,
            "type": config.get("model_type"),
            "vocab_size": facts.vocab,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": facts.head_dim,
                "hidden_size": facts.hidden,
                "num_attention_heads": facts.heads,
                "num_hidden_layers": facts.num_layers,
                "num_key_value_heads": facts.kv_heads,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
            },
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": bool(in_place_kv), "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }
