"""The quality gate of a quantized export (export/quality_gate.py, validate.py): held-out
perplexity ratio and argmax agreement against the float model, thresholds that decide, a
structural check at accuracy level 0, and config validation of the quantization fields."""

import json

import numpy as np
import pytest

from edgedelta.errors import ConfigError, ParityError
from edgedelta.export import ExportConfig, export_onnx
from edgedelta.export.quality_gate import MAX_PPL_RATIO, MIN_AGREEMENT, GateThresholds, compare, judge
from tests.tiny_compressed import tiny_compressed_dir

WINDOWS = {"a": np.random.default_rng(0).integers(0, 50, (2, 300)), "b": np.random.default_rng(1).integers(0, 50, (1, 300))}


def _model(seed=0, sharp=4.0):
    """ids (1, T) -> logits (1, T, 50): a fixed random bigram table."""
    table = sharp * np.random.default_rng(seed).standard_normal((50, 50)).astype(np.float32)
    return lambda ids: table[ids]


def test_identical_models_pass_and_report_both_texts():
    res = judge(compare(_model(), _model(), WINDOWS), GateThresholds(1.0, 1.0))
    assert res["passed"] and res["ppl_ratio"] == pytest.approx(1.0) and res["agreement"] == 1.0
    assert res["tokens"] == 3 * 299 and set(res["texts"]) == {"a", "b"}


def test_a_different_model_fails_on_agreement():
    res = compare(_model(0), _model(1), WINDOWS)  # another table: argmax rarely agrees
    assert res["agreement"] < 0.2
    with pytest.raises(ParityError, match="greedy_agreement"):
        judge(res, GateThresholds(max_ppl_ratio=1e9, min_agreement=0.5))


def test_an_overconfident_model_fails_on_perplexity_but_agrees():
    ref = _model()
    res = compare(ref, lambda ids: 2.0 * ref(ids), WINDOWS)  # same argmax, sharper and wrong more often on this text
    assert res["agreement"] == 1.0 and res["ppl_ratio"] > 1.05
    with pytest.raises(ParityError, match="held_out_perplexity_ratio"):
        judge(res, GateThresholds(max_ppl_ratio=1.05, min_agreement=0.9))
    assert judge(res, GateThresholds(max_ppl_ratio=res["ppl_ratio"] + 1e-9, min_agreement=0.9))["passed"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return tiny_compressed_dir(tmp_path_factory.mktemp("gate") / "src", "llama")


def test_quantized_export_passes_gate_at_level4_and_structure_at_level0(src, tmp_path):
    out = export_onnx(src, ExportConfig(quantize="int4", block_size=16), tmp_path / "art")
    m = json.loads((out / "manifest.json").read_text())
    assert m["export_config"]["accuracy_level"] == 4 and m["export_config"]["quant_method"] == "gptq"
    p = m["parity"]
    assert all(p[c]["accuracy_level"] == 0 for c in ("logits", "logits_with_past", "greedy_decode"))
    assert p["logits"]["max_abs_diff"] <= 1e-3 and p["greedy_decode"]["identical"]
    g = p["quality_gate"]
    assert g["passed"] and g["texts_used"] == ["python-docs", "sotu-recent"] and g["tokens"] >= 256
    assert g["thresholds"] == {"max_ppl_ratio": MAX_PPL_RATIO[4], "min_agreement": MIN_AGREEMENT[4]}
    assert not list(out.glob("*.level0.onnx"))  # the level-0 copy of the graph is not shipped


def test_gate_threshold_decides_and_nothing_is_written(src, tmp_path):
    with pytest.raises(ParityError, match="greedy_agreement"):
        export_onnx(src, ExportConfig(quantize="int4", block_size=16, quant_method="rtn", gate_min_agreement=1.0), tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_default_gate_fails_an_artifact_of_another_model(src, tmp_path):
    """The default thresholds tell a quantized model from a different one: the artifact of
    `src` judged against another float model (different weights) fails."""
    from edgedelta.export.arch_facts import ArchFacts
    from edgedelta.export.validate import _OrtDecoder, quality_gate
    from edgedelta.models.adapters import adapter_for
    from tests.tiny import tiny_tokenizer
    from tests.tiny_compressed import tiny_compressed_model

    cfg = ExportConfig(quantize="int8", block_size=16, quant_method="rtn")
    out = export_onnx(src, cfg, tmp_path / "art")
    assert json.loads((out / "manifest.json").read_text())["parity"]["quality_gate"]["passed"]
    other = tiny_compressed_model("llama", seed=1)
    dec = _OrtDecoder(out / "model.onnx", ArchFacts.from_model(other, adapter_for(other.config)), np.float32, cfg)
    with pytest.raises(ParityError, match="greedy_agreement"):
        quality_gate(other, tiny_tokenizer(), dec, cfg)


@pytest.mark.parametrize("kw,match", [
    (dict(quant_method="awq"), "quant_method 'awq'.*allowed: rtn, gptq, hqq"),
    (dict(quantize="int4", calib_text="sotu-recent"), "evaluation text set"),
    (dict(quantize="int4", calib_text="/no/such/folder"), "neither a known training text set"),
    (dict(calib_samples=0), "calib_samples must be a positive"),
    (dict(gate_max_ppl_ratio=0.0), "gate_max_ppl_ratio must be > 0"),
    (dict(gate_min_agreement=1.5), "gate_min_agreement must be in 0..1"),
    (dict(gate_tokens=100), "gate_tokens must be >= 256"),
    (dict(quantize="int4", accuracy_level=2), "accuracy_level must be 0"),
])
def test_config_errors_name_the_value(kw, match):
    with pytest.raises(ConfigError, match=match):
        ExportConfig(**kw)


def test_accuracy_level_defaults_to_int8_activations_when_quantized():
    assert ExportConfig(quantize="int4").accuracy_level == 4 and ExportConfig(quantize="int8").accuracy_level == 4
    assert ExportConfig().accuracy_level == 0 and ExportConfig(quantize="int4", accuracy_level=0).accuracy_level == 0
    cfg = ExportConfig(quantize="int4")
    assert ExportConfig.from_dict(cfg.to_dict()) == cfg
