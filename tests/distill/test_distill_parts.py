"""Config validation, replacement schedules, the hybrid model and the losses (no training)."""

import pytest
import torch

from edgedelta.distill.config import DistillConfig
from edgedelta.distill.hybrid import HybridModel, LayerRecorder, replace
from edgedelta.distill.losses import hidden_mse, kl_logits, kl_topk
from edgedelta.distill.schedule import ReplacementSchedule
from edgedelta.delta.lora import merge_lora
from edgedelta.distill.trainable import add_dense_lora, select_trainable
from edgedelta.errors import ConfigError
from edgedelta.models.adapters import adapter_for

from .common import make_pair, rows


@pytest.mark.parametrize("bad", [dict(tokens=0), dict(tokens=-5), dict(schedule="cosine"), dict(trainable=["everything"]),
                                 dict(batch_size=4, grad_accum=3), dict(p0=1.5), dict(kl_weight=0.0),
                                 dict(trainable=["shared", "lora"]), dict(lr=float("nan"))])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        DistillConfig(**bad)


def test_config_roundtrip_and_differences():
    cfg = DistillConfig(tokens=1000, schedule="curriculum", trainable=["deltas", "norms"])
    again = DistillConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.differences(cfg) == []
    other = DistillConfig.from_dict({**cfg.to_dict(), "lr": 1e-3, "checkpoint_every": 7})
    assert cfg.differences(other) == ["lr: 0.0003 -> 0.001"]  # checkpoint_every may change on resume
    with pytest.raises(ConfigError, match="unknown distill config field"):
        DistillConfig.from_dict({"tokens": 5, "bogus": 1})


def test_linear_schedule_probabilities_and_sampling():
    s = ReplacementSchedule("linear", num_layers=4, total_steps=100, p0=0.5, ramp_frac=0.5, seed=3)
    assert torch.allclose(s.probabilities(0), torch.full((4,), 0.5))
    assert torch.allclose(s.probabilities(25), torch.full((4,), 0.75))
    assert torch.equal(s.probabilities(50), torch.ones(4)) and torch.equal(s.probabilities(99), torch.ones(4))
    assert torch.equal(s.sample(7), s.sample(7))  # pure function of (seed, step)
    assert s.sample(60).all()
    freq = torch.stack([s.sample(k) for k in range(10)]).float().mean()  # early steps: p ~ 0.5..0.6
    assert 0.3 < freq < 0.8
    assert torch.equal(ReplacementSchedule("plain", 3, 10).probabilities(0), torch.ones(3))
    assert torch.allclose(ReplacementSchedule("constant", 2, 10, p0=0.2).probabilities(4), torch.full((2,), 0.2))


def test_curriculum_ramps_layers_one_after_another():
    s = ReplacementSchedule("curriculum", num_layers=4, total_steps=80, p0=0.0, ramp_frac=1.0, order="deep-first")
    p = s.probabilities(30)  # t = 0.375 -> deepest layer done, next half-way, others at p0
    assert torch.allclose(p, torch.tensor([0.0, 0.0, 0.5, 1.0]))
    p = ReplacementSchedule("curriculum", 4, 80, p0=0.0, ramp_frac=1.0, order="shallow-first").probabilities(30)
    assert torch.allclose(p, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert all((s.probabilities(k)[1:] >= s.probabilities(k)[:-1]).all() for k in range(80))


def test_replace_swaps_and_returns_old():
    teacher, _ = make_pair()
    new = torch.nn.Identity()
    old = replace(teacher, "model.layers.2", new)
    assert teacher.model.layers[2] is new and old is not new
    replace(teacher, "model.norm", torch.nn.Identity())
    assert isinstance(teacher.model.norm, torch.nn.Identity)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gemma3_text"])
@torch.no_grad()
def test_hybrid_all_original_equals_teacher_and_prefix_reuse_is_exact(arch):
    """Qwen2 and Gemma read each layer's attention_type in the decoder loop: the stand-in for a
    reused prefix layer carries it."""
    teacher, student = make_pair(layers=4, groups=((2, 3),), arch=arch)
    x = rows(2, 16)
    hy = HybridModel(student, teacher, [2, 3])
    hy.set_active(torch.tensor([False, False]))
    assert torch.equal(student(input_ids=x).logits, teacher(input_ids=x).logits)
    hy.set_active(torch.tensor([True, False]))
    full = student(input_ids=x).logits
    layers = adapter_for(teacher.config).decoder_layers(teacher)
    with LayerRecorder({1: layers[1]}) as rec:
        teacher(input_ids=x)
    with hy.teacher_prefix(rec.outputs) as cut:
        assert cut == 2 and type(student.model.layers[0]).__name__ == "_Constant"
        reused = student(input_ids=x).logits
    assert torch.equal(reused, full)
    assert student.model.layers[0] is not layers[0] and type(student.model.layers[0]).__name__ != "_Constant"
    with hy.all_compressed() as m:
        assert all(m.model.layers[i] is hy.compressed[i] for i in (2, 3))
    assert student.model.layers[3] is layers[3]  # mask restored


def test_losses():
    t = torch.randn(2, 5, 11)
    assert kl_logits(t, t).abs() < 1e-6 and kl_logits(t, torch.randn(2, 5, 11)) > 0
    top = t.topk(11, dim=-1)  # k = V: the top-k KL is the full KL
    s = torch.randn(2, 5, 11)
    assert torch.allclose(kl_topk(top.values, top.indices, s), kl_logits(t, s), atol=1e-5)
    h = torch.randn(2, 5, 8)
    assert hidden_mse(h, h) == 0 and torch.allclose(hidden_mse(torch.zeros_like(h), h), torch.tensor(1.0))


def test_lora_on_shared_is_shared_and_merges():
    teacher, student = make_pair(groups=((0, 1), (2, 3)))
    spec = student.edgedelta_spec
    tps = select_trainable(student, spec, ["lora", "deltas"], lora_rank=2)
    loras = [tp for tp in tps if tp.kind == "lora"]
    assert len(loras) == 2 * 2 * 7  # A and B per group and projection
    with torch.no_grad():
        for tp in loras:
            tp.param.add_(0.01)
    x = rows(2, 16)
    before = student(input_ids=x).logits
    merge_lora(student)
    up0, up1 = student.model.layers[0].mlp.up_proj, student.model.layers[1].mlp.up_proj
    assert up0.weight is up1.weight  # still one shared Parameter
    assert torch.allclose(student(input_ids=x).logits, before, atol=1e-5)


def test_dense_lora_on_chosen_layers_adds_to_a_selection_and_merges():
    # the delta student keeps its deltas training and gets a LoRA on unshared layer 3 only
    teacher, student = make_pair(layers=4, groups=((1, 2),))
    deltas = select_trainable(student, student.edgedelta_spec, ["deltas"])
    loras = add_dense_lora(student, 2, norms=False, layers=[0, 3], freeze=False)
    assert all(tp.param.requires_grad for tp in deltas)  # freeze=False kept the selection
    assert {tp.group for tp in loras} == {0, 3} and len(loras) == 2 * 2 * 7
    assert not any(p.requires_grad for n, p in student.model.layers[3].named_parameters() if "norm" in n)
    with torch.no_grad():
        for tp in loras:
            tp.param.add_(0.01)
    x = rows(2, 16)
    before = student(input_ids=x).logits
    merge_lora(student)
    assert isinstance(student.model.layers[3].mlp.up_proj.weight, torch.nn.Parameter)
    assert torch.allclose(student(input_ids=x).logits, before, atol=1e-5)
    assert not torch.allclose(before, teacher(input_ids=x).logits, atol=1e-3)
