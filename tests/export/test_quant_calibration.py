"""Calibration statistics (export/calibration.py): one input Hessian per Parameter, a shared
base summed over every layer that reads it, deltas from their own layer, windows that never
split a group."""

import numpy as np
import pytest
import torch

from edgedelta.errors import ConfigError
from edgedelta.export.calibration import HEAD, CalibrationStats, calibration_for
from edgedelta.export.config import ExportConfig
from edgedelta.models.adapters import adapter_for
from tests.tiny import tiny_ids
from tests.tiny_compressed import tiny_compressed_model


def _inputs(model, ids):
    """{(layer, proj): x (tokens, K)} read by every projection, and the LM head's input."""
    ad = adapter_for(model.config)
    seen, hooks = {}, []
    for li, layer in enumerate(ad.decoder_layers(model)):
        for proj in ad.projections:
            def hook(_m, args, key=(li, proj)):
                seen.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]).double())
            hooks.append(ad.get_linear(layer, proj).register_forward_pre_hook(hook))
    hooks.append(model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: seen.setdefault("head", []).append(args[0].reshape(-1, args[0].shape[-1]).double())))
    with torch.no_grad():
        for s in range(0, ids.shape[0], 2):
            model(input_ids=ids[s:s + 2])
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in seen.items()}


@pytest.fixture(scope="module")
def setup():
    model = tiny_compressed_model("llama")  # groups (0, 1) and (2, 3), every projection shared, rank 4
    ids = tiny_ids(4, 16)
    return model, ids, _inputs(model, ids)


def test_shared_base_sums_the_inputs_of_every_reader(setup):
    model, ids, xs = setup
    stats = CalibrationStats(model, ids, batch_size=2, bf16_forward=False)
    layers = adapter_for(model.config).decoder_layers(model)
    for proj, path in (("q", "self_attn.q_proj"), ("down", "mlp.down_proj")):
        mods = [layers[i].get_submodule(path) for i in (0, 1)]
        assert mods[0].weight is mods[1].weight  # one Parameter, two readers
        x = torch.cat([xs[(0, proj)], xs[(1, proj)]])
        np.testing.assert_allclose(stats.hessian(mods[0].weight), (x.T @ x).numpy(), rtol=1e-4, atol=1e-3)
        # layer 1's own delta reads only layer 1's input; its B reads x·Aᵀ
        x1, a = xs[(1, proj)], mods[1].delta_A.detach().double()
        np.testing.assert_allclose(stats.hessian(mods[1].delta_A), (x1.T @ x1).numpy(), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(stats.hessian(mods[1].delta_B), (a @ x1.T @ x1 @ a.T).numpy(), rtol=1e-3, atol=1e-3)
    # the tied LM head's Hessian, keyed by the embedding Parameter it reads
    emb = model.get_input_embeddings().weight
    np.testing.assert_allclose(stats.hessian(emb), (xs["head"].T @ xs["head"]).numpy(), rtol=1e-4, atol=1e-3)
    assert stats.hessian(torch.zeros(3)) is None and stats.passes == 1


def test_windows_keep_groups_whole_and_give_the_same_hessians(setup):
    model, ids, _ = setup
    whole = CalibrationStats(model, ids, batch_size=2, bf16_forward=False)
    small = CalibrationStats(model, ids, batch_size=2, max_bytes=1, bf16_forward=False)  # every window as small as the groups allow
    assert whole.windows == [[0, 1, 2, 3, HEAD]] and small.windows == [[0, 1], [2, 3, HEAD]]
    layers = adapter_for(model.config).decoder_layers(model)
    for li in (0, 2):
        w = layers[li].mlp.up_proj.weight
        np.testing.assert_allclose(small.hessian(w), whole.hessian(w), rtol=1e-5, atol=1e-4)
    assert small.passes == 2  # one forward per window, in order


def test_calibration_refuses_what_it_cannot_do():
    model = tiny_compressed_model("llama")
    assert calibration_for(model, None, ExportConfig(quantize="int4", quant_method="rtn")) is None
    assert calibration_for(model, None, ExportConfig()) is None  # no quantization
    with pytest.raises(ConfigError, match="no tokenizer"):
        calibration_for(model, None, ExportConfig(quantize="int4", quant_method="gptq"))


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_each_window_starts_where_the_one_before_stopped(arch):
    """A window's pass starts at its first layer from the hidden states the pass before
    stored: the same Hessians as one whole pass, every layer run once per window (the head,
    asked for first, is a pass through all of them). Gemma 2's layers return tuples."""
    model = tiny_compressed_model(arch)
    ids = tiny_ids(4, 16)
    whole = CalibrationStats(model, ids, batch_size=2, bf16_forward=False)
    small = CalibrationStats(model, ids, batch_size=2, max_bytes=1, bf16_forward=False)
    assert small.windows == [[0, 1], [2, 3, HEAD]]
    emb = model.get_input_embeddings().weight
    np.testing.assert_allclose(small.hessian(emb), whole.hessian(emb), rtol=1e-5, atol=1e-4)
    layers = adapter_for(model.config).decoder_layers(model)
    for li in range(4):
        for path in ("mlp.up_proj", "mlp.down_proj", "self_attn.q_proj"):
            w = layers[li].get_submodule(path).delta_A  # one layer's own reader: each window's own input
            np.testing.assert_allclose(small.hessian(w), whole.hessian(w), rtol=1e-5, atol=1e-4)
    assert small.passes == 3 and small.layers_run == 4 + 2 + 2
    assert not any("forward" in vars(layer) for layer in layers)


def test_upper_block_gram_rebuilds_the_whole_matrix():
    """xᵀx accumulated on the upper block triangle (blocks of 3 columns, K = 10: 3 blocks of
    3, 3 and 4) and mirrored equals the full product, over two accumulations."""
    from edgedelta.export.calibration import add_gram_upper, symmetric_from_upper

    x1, x2 = torch.randn(50, 10), torch.randn(30, 10)
    h = torch.zeros(10, 10)
    add_gram_upper(h, x1, block=3)
    add_gram_upper(h, x2, block=3)
    assert not torch.allclose(h, h.T)  # below the diagonal blocks nothing was added
    full = x1.T @ x1 + x2.T @ x2
    torch.testing.assert_close(symmetric_from_upper(h), full, rtol=1e-5, atol=1e-4)


def test_bf16_gram_sums_bfloat16_products_in_float32():
    """add_gram_upper(bf16=True): the same upper block triangle, in float32, within 1% of the
    float32 product; over many accumulations the float32 sum does not lose small products
    (a bfloat16 accumulator would stop growing once a product falls below its 8-bit step)."""
    from edgedelta.export.calibration import add_gram_upper, symmetric_from_upper

    torch.manual_seed(0)
    xs = [torch.randn(64, 10) for _ in range(300)]
    h32, h16 = torch.zeros(10, 10), torch.zeros(10, 10)
    for x in xs:
        add_gram_upper(h32, x, block=3)
        add_gram_upper(h16, x, block=3, bf16=True)
    assert h16.dtype == torch.float32
    full32, full16 = symmetric_from_upper(h32), symmetric_from_upper(h16)
    rel = float((full16 - full32).norm() / full32.norm())
    assert 0 < rel < 0.01, rel
    bf16_sum = sum((x.bfloat16().T @ x.bfloat16()) for x in xs)  # what a bfloat16 accumulator would hold
    assert float((bf16_sum.float() - full32).norm() / full32.norm()) > 10 * rel


def test_bf16_forward_gives_hessians_close_to_float32(setup):
    """The calibration forward under bfloat16 autocast (with bfloat16 Gram products): every
    Hessian within 2% (Frobenius) of the float32 forward's, and held in float32."""
    model, ids, _ = setup
    exact = CalibrationStats(model, ids, batch_size=2, bf16_forward=False)
    fast = CalibrationStats(model, ids, batch_size=2, bf16_forward=True)
    assert fast.summary()["forward_dtype"] == "bfloat16" and exact.summary()["forward_dtype"] == "float32"
    layers = adapter_for(model.config).decoder_layers(model)
    for li in range(4):
        for path in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"):
            a = layers[li].get_submodule(path).delta_A
            h32, h16 = exact.hessian(a), fast.hessian(a)
            assert h16.dtype == np.float32
            assert np.linalg.norm(h16 - h32) / np.linalg.norm(h32) < 0.02, (li, path)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast left the weights as they were
