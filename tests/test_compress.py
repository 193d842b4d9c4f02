"""The shared-plus-delta model: exactness at full rank, sharing, accounting, storage."""

import json

import pytest
import torch

from edgedelta.delta.accounting import count_parameters
from edgedelta.delta.compress import compress
from edgedelta.delta.config import CompressConfig
from edgedelta.delta.layer import DeltaLinear
from edgedelta.delta.storage import load_compressed, save_compressed
from edgedelta.delta.structure import merge_model
from edgedelta.errors import ConfigError, IntegrityError, OutputExistsError
from edgedelta.models.adapters import adapter_for

from .tiny import ARCHS, tiny_ids, tiny_model, tiny_tokenizer


def _full_rank_cfg(**kw):
    # hidden 32, mlp 64, 2 kv heads of 8: these ranks are full rank for every projection
    return CompressConfig(groups=[[0, 1], [2, 3]], rank_attn=32, rank_mlp=32, ranks={"k": 16, "v": 16}, **kw)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("init", ["svd", "asvd"])
@pytest.mark.parametrize("base", ["mean", "anchor"])
def test_full_rank_deltas_reproduce_logits(arch, init, base):
    model = tiny_model(arch)
    ids = tiny_ids()
    ref = model(input_ids=ids).logits
    res = compress(model, _full_rank_cfg(init=init, gates=False, base=base), calib_ids=ids, progress=False)
    out = res.model(input_ids=ids).logits
    assert (out - ref).abs().max().item() <= 1e-5
    # the input model is untouched
    assert not any(isinstance(m, DeltaLinear) for m in model.modules())


def test_alternating_base_and_gates_full_rank_exact():
    model = tiny_model("llama")
    ids = tiny_ids()
    ref = model(input_ids=ids).logits
    res = compress(model, _full_rank_cfg(init="asvd", gates=True, base="alternating"), calib_ids=ids, progress=False)
    assert (res.model(input_ids=ids).logits - ref).abs().max().item() <= 1e-5
    gates = [m.gate.item() for m in res.model.modules() if isinstance(m, DeltaLinear) and m.gate is not None]
    assert gates and all(abs(g - 1) < 1e-6 for g in gates)  # exact approximation → gate 1


def test_shared_weight_is_one_parameter_object():
    res = compress(tiny_model(), CompressConfig(groups=[[1, 2]], rank_attn=4, rank_mlp=4, init="svd", gates=False, base="mean"), progress=False)
    layers = adapter_for(res.model.config).decoder_layers(res.model)
    assert layers[1].mlp.up_proj.weight is layers[2].mlp.up_proj.weight
    assert layers[1].self_attn.q_proj.weight is layers[2].self_attn.q_proj.weight
    assert layers[1].mlp.up_proj.delta_A is not layers[2].mlp.up_proj.delta_A


def test_low_rank_asvd_beats_weight_svd_on_output_error():
    model = tiny_model("llama")
    ids = tiny_ids(8, 32)
    kw = dict(groups=[[1, 2]], rank_attn=4, rank_mlp=4, gates=False, base="mean")
    err = {}
    for init in ("svd", "asvd"):
        res = compress(model, CompressConfig(init=init, **kw), calib_ids=ids, progress=False)
        err[init] = (res.model(input_ids=ids).logits - model(input_ids=ids).logits).pow(2).mean().item()
    assert err["asvd"] < err["svd"]


def _brute_force_unique(model):
    seen, n = set(), 0
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return n


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_parameter_accounting_matches_brute_force(arch):
    model = tiny_model(arch)
    res = compress(model, CompressConfig(groups=[[0, 1, 2]], rank_attn=3, rank_mlp=5, init="svd", gates=True, base="first"), calib_ids=tiny_ids(), progress=False)
    counts = count_parameters(res.model)
    assert counts["total"] == _brute_force_unique(res.model)
    assert counts["total"] < count_parameters(model)["total"]
    assert counts["by_component"]["shared_base"] > 0 and counts["by_component"]["delta"] > 0


def test_save_load_round_trip_bit_exact(tmp_path):
    model = tiny_model("qwen2")
    res = compress(model, CompressConfig(groups=[[0, 1], [2, 3]], rank_attn=4, rank_mlp=4), calib_ids=tiny_ids(), progress=False)
    out = save_compressed(res.model, tmp_path / "c", tokenizer=tiny_tokenizer())
    loaded = load_compressed(out).model
    a, b = res.model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    layers = adapter_for(loaded.config).decoder_layers(loaded)
    assert layers[0].mlp.down_proj.weight is layers[1].mlp.down_proj.weight
    # each shared tensor stored once: file size within 1% of unique-parameter bytes
    size = (out / "model.safetensors").stat().st_size
    assert size <= 1.01 * count_parameters(loaded)["total"] * 4 + 16384
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["total"] == count_parameters(loaded)["total"]
    ids = tiny_ids()
    assert torch.equal(res.model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_merge_gives_plain_model_with_same_logits():
    res = compress(tiny_model(), CompressConfig(groups=[[0, 1]], rank_attn=4, rank_mlp=4), calib_ids=tiny_ids(), progress=False)
    ids = tiny_ids()
    ref = res.model(input_ids=ids).logits
    plain = merge_model(res.model)
    assert not any(isinstance(m, DeltaLinear) for m in plain.modules())
    assert (plain(input_ids=ids).logits - ref).abs().max().item() <= 1e-5


def test_tampered_weights_refused(tmp_path):
    res = compress(tiny_model(), CompressConfig(groups=[[0, 1]], rank_attn=2, rank_mlp=2, init="svd", gates=False, base="mean"), progress=False)
    out = save_compressed(res.model, tmp_path / "c")
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load_compressed(out)


def test_existing_output_refused_without_force(tmp_path):
    res = compress(tiny_model(), CompressConfig(groups=[[0, 1]], rank_attn=2, rank_mlp=2, init="svd", gates=False, base="mean"), progress=False)
    (tmp_path / "c").mkdir()
    with pytest.raises(OutputExistsError):
        save_compressed(res.model, tmp_path / "c")
    save_compressed(res.model, tmp_path / "c", force=True)
    assert (tmp_path / "c" / "manifest.json").is_file()


@pytest.mark.parametrize("kw, match", [
    (dict(groups=[[0, 1]], rank_attn=999), "exceeds"),
    (dict(groups=[[0, 1], [1, 2]]), "overlap"),
    (dict(groups=[[2, 7]]), "out of range|consecutive"),
    (dict(groups=[[0, 2]]), "consecutive"),
    (dict(groups=[[3]]), "fewer than 2"),
    (dict(layer_range=(0, 9)), "outside"),
])
def test_bad_plans_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        compress(tiny_model(), CompressConfig(init="svd", gates=False, base="mean", **kw), progress=False)


@pytest.mark.parametrize("kw", [dict(base="median"), dict(init="pca"), dict(target_params=1.5), dict(rank_attn=-1),
                                dict(projections=["qq"]), dict(ranks={"zz": 3}), dict(group_size=1)])
def test_bad_config_values(kw):
    with pytest.raises(ConfigError):
        CompressConfig(**kw)


def test_config_json_round_trip_and_unknown_field():
    cfg = CompressConfig(groups=[[0, 1]], ranks={"down": 8})
    assert CompressConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        CompressConfig.from_dict({"groupz": [[0, 1]]})


def test_budget_planner_meets_target_and_prefers_insensitive_layers():
    model = tiny_model("llama", layers=8)
    ids = tiny_ids(4, 32)
    cfg = CompressConfig(target_params=0.85, rank_attn=2, rank_mlp=2)
    res = compress(model, cfg, calib_ids=ids, progress=False)
    plan = res.plan
    assert plan["compressed_params"] <= 0.85 * plan["original_params"]
    assert len(plan["sensitivity"]) == 7
    assert res.model(input_ids=ids).logits.isfinite().all()
    # anchored plans: the KL plan and the influence plan are both built; the one nearer the original is kept
    cands = plan["candidates"]
    assert set(cands) == {"kl", "influence"}
    assert plan["groups"] == cands[plan["chosen"]]["groups"]
    assert cands[plan["chosen"]]["kl"] == min(c["kl"] for c in cands.values())
    # a target no plan can reach is a clear error
    with pytest.raises(ConfigError, match="cannot be reached"):
        compress(model, CompressConfig(target_params=0.05, rank_attn=2, rank_mlp=2), calib_ids=ids, progress=False)


def test_base_scale_never_worse_than_plain_delta():
    """α chosen by least squares is kept only when it lowers the output error."""
    model = tiny_model("llama")
    ids = tiny_ids(8, 32)
    kw = dict(groups=[[1, 2]], rank_attn=4, rank_mlp=4, gates=False, base="mean", init="asvd")
    plain = compress(model, CompressConfig(scale_base=False, **kw), calib_ids=ids, progress=False).report["init"]
    scaled = compress(model, CompressConfig(scale_base=True, **kw), calib_ids=ids, progress=False)
    for g, projs in scaled.report["init"].items():
        for p, r in projs.items():
            for e_s, e_p in zip(r["rel_error"], plain[g][p]["rel_error"]):
                assert e_s <= e_p + 1e-4
    alphas = [m.base_scale.item() for m in scaled.model.modules() if isinstance(m, DeltaLinear)]
    assert alphas and any(abs(a - 1) > 1e-3 for a in alphas)


def test_zero_residual_delta_is_trainable():
    """Two identical layers with a mean base: each residual is 0, so B = 0, but A must be
    nonzero or the delta sits at a saddle point (zero gradient for both factors) and never trains."""
    model = tiny_model("llama")
    layers = adapter_for(model.config).decoder_layers(model)
    layers[1].load_state_dict(layers[0].state_dict())
    ids = tiny_ids()
    res = compress(model, CompressConfig(groups=[[0, 1]], rank_attn=4, rank_mlp=4, base="mean", scale_base=False, gates=False),
                   calib_ids=ids, progress=False)
    first = adapter_for(res.model.config).decoder_layers(res.model)[0].mlp.up_proj
    assert first.delta_B.abs().max() < 1e-5 and first.delta_A.abs().max() > 0
    res.model(input_ids=ids).logits.sum().backward()
    assert first.delta_B.grad.abs().max() > 0


def test_cheapest_groups_is_optimal_where_greedy_blocks_itself():
    from edgedelta.delta.plan import cheapest_groups

    # candidates [1,2] is the cheapest, but taking it leaves no second pair in 4 layers
    assert cheapest_groups([0.5, 0.1, 0.5], 2, 4, 2) == [[0, 1], [2, 3]]
    assert cheapest_groups([0.5, 0.1, 0.5], 2, 4, 1) == [[1, 2]]
    assert cheapest_groups([3, 1, 2, 1, 0.5], 3, 7, 2) == [[1, 2, 3], [4, 5, 6]]
    import itertools
    cost = [0.3, 0.9, 0.2, 0.4, 0.1, 0.8, 0.05, 0.6, 0.7]  # brute force on 10 layers, 3 pairs
    best = min((c for c in itertools.combinations(range(9), 3) if all(b - a >= 2 for a, b in zip(c, c[1:]))),
               key=lambda c: sum(cost[s] for s in c))
    assert cheapest_groups(cost, 2, 10, 3) == [[s, s + 1] for s in best]
