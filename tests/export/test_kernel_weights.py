"""The parity reference: the model's quantized parameters hold the kernel's weights inside
kernel_weights() and get their own tensors back on exit, also after an error."""

import numpy as np
import pytest
import torch

from edgedelta.export.validate import kernel_weights


def test_swaps_quantized_parameters_and_restores_them_even_on_error():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8, bias=False))
    model[1].weight = model[0].weight  # tied: one Parameter under two names
    extra = torch.nn.Linear(4, 4)
    model.append(extra)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    deq = {id(model[0].weight): lambda: np.full((8, 4), 0.5, np.float32), id(extra.weight): lambda: np.zeros((4, 4), np.float32)}
    with kernel_weights(model, deq) as ref:
        assert ref is model
        assert torch.equal(model[1].weight, torch.full((8, 4), 0.5)) and torch.equal(extra.weight, torch.zeros(4, 4))
        assert torch.equal(extra.bias, before["2.bias"])  # not quantized: untouched
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(RuntimeError), kernel_weights(model, deq):
        raise RuntimeError("a parity check failed")
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_fused_parts_share_one_dequantized_array_freed_after_use():
    """The parts of a fused weight are views of one dequantized array, computed once while
    any part is in use and freed when none is (nothing holds a float copy between uses)."""
    import gc

    from edgedelta.export.weights import _Once, _rows

    calls = []

    def dequantize():
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(4, 3)

    once = _Once(dequantize)
    q, k = _rows(once, 0, 1), _rows(once, 1, 4)
    assert len(calls) == 1 and q.base is k.base and q.tolist() == [[0, 1, 2]] and k.shape == (3, 3)
    del q, k
    gc.collect()
    assert once.ref() is None  # freed: only a weak reference was kept
    assert _rows(once, 0, 1).tolist() == [[0, 1, 2]] and len(calls) == 2
