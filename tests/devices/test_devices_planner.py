"""Planner arithmetic checked by hand on a small case, verdicts, context validation, and a
plan of a real (tiny) artifact."""

import pytest

from edgedelta.devices import Calibration, ModelFacts, calibrate, calibrate_runs, device_from_dict, plan, plan_facts
from edgedelta.devices.planner import DEFAULT_OVERHEAD_BYTES, calibrate_joint, calibration_path, facts_of, load_calibration
from edgedelta.errors import ConfigError
from edgedelta.runtime.artifact import Artifact

MIB = 1 << 20
# 2 layers, 1 KV head of dim 4, fp32; vocab 10, hidden 8, MLP 16, 2 heads
M = ModelFacts(name="toy", weight_bytes=1000, weight_bytes_read_per_token=1500, num_layers=2, kv_heads=1, head_dim=4,
               kv_itemsize=4, vocab_size=10, hidden_size=8, intermediate_size=16, num_heads=2, max_positions=64)
DEV = device_from_dict(dict(name="toy-dev", display_name="toy", kind="cpu", memory_gib=1, os_reserved_gib=0.5,
                            bandwidth_gbps=1.0, bandwidth_source="by hand", cpu_cores=1, providers=["cpu"], dtypes=["fp32"]), "toy")


def test_arithmetic_by_hand():
    p = plan_facts(M, DEV, context=3, calibration=Calibration(overhead_bytes=100))
    kv_one = 2 * 2 * 1 * 1 * 3 * 4 * 4  # K and V x layers x batch x kv_heads x tokens x head_dim x 4 bytes = 192
    assert p.kv_bytes == 2 * kv_one == 384  # past + present buffers
    logits = 3 * 10 * 4  # [1, 3, 10] fp32 = 120
    attn = 2 * 2 * 3 * 3 * 4  # scores (masked in place), probs [1, 2, 3, 3] fp32 = 144
    hidden = 3 * (4 * 8 + 3 * 16) * 4  # = 960 (hidden_factor 1)
    assert p.activation_bytes == hidden + max(logits, attn) == 1104
    assert p.predicted_peak_bytes == 1000 + 384 + 1104 + 100 == 2588
    assert p.available_bytes == 512 * MIB and p.margin_bytes == 512 * MIB - 2588 and p.verdict == "fits"
    # a long context: attention (S²) overtakes the logits
    long = plan_facts(ModelFacts(**{**M.__dict__, "max_positions": 4096}), DEV, 4000, calibration=Calibration(0))
    assert long.activation_bytes == 4000 * (4 * 8 + 3 * 16) * 4 + 2 * 2 * 4000 * 4000 * 4
    # GroupQueryAttention and logits_to_keep: no [B, H, S, S] term, and one position's logits
    fused = ModelFacts(**{**M.__dict__, "max_positions": 4096, "last_logits_only": True, "fused_attention": True})
    assert plan_facts(fused, DEV, 3, calibration=Calibration(0)).activation_bytes == hidden + 1 * 10 * 4
    assert plan_facts(fused, DEV, 4000, calibration=Calibration(0)).activation_bytes == 4000 * (4 * 8 + 3 * 16) * 4 + 40
    assert p.bytes_read_per_token == 1500 + kv_one == 1692
    assert p.decode_ceiling_tok_s == pytest.approx(1e9 / 1692)
    assert p.overhead_calibrated


def test_default_overhead_and_verdicts():
    p = plan_facts(M, DEV, context=8)
    assert p.overhead_bytes == DEFAULT_OVERHEAD_BYTES and not p.overhead_calibrated
    big = ModelFacts(**{**M.__dict__, "weight_bytes": 400 * MIB})
    p = plan_facts(big, DEV, 8)  # 512 MiB available, ~500 MiB predicted: margin under 10%
    assert p.verdict == "tight" and 0 < p.margin_bytes < 0.1 * p.predicted_peak_bytes
    huge = ModelFacts(**{**M.__dict__, "weight_bytes": 600 * MIB})
    p = plan_facts(huge, DEV, 8)
    assert p.verdict == "does not fit" and p.margin_bytes < 0 and not p.fits


def test_calibrate_roundtrip(tmp_path):
    cal = calibrate(M, measured_peak_rss=5000, context=3)
    assert cal.overhead_bytes == 5000 - (1000 + 384 + 1104)
    assert plan_facts(M, DEV, 3, calibration=cal).predicted_peak_bytes == 5000
    cal.to_json(tmp_path / "c.json")
    assert Calibration.from_json(tmp_path / "c.json") == cal


@pytest.mark.parametrize("ctx", [0, -5, 65, 1.5])
def test_bad_context(ctx):
    with pytest.raises(ConfigError, match="context length"):
        plan_facts(M, DEV, ctx)


def test_plan_tiny_edgedelta(tiny_edgedelta, tmp_path):
    art = tiny_edgedelta[1]
    p = plan(art, DEV, 100)
    assert p.weights_bytes > 0 and p.kv_bytes == 2 * (2 * 4 * 2 * 100 * 8 * 4)
    assert p.bytes_read_per_token > p.weights_bytes * 0.5
    with pytest.raises(ConfigError, match="maximum of 256"):
        plan(art, DEV, 1000)
    assert calibration_path(art).parent == art.parent and load_calibration(art) is None
    # nothing shared but the tied embedding, whose layout follows the CPU (export/prepack.py)
    facts = facts_of(Artifact.open(art))
    assert facts.cpu_arch == "x86_64"
    # the exported graph takes logits_to_keep; its head_dim of 8 keeps attention in plain ops
    assert facts.last_logits_only and not facts.fused_attention and facts.kv_buffers == 2


def test_calibrate_runs_recovers_overhead_and_hidden_factor():
    truth = Calibration(overhead_bytes=50 * MIB, hidden_factor=5.5)
    runs = [{"context": c, "prompt_tokens": c - 2,
             "peak_rss_bytes": plan_facts(M, DEV, c, calibration=truth, prefill=c - 2).predicted_peak_bytes}
            for c in (10, 20, 40)]
    cal = calibrate_runs(M, runs)
    assert cal.hidden_factor == pytest.approx(5.5, rel=1e-3) and abs(cal.overhead_bytes - 50 * MIB) <= 2
    assert cal.contexts == (10, 20, 40)
    one = calibrate_runs(M, runs[:1])
    assert one.hidden_factor == 1.0 and plan_facts(M, DEV, 10, calibration=one, prefill=8).predicted_peak_bytes == runs[0]["peak_rss_bytes"]


def test_joint_calibration_over_two_models():
    a = M
    b = ModelFacts(**{**a.__dict__, "weight_bytes": 700, "name": "toy-small"})
    truth = Calibration(overhead_bytes=30 * MIB, hidden_factor=3.0)
    pairs = [(m, {"context": c, "prompt_tokens": c - 4,
                  "peak_rss_bytes": plan_facts(m, DEV, c, calibration=truth, prefill=c - 4).predicted_peak_bytes})
             for m in (a, b) for c in (16, 48)]
    cal = calibrate_joint(pairs)
    assert cal.hidden_factor == pytest.approx(3.0, rel=1e-3) and abs(cal.overhead_bytes - 30 * MIB) <= 2


def test_prefill_chunk_bounds_activations():
    big = ModelFacts(**{**M.__dict__, "max_positions": 4096})
    whole = plan_facts(big, DEV, 4000, calibration=Calibration(0))
    chunked = plan_facts(big, DEV, 4000, calibration=Calibration(0), prefill_chunk=100)
    # hidden of 100 tokens + max(logits [1, 100, 10], 2 x attention [1, 2, 100, 4000])
    assert chunked.activation_bytes == 100 * (4 * 8 + 3 * 16) * 4 + max(100 * 10 * 4, 2 * 2 * 100 * 4000 * 4)
    assert chunked.activation_bytes < whole.activation_bytes and chunked.kv_bytes == whole.kv_bytes
