"""bench/quant_quality.py's rows: a head-only row quantizes the tied embedding / LM head and
leaves every projection as it was; a full row changes both."""

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import quant_quality  # noqa: E402


def _tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _changed(model, copy) -> dict[str, bool]:
    after = dict(copy.named_parameters())
    return {n: not torch.equal(p, after[n]) for n, p in model.named_parameters()}


def test_a_head_only_row_quantizes_the_tied_head_and_no_projection():
    model = _tiny_llama()
    for row in quant_quality.HEAD_ROWS:
        bits, method, block, act, embed, deltas, projections = row
        changed = _changed(model, quant_quality.dequantized_copy(model, None, quant_quality.BITS[bits], method, block, act,
                                                                 embed, deltas, projections))
        assert changed["model.embed_tokens.weight"], row
        assert not any(v for n, v in changed.items() if n.endswith("proj.weight")), row
    full = _changed(model, quant_quality.dequantized_copy(model, None, 4, "rtn", 32, False, True, True))
    assert full["model.embed_tokens.weight"] and full["model.layers.0.mlp.down_proj.weight"]


def test_a_row_without_the_projection_flag_is_keyed_as_quantizing_them():
    old = {"quantize": "int4", "method": "rtn", "block": 32, "act_order": False, "embedding_quantized": True,
           "deltas_quantized": True, "calib_samples": None}
    assert quant_quality.row_key(old) == quant_quality.row_key({**old, "projections_quantized": True})
    assert quant_quality.row_key(old) != quant_quality.row_key({**old, "projections_quantized": False})


def test_a_symmetric_row_is_its_own_row_and_quantizes_differently():
    model = _tiny_llama()
    asym = quant_quality.dequantized_copy(model, None, 4, "rtn", 32, False, True, True)
    sym = quant_quality.dequantized_copy(model, None, 4, "rtn", 32, False, True, True, symmetric=True)
    w = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(dict(asym.named_parameters())[w], dict(sym.named_parameters())[w])
    row = {"quantize": "int4", "method": "rtn", "block": 32, "act_order": False, "embedding_quantized": True,
           "deltas_quantized": True, "calib_samples": None}
    assert quant_quality.row_key(row) == quant_quality.row_key({**row, "symmetric": False})
    assert quant_quality.row_key(row) != quant_quality.row_key({**row, "symmetric": True})
