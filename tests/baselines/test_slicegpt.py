"""SliceGPT: the rotation alone is exact, the budget is met with the tied head intact, and the
calibration PCA keeps more hidden-state energy than an arbitrary rotation."""

import pytest
import torch

from edgedelta.baselines import slicegpt
from edgedelta.models.surgery import copy_model
from edgedelta.delta.accounting import count_parameters
from edgedelta.errors import ConfigError

from ..tiny import ARCHS, tiny_ids, tiny_model

# Gemma 2/3 normalise each sub-layer's output in the residual basis (post norms): a rotation
# does not commute with those norms' weights, so slicegpt refuses them (test below)
POST_NORM_ARCHS = ("gemma2", "gemma3_text")
SLICEABLE = tuple(a for a in ARCHS if a not in POST_NORM_ARCHS)
CALIB = tiny_ids()  # (4, 16)
HELD = tiny_ids(8, seed=1)  # different tokens


@pytest.mark.parametrize("arch", POST_NORM_ARCHS)
def test_post_norm_architectures_refused(arch):
    with pytest.raises(ConfigError, match="post_feedforward_layernorm"):
        slicegpt.build(tiny_model(arch), 0.8, CALIB)


@pytest.mark.parametrize("arch", SLICEABLE)
def test_full_rotation_reproduces_logits(arch):
    m = tiny_model(arch)
    q, _ = slicegpt.pca_rotation(slicegpt.hidden_state_covariance(m, CALIB))
    r = slicegpt.rotate_and_slice(copy_model(m), q)  # d' = hidden: nothing dropped
    with torch.no_grad():
        assert (r(HELD).logits - m(HELD).logits).abs().max() <= 1e-4
    hidden = m.config.hidden_size
    assert count_parameters(r)["total"] == count_parameters(m)["total"] + hidden * hidden  # Q counted once


@pytest.mark.parametrize("arch", SLICEABLE)
def test_build_budget_tied_head_and_runs(arch):
    m = tiny_model(arch)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    n = count_parameters(m)["total"]
    res = slicegpt.build(m, 0.8, CALIB)
    rep, out = res.report, res.model
    got = count_parameters(out)["total"]
    assert got == rep["params"] and got - rep["target_params"] == rep["gap_params"]
    assert rep["target_params"] == round(0.8 * n) and abs(rep["gap_params"]) <= rep["granularity_params"] / 2 + 1
    assert rep["sliced_dim"] % 8 == 0 and rep["sliced_dim"] < m.config.hidden_size
    ids = HELD[:1, :5]
    with torch.no_grad():
        assert torch.isfinite(out(HELD).logits).all()
        a = out.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        b = out.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(a, b)
    if m.config.tie_word_embeddings:
        assert out.lm_head.weight is out.get_input_embeddings().weight
        assert out.get_input_embeddings().weight.shape == (m.config.vocab_size, m.config.hidden_size)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # input untouched


def test_pca_keeps_more_energy_than_random_rotation():
    m = tiny_model("llama")
    d = 16  # half of hidden
    q, _ = slicegpt.pca_rotation(slicegpt.hidden_state_covariance(m, CALIB))
    c = slicegpt.hidden_state_covariance(m, HELD)  # measured on held-out tokens

    def kept(qd):
        return float((qd.T @ c @ qd).trace() / c.trace())

    g = torch.Generator().manual_seed(0)
    rand = [kept(torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))[0][:, :d]) for _ in range(8)]
    assert kept(q[:, :d]) > max(rand) + 0.05


def test_sliced_model_closer_with_pca_than_random():
    m = tiny_model("llama")
    q, _ = slicegpt.pca_rotation(slicegpt.hidden_state_covariance(m, CALIB))
    rnd = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    with torch.no_grad():
        ref = m(HELD).logits
        err = [(slicegpt.rotate_and_slice(copy_model(m), r[:, :16])(HELD).logits - ref).pow(2).mean() for r in (q, rnd)]
    assert err[0] < err[1]


def test_unreachable_budget_says_how_close():
    with pytest.raises(ConfigError, match="closest"):
        slicegpt.build(tiny_model("llama"), 0.05, CALIB)  # the embedding alone is 10%
