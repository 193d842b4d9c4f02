"""Inputs follow the model's device. A GPU run (bench/results/gpu_recovery_12.md) found
plan.log_probs feeding CPU token ids to a CUDA model; the meta device stands in for the GPU
here, so the check needs no accelerator."""

from types import SimpleNamespace

import torch
from torch import nn

from edgedelta.delta.plan import log_probs


class _MetaLM(nn.Module):
    def __init__(self, vocab: int = 11):
        super().__init__()
        self.w = nn.Parameter(torch.empty(vocab, device="meta"))

    def forward(self, input_ids):
        assert input_ids.device == self.w.device, f"ids on {input_ids.device}, model on {self.w.device}"
        return SimpleNamespace(logits=self.w.expand(*input_ids.shape, -1))


def test_log_probs_moves_ids_to_the_model_device():
    out = log_probs(_MetaLM(), torch.zeros(2, 5, dtype=torch.long))
    assert out.device.type == "meta" and out.shape == (2, 5, 11)
