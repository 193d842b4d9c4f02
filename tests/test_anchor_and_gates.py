"""Anchored groups (one layer of each group IS the base, exact, no delta) and sub-layer gates
fitted on real sub-layer outputs."""

import pytest
import torch

from edgedelta.models.similarity import block_influence
from edgedelta.delta.compress import compress
from edgedelta.delta.config import CompressConfig
from edgedelta.delta.layer import DeltaLinear
from edgedelta.delta.structure import SharingSpec
from edgedelta.errors import ConfigError
from edgedelta.models.adapters import adapter_for

from .tiny import tiny_ids, tiny_model


def _sub(adapter, layer, proj):
    return layer.get_submodule(adapter.projections[proj].rpartition(".")[0])


def test_anchor_is_the_most_influential_layer_exact_and_without_delta():
    model = tiny_model("llama", layers=6)
    ids = tiny_ids(4, 32)
    bi = block_influence(model, ids)
    res = compress(model, CompressConfig(groups=[[1, 2, 3]], rank_attn=3, rank_mlp=5), calib_ids=ids, progress=False)
    anchor = max([1, 2, 3], key=lambda i: bi[i])
    assert res.spec.anchors == [anchor] and res.plan["anchors"] == [anchor]
    ad = adapter_for(model.config)
    src, dst = ad.decoder_layers(model), ad.decoder_layers(res.model)
    for p in res.spec.projections:
        a = ad.get_linear(dst[anchor], p)
        assert a.rank == 0 and torch.equal(a.weight, ad.get_linear(src[anchor], p).weight)
        for li in {1, 2, 3} - {anchor}:
            other = ad.get_linear(dst[li], p)
            assert other.weight is a.weight and other.rank == res.spec.ranks[p]


def test_first_base_anchors_the_first_layer():
    res = compress(tiny_model(), CompressConfig(groups=[[1, 2]], base="first", rank_attn=2, rank_mlp=2), calib_ids=tiny_ids(), progress=False)
    assert res.spec.anchors == [1]


def test_spec_with_foreign_anchor_is_refused():
    d = SharingSpec([[0, 1]], ["q"], {"q": 2}, anchors=[3]).to_dict()
    with pytest.raises(ConfigError, match="anchors"):
        SharingSpec.from_dict(d)


def _gated_sublayer_errors(res, model, ids):
    """Per gated sub-layer: squared error to the original sub-layer on the inputs the student
    really feeds it, at the fitted gate g and at g' in {0, 1, 0.9 g, 1.1 g}."""
    ad = adapter_for(model.config)
    s_layers, o_layers = ad.decoder_layers(res.model), ad.decoder_layers(model)
    errs, hooks = {}, []

    def make(li, proj):
        lin = ad.get_linear(s_layers[li], proj)
        teacher = _sub(ad, o_layers[li], proj)

        def hook(_m, args, kwargs, out):
            y = out[0] if isinstance(out, tuple) else out
            t = teacher(*args, **kwargs)
            t = t[0] if isinstance(t, tuple) else t
            g = lin.gate.item()
            a = y / g  # ungated (no bias in llama)
            errs[(li, proj)] = {alt: float(((t - alt * a) ** 2).sum()) for alt in (g, 0.0, 1.0, 0.9 * g, 1.1 * g)}
        return hook

    for gi, group in enumerate(res.spec.groups):
        for li in group:
            for proj in res.spec.gates:
                hooks.append(_sub(ad, s_layers[li], proj).register_forward_hook(make(li, proj), with_kwargs=True))
    with torch.no_grad():
        res.model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return errs


def test_sublayer_gates_are_least_squares_on_real_outputs():
    model = tiny_model("llama", layers=6)
    ids = tiny_ids(4, 32)
    res = compress(model, CompressConfig(groups=[[1, 2], [3, 4]], rank_attn=2, rank_mlp=2, base="mean"), calib_ids=ids, progress=False)
    assert set(res.spec.gates) == {"o", "down"}
    gates = res.report["init"]["sublayer_gates"]
    assert len(gates) == 8 and any(abs(g - 1) > 1e-3 for g in gates.values())  # mean base: no anchors
    errs = _gated_sublayer_errors(res, model, ids)
    assert len(errs) == 8
    for key, e in errs.items():
        assert e[next(iter(e))] <= min(e.values()) * (1 + 1e-6), (key, e)  # the fitted g is the minimiser
        assert e[next(iter(e))] <= e[0.0]  # never worse than dropping the sub-layer


def test_sublayer_gates_are_one_when_the_approximation_is_exact():
    model = tiny_model("llama")
    ids = tiny_ids()
    res = compress(model, CompressConfig(groups=[[0, 1], [2, 3]], rank_attn=32, rank_mlp=32, ranks={"k": 16, "v": 16}),
                   calib_ids=ids, progress=False)
    gates = [m.gate.item() for m in res.model.modules() if isinstance(m, DeltaLinear) and m.gate is not None]
    assert len(gates) == 8 and all(abs(g - 1) < 1e-4 for g in gates)
