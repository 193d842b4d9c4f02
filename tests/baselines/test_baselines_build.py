"""Each baseline hits the requested unique-parameter count (within its granularity), leaves
its input untouched, and yields a model that still runs (forward + generate with KV cache)."""

import pytest
import torch

from edgedelta.baselines import jointdrop, laco, shortgpt
from edgedelta.delta.accounting import count_parameters
from edgedelta.errors import ConfigError

from ..bpe_tiny import make_model


@pytest.fixture(scope="module")
def model8():
    return make_model(vocab=300, layers=8)


CALIB = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))


def _check_runs(m):
    ids = torch.randint(0, 300, (1, 5))
    with torch.no_grad():
        assert torch.isfinite(m(ids).logits).all()
        a = m.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        b = m.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", [shortgpt, laco, jointdrop])
@pytest.mark.parametrize("fraction", [0.88, 0.75])
def test_budget_and_runs(model8, method, fraction):
    before = {k: v.clone() for k, v in model8.state_dict().items()}
    n = count_parameters(model8)["total"]
    res = method.build(model8, fraction, CALIB)
    rep = res.report
    got = count_parameters(res.model)["total"]
    assert rep["params"] == got
    assert abs(got - round(n * fraction)) <= rep["granularity_params"] / 2 + 1
    assert got < n
    _check_runs(res.model)
    assert all(torch.equal(before[k], v) for k, v in model8.state_dict().items())  # input untouched
    assert len(model8.model.layers) == 8 and model8.config.num_hidden_layers == 8


def test_shortgpt_removes_lowest_bi(model8):
    res = shortgpt.build(model8, 0.75, CALIB)
    bi = res.report["block_influence"]
    removed = res.report["removed_layers"]
    kept = [i for i in range(8) if i not in removed]
    assert max(bi[i] for i in removed) <= min(bi[i] for i in kept)


def test_jointdrop_finer_than_layers(model8):
    res = jointdrop.build(model8, 0.9, CALIB)
    assert abs(res.report["gap_params"]) <= res.report["smallest_step_params"]


def test_laco_rdsc_formula(model8):
    merged = laco.rdsc_merge(model8, 2, 2)
    L = model8.model.layers
    w = L[2].mlp.up_proj.weight + (L[3].mlp.up_proj.weight - L[2].mlp.up_proj.weight) + (L[4].mlp.up_proj.weight - L[2].mlp.up_proj.weight)
    assert torch.allclose(merged.model.layers[2].mlp.up_proj.weight, w)
    assert len(merged.model.layers) == 6


def test_unreachable_budget_says_how_close(model8):
    n = count_parameters(model8)["total"]
    with pytest.raises(ConfigError, match="closest"):
        shortgpt.build(model8, 0.05, CALIB)  # embeddings alone exceed 5%


def test_laco_reaches_budget_when_no_merge_passes_threshold(model8):
    res = laco.build(model8, 0.75, CALIB, threshold=1.01)
    assert res.report["merges"] and all(m["accepted_by"] == "best-of-sweep" for m in res.report["merges"])
    assert abs(res.report["gap_params"]) <= res.report["granularity_params"] / 2 + 1
    _check_runs(res.model)
