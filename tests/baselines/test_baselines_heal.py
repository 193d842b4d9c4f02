"""Equal-token healing: a merged LoRA lowers the KL to the teacher and adds no parameters."""

import torch
import torch.nn.functional as F

from edgedelta.baselines import shortgpt
from edgedelta.baselines.heal import heal, rank_for_budget
from edgedelta.delta.accounting import count_parameters

from ..bpe_tiny import make_model


def _kl(student, teacher, x):
    with torch.no_grad():
        s = F.log_softmax(student(x).logits, -1)
        t = F.log_softmax(teacher(x).logits, -1)
    return float(F.kl_div(s, t, log_target=True, reduction="batchmean"))


def test_heal_lowers_kl_and_keeps_params():
    teacher = make_model(300, layers=6)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 300, (8, 32), generator=g)
    student = shortgpt.build(teacher, 0.8, rows[:2]).model
    n = count_parameters(student)["total"]
    before = _kl(student, teacher, rows)
    info = heal(student, teacher, rows.repeat(6, 1), rank=4, lr=3e-3, progress=False)
    assert count_parameters(student)["total"] == n
    assert all(type(m).__name__ != "LoRALinear" for m in student.modules())
    assert _kl(student, teacher, rows) < before
    assert info["tokens"] == 48 * 32 and info["trainable_params"] > 0
    assert rank_for_budget(student, info["trainable_params"]) == 4


def test_heal_is_reproducible_whatever_the_global_rng():
    """The LoRA init comes from heal's seed: the same call heals to the same weights even when
    something else drew from torch's global generator in between (as a compare run does)."""
    import copy

    teacher = make_model(300, layers=4)
    rows = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    pruned = shortgpt.build(teacher, 0.8, rows[:2]).model
    healed = []
    for draws in (0, 5):
        torch.randn(draws)  # advance the global RNG differently before each call
        student = copy.deepcopy(pruned)
        heal(student, teacher, rows, rank=2, lr=3e-3, progress=False, seed=7)
        healed.append(student.state_dict())
    assert all(torch.equal(healed[0][k], healed[1][k]) for k in healed[0])
    other = copy.deepcopy(pruned)
    heal(other, teacher, rows, rank=2, lr=3e-3, progress=False, seed=8)
    assert any(not torch.equal(healed[0][k], v) for k, v in other.state_dict().items())  # the seed matters


def test_a_loss_spike_while_healing_is_rolled_back(monkeypatch):
    """One step whose KL is 1000x its own lifts the 8-step mean past the guard's 2x the
    lowest earlier mean: the heal rolls back (edgedelta/distill/spike_guard.py) and goes on."""
    import edgedelta.baselines.heal as heal_mod

    teacher = make_model(300, layers=6)
    rows = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    real, calls, seen = F.kl_div, {"n": 0}, []

    def spiking_kl(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw) * (1000.0 if calls["n"] == 9 else 1.0)
        seen.append(float(out.detach()))
        return out

    monkeypatch.setattr(heal_mod.F, "kl_div", spiking_kl)
    student = shortgpt.build(teacher, 0.8, rows[:2]).model
    info = heal(student, teacher, rows.repeat(6, 1), rank=4, lr=3e-3, progress=False)
    assert info["steps"] == 12 and info["rollbacks"] == 1, seen
