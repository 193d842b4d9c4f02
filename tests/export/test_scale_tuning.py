"""End-to-end block-scale tuning (export/scale_tuning.py): the codes stay, the scales move the
quantized model toward the float one, and an export with tune_steps stores exactly the tuned
weights (same codes and layout as without tuning)."""

import json

import numpy as np
import pytest
import torch

from edgedelta.errors import ConfigError
from edgedelta.export import ExportConfig, export_onnx
from edgedelta.export.quant_methods import quantize_weight
from edgedelta.export.quantize import _unpack, concat_rows
from edgedelta.export.config import DEFAULT_TUNE_STEPS
from edgedelta.export.scale_tuning import resolve_tune_steps, tune_scales, tuning_memory_bytes
from edgedelta.export.weights import quantize_base_weights
from edgedelta.models.adapters import adapter_for
from tests.tiny import tiny_ids, tiny_model
from tests.tiny_compressed import tiny_compressed_dir


def _kl(model, weights, ids):
    """Mean KL(float ‖ model with `weights` swapped in) per token."""
    from torch.func import functional_call

    with torch.no_grad():
        t = torch.log_softmax(model(input_ids=ids).logits, -1)
        s = torch.log_softmax(functional_call(model, weights, (), {"input_ids": ids}).logits, -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def _swapped(model, quantized):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[i]: torch.from_numpy(q.dequantize()) for i, q in quantized.items()}


@pytest.mark.parametrize("symmetric", [True, False])
def test_tuning_keeps_the_codes_and_lowers_the_kl_on_its_text(symmetric):
    torch.manual_seed(0)
    model = tiny_model("llama").eval()
    cfg = ExportConfig(quantize="int4", block_size=16, quant_method="rtn", symmetric=symmetric)
    pre = {i: q for i, (q, _) in quantize_base_weights(model, adapter_for(model.config), cfg, None).items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = tiny_ids(8, 32)
    tuned, summary = tune_scales(model, pre, ids, steps=40, lr=2e-2)
    assert summary["steps"] == 40 and summary["tokens"] == 40 * 2 * 32 and summary["kl_last"] < summary["kl_first"]
    assert _kl(model, _swapped(model, tuned), ids) < 0.8 * _kl(model, _swapped(model, pre), ids)
    for i, q in pre.items():  # same codes and zero points, other scales; the inputs untouched
        t = tuned[i]
        assert t is not q and np.array_equal(t.packed, q.packed) and (t.zero_points is None) == symmetric
        assert symmetric or np.array_equal(t.zero_points, q.zero_points)
        assert not np.array_equal(t.scales, q.scales)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the float model is unchanged
    assert all(p.requires_grad for p in model.parameters())


def test_base_weights_are_each_stored_weight_once_with_its_bits():
    model = tiny_model("llama")
    ad = adapter_for(model.config)
    got = quantize_base_weights(model, ad, ExportConfig(quantize="int4", value_bits=8, quant_method="rtn", block_size=16), None)
    table = ad.embed_tokens(model).weight
    assert id(table) in got and got[id(table)][0].n == table.shape[0]  # tied: the head is the table, listed once
    layer = ad.decoder_layers(model)[0]
    assert got[id(ad.get_linear(layer, "v").weight)][0].bits == 8 and got[id(ad.get_linear(layer, "q").weight)][0].bits == 4
    assert len(got) == 1 + len(ad.decoder_layers(model)) * len(ad.projections)
    assert {m for _, m in got.values()} == {"rtn"}


@pytest.mark.parametrize("symmetric", [True, False])
def test_concatenated_rows_equal_the_quantized_concatenation(symmetric):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 48)).astype(np.float32) for n in (8, 5, 3)]  # odd blocks per row: 3 of 16
    qs = [quantize_weight(w, 4, 16, "rtn", symmetric=symmetric) for w in parts]
    whole = quantize_weight(np.concatenate(parts), 4, 16, "rtn", symmetric=symmetric)
    cat = concat_rows(qs)
    assert cat.n == 16 and np.array_equal(cat.packed, whole.packed) and np.array_equal(cat.scales, whole.scales)
    assert symmetric or np.array_equal(cat.zero_points, whole.zero_points)
    np.testing.assert_array_equal(cat.dequantize(), whole.dequantize())
    with pytest.raises(ValueError, match="one form"):
        concat_rows([qs[0], quantize_weight(parts[1], 8, 16, "rtn", symmetric=symmetric)])


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return tiny_compressed_dir(tmp_path_factory.mktemp("tune") / "src", "llama")


def _initializers(art):
    import onnx

    m = onnx.load(str(art / "model.onnx"), load_external_data=True)
    return {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}


def test_tuned_export_stores_the_same_codes_with_tuned_scales(src, tmp_path):
    """A compressed model (shared bases, fused q/k/v and gate/up, deltas): the tuned artifact
    passes its parity checks against the tuned weights and differs from the untuned one only
    in the tuned weights' scales; the manifest records the tuning. The tuned export is the int4
    default (tune_steps auto), the untuned one sets 0."""
    base = dict(quantize="int4", block_size=16, value_bits=4)
    plain = export_onnx(src, ExportConfig(**base, tune_steps=0), tmp_path / "plain")
    tuned = export_onnx(src, ExportConfig(**base), tmp_path / "tuned")
    m = json.loads((tuned / "manifest.json").read_text())
    assert m["export_config"]["tune_steps"] == DEFAULT_TUNE_STEPS and m["scale_tuning"]["steps"] == DEFAULT_TUNE_STEPS
    assert m["scale_tuning"]["tensors"] > 0
    assert m["scale_tuning_choice"] == {"mode": "auto", "steps": DEFAULT_TUNE_STEPS, "off_because": None}
    assert m["parity"]["greedy_decode"]["identical"] and m["parity"]["quality_gate"]["passed"]
    m0 = json.loads((plain / "manifest.json").read_text())
    assert m0["scale_tuning"] is None and m0["scale_tuning_choice"] == {"mode": "set", "steps": 0, "off_because": None}
    a, b = _initializers(plain), _initializers(tuned)
    assert a.keys() == b.keys()
    scales = [n for n in a if n.endswith(".scales") and "delta" not in n]
    assert scales and all(not np.array_equal(a[n], b[n]) for n in scales)  # every tuned weight's scales moved
    for n in a:
        if n.endswith(".scales") and "delta" not in n:
            continue
        if "delta" in n:  # quantized after the tuning, as without it
            continue
        assert np.array_equal(a[n], b[n]), n  # codes, norms and everything else as without tuning
    for n in (n for n in a if n.endswith(".weight") and a[n].dtype == np.uint8):
        assert np.array_equal(_unpack(a[n], 4), _unpack(b[n], 4))


@pytest.mark.parametrize("kw,match", [
    (dict(tune_steps=-1), "tune_steps must be an integer >= 0"),
    (dict(tune_steps=2.5), "tune_steps must be an integer >= 0"),
    (dict(tune_steps=5), "tune_steps needs a quantized export"),
    (dict(quantize="int4", float_zero_points=True, tune_steps=5), "does not take float_zero_points"),
])
def test_tuning_config_errors_name_the_value(kw, match):
    with pytest.raises(ConfigError, match=match):
        ExportConfig(**kw)


def test_auto_tunes_int4_with_integer_codes_where_it_can_read_text_and_fits_in_memory(monkeypatch):
    """tune_steps None: DEFAULT_TUNE_STEPS on int4 with integer codes, else 0 with the reason;
    a set value is taken as given."""
    import psutil

    model = tiny_model("llama").eval()
    assert resolve_tune_steps(ExportConfig(quantize="int4"), model, True) == (DEFAULT_TUNE_STEPS, None)
    assert resolve_tune_steps(ExportConfig(quantize="int4", tune_steps=7), model, False) == (7, None)
    for cfg in (ExportConfig(quantize="int8"), ExportConfig(quantize="int4", float_zero_points=True), ExportConfig()):
        steps, why = resolve_tune_steps(cfg, model, True)
        assert steps == 0 and "int4" in why
    steps, why = resolve_tune_steps(ExportConfig(quantize="int4"), model, False)
    assert steps == 0 and "no tokenizer" in why
    need = tuning_memory_bytes(model)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": need - 1})())
    steps, why = resolve_tune_steps(ExportConfig(quantize="int4"), model, True)
    assert steps == 0 and "GiB of memory" in why

