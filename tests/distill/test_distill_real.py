"""The real default model (SmolLM2-135M): the hybrid's teacher-prefix reuse is exact and a
short distillation from a shared pair lowers the KL. Marked `real` (about a minute)."""

import copy

import pytest
import torch

from edgedelta.delta.structure import SharingSpec, apply_sharing
from edgedelta.distill.api import distill
from edgedelta.distill.config import DistillConfig
from edgedelta.data.text import training_texts
from edgedelta.distill.data import TrainData

pytestmark = pytest.mark.real

PROJ = ["q", "k", "v", "o", "gate", "up", "down"]


def test_real_model_distills_a_shared_pair():
    from edgedelta.loading import load_model

    lm = load_model("default")
    teacher = lm.model.eval()
    student = copy.deepcopy(teacher)
    spec = SharingSpec([[20, 21]], PROJ, {p: 8 for p in PROJ}, ["o", "down"])
    apply_sharing(student, spec)
    student.edgedelta_spec = spec
    with torch.no_grad():  # small random deltas: a saddle-free start
        for m in student.modules():
            if hasattr(m, "delta_A"):
                m.delta_A.normal_(0, 1e-3)
    data = TrainData.from_texts(lm.tokenizer, training_texts("sotu-train")[:3], 64)
    cfg = DistillConfig(tokens=64 * 4 * 6, seq_len=64, batch_size=4, lr=1e-3, warmup_frac=0.0, schedule="plain",
                        recon_tokens=256, recon_epochs=2, trainable=["deltas", "gates", "norms"])
    res = distill(student, cfg, None, teacher=teacher, train_rows=data.rows, progress=False)
    assert all(g["mse_after"] < g["mse_before"] for g in res.reconstruction)
    kl = [r["kl"] for r in res.log]
    assert kl[-1] < kl[0], kl
