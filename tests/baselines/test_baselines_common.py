"""Layer/sub-layer removal keeps a runnable model (forward and generate with a KV cache)."""

import pytest
import torch

from edgedelta.baselines.common import resolve_target
from edgedelta.models.similarity import layer_similarities
from edgedelta.models.surgery import drop_sublayers, remove_layers
from edgedelta.delta.accounting import count_parameters
from edgedelta.errors import ConfigError


def _generate_matches_no_cache(model):
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
        b = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


def test_similarities_shapes(tiny_model):
    sims = layer_similarities(tiny_model, torch.randint(0, 300, (2, 16)))
    assert len(sims) == 4 and all(-1 <= s["block_cos"] <= 1 for s in sims)


def test_remove_layers_runs_with_kv_cache(tiny_model):
    import copy

    m = remove_layers(copy.deepcopy(tiny_model), [1, 2])
    assert m.config.num_hidden_layers == 2 and len(m.model.layers) == 2
    assert [l.self_attn.layer_idx for l in m.model.layers] == [0, 1]
    _generate_matches_no_cache(m)


def test_drop_sublayers_including_layer0_attention(tiny_model):
    import copy

    before = count_parameters(tiny_model)["total"]
    m = drop_sublayers(copy.deepcopy(tiny_model), attn={0, 2}, mlp={2, 3})
    assert len(m.model.layers) == 3  # layer 2 lost both halves: removed
    after = count_parameters(m)["total"]
    assert after < before
    _generate_matches_no_cache(m)


def test_resolve_target_errors(tiny_model):
    n = count_parameters(tiny_model)["total"]
    assert resolve_target(tiny_model, 0.5) == round(n * 0.5)
    with pytest.raises(ConfigError):
        resolve_target(tiny_model, n + 1)
    with pytest.raises(ConfigError):
        resolve_target(tiny_model, 0)
