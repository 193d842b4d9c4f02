"""What lets compress() run a 1.5B model in 16 GiB: input covariances computed layer by layer
as they are asked for (StreamedCovariances), a bounded whitening cache, and a student that
keeps the model's unchanged tensors (reuse_weights). Each must give the same numbers as the
all-at-once path."""

import gc
import weakref

import pytest
import torch

from edgedelta.delta.calibration import StreamedCovariances, WhiteningCache, input_covariances
from edgedelta.delta.compress import compress
from edgedelta.delta.config import CompressConfig
from edgedelta.models.adapters import adapter_for
from tests.tiny import tiny_ids, tiny_model

PROJ = ("q", "k", "v", "o", "gate", "up", "down")


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3_text", "qwen3"])
def test_streamed_covariances_equal_the_full_pass(arch):
    """The same C for every (layer, projection), asked for out of order; sliding and global
    layers (Gemma) get their own masks and rotary tables through the captured arguments."""
    model = tiny_model(arch, layers=6)
    adapter = adapter_for(model.config)
    ids = tiny_ids(n=6, seq=16)
    full = input_covariances(model, adapter, range(6), PROJ, ids, batch_size=4)
    streamed = StreamedCovariances(model, adapter, PROJ, ids, batch_size=4)
    for li in (3, 0, 5, 1, 4, 2):
        for p in PROJ:
            torch.testing.assert_close(streamed[(li, p)], full[(li, p)], rtol=1e-9, atol=1e-9)
    assert streamed[(0, "q")] is streamed[(0, "k")]  # one tensor per distinct input, as input_covariances
    # layers 0..3 for the first ask, then each revisit is one layer (its inputs are kept)
    assert streamed.layers_run == 4 + 1 + 1
    assert "forward" not in vars(adapter.decoder_layers(model)[0])  # the stand-ins are gone
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, model(ids).logits)


def test_streamed_covariances_stay_within_their_budget():
    model = tiny_model("llama", layers=4)
    adapter = adapter_for(model.config)
    one_layer = sum(c.numel() * 8 for c in {id(c): c for c in input_covariances(
        model, adapter, [0], PROJ, tiny_ids(n=2), batch_size=4).values()}.values())
    streamed = StreamedCovariances(model, adapter, PROJ, tiny_ids(n=2), max_bytes=one_layer)
    c0 = streamed[(0, "down")]
    full_1 = streamed[(1, "down")]
    assert list(streamed._covs) == [1]  # layer 0 evicted
    again = streamed[(0, "down")]
    assert again is not c0 and torch.equal(again, c0) and streamed.layers_run == 3
    streamed.release()  # nothing held; asking again starts over from the embedding
    assert not streamed._covs and not streamed._inputs
    assert torch.equal(streamed[(1, "down")], full_1) and streamed.layers_run == 3 + 2


def test_whitening_cache_is_bounded_and_keeps_no_covariance_alive():
    covs = [torch.eye(8, dtype=torch.float64) * (i + 1) for i in range(3)]
    cache = WhiteningCache(0.01, max_bytes=2 * 8 * 8 * 4)  # one entry: S and S·Sᵀ in float32
    s0 = cache(covs[0])
    assert cache(covs[0]) is s0
    cache.damped(covs[1])
    assert len(cache._s) == 1
    ref = weakref.ref(covs[2])
    cache(covs[2])
    del covs[2]
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("drop", [0, 1])
def test_reuse_weights_gives_the_same_student_and_leaves_the_model(drop):
    model = tiny_model("llama", layers=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = CompressConfig(target_params=0.8, drop_layers=drop, rank_attn=2, rank_mlp=2, calib_samples=4, calib_seq_len=16)
    copied = compress(model, cfg, calib_ids=tiny_ids(n=4), progress=False)
    reused = compress(model, cfg, calib_ids=tiny_ids(n=4), progress=False, reuse_weights=True)
    a, b = copied.model.state_dict(), reused.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    model_tensors = {p.data_ptr() for p in model.parameters()}
    assert reused.model.get_input_embeddings().weight.data_ptr() in model_tensors  # not a copy
    assert copied.model.get_input_embeddings().weight.data_ptr() not in model_tensors


@pytest.mark.parametrize("arch", ["llama", "gemma2", "phi3"])
def test_sensitivity_from_the_groups_first_layer_equals_the_full_forward(arch):
    """The planner's score of a candidate, with its forwards starting at the group's first
    layer (stored inputs) and the gates' forward stopping after its last, equals the score
    from whole forwards; the model is left as it was."""
    from edgedelta.delta.groups import build_spec
    from edgedelta.delta.plan import group_sensitivity, log_probs
    from edgedelta.models.layer_inputs import LayerInputs

    model = tiny_model(arch, layers=6)
    adapter = adapter_for(model.config)
    ids = tiny_ids(n=2, seq=16)
    cfg = CompressConfig(groups=[[2, 3]], rank_attn=2, rank_mlp=2, gates=True)
    from edgedelta.models.similarity import block_influence

    spec = build_spec(cfg, adapter, [[2, 3]], model, influence=block_influence(model, ids))
    projections = cfg.shared_projections(adapter)
    covs = input_covariances(model, adapter, range(6), projections, ids)
    ref = log_probs(model, ids)
    before = log_probs(model, ids)
    inputs = LayerInputs(model, adapter, ids)
    whole = group_sensitivity(model, adapter, spec, cfg, covs, ids, ref)
    started = group_sensitivity(model, adapter, spec, cfg, covs, ids, ref, inputs=inputs)
    assert whole > 1e-4 and started == pytest.approx(whole, rel=1e-4)
    torch.testing.assert_close(log_probs(model, ids), before)
    assert not any("forward" in vars(layer) for layer in adapter.decoder_layers(model))
    with pytest.raises(ValueError, match="rows it was prepared for"):
        with inputs.from_layer(2):
            log_probs(model, tiny_ids(n=3, seq=16))
