"""The default model (SmolLM2-135M-Instruct) exported and validated end to end (~1-2 min)."""

import json

import pytest


@pytest.mark.real
def test_default_model_exports_with_shared_tied_embedding(tmp_path):
    from edgedelta.export import ExportConfig, export_onnx

    out = export_onnx("default", ExportConfig(), tmp_path / "art")
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["logits"]["max_abs_diff"] <= 1e-3 and m["parity"]["greedy_decode"]["identical"]
    assert m["audit"]["ok"] and m["audit"]["tied_embedding"] == "embed_tokens.weight"
    assert m["bytes"]["data_file_over_unique_param_bytes"] <= 1.01
