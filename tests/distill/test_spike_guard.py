"""The loss-spike guard (edgedelta/distill/spike_guard.py): replayed on every training log kept
in bench/results it leaves the healthy runs alone and rolls the diverged 0.5B run back; wired
into the distillation loop it restores the snapshot, halves the learning rate, logs the
rollback and checkpoints the scale."""

import json
from pathlib import Path

import pytest
import torch

from edgedelta.distill import trainer
from edgedelta.distill.api import distill
from edgedelta.distill.config import DistillConfig
from edgedelta.distill.run_folder import run_dir_for
from edgedelta.distill.spike_guard import MAX_ROLLBACKS, SPIKE_RATIO, WINDOW, SpikeGuard
from edgedelta.distill.trainer import TrainingInterrupted, lr_at
from edgedelta.errors import EdgeDeltaError

from .common import make_pair, rows

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
DIVERGED = RESULTS / "quality_qwen2.5-coder-0.5b" / "heal_log_deltallm_recipe-drop-share_stopped.jsonl"  # no guard
HEALTHY_05B = RESULTS / "quality_qwen2.5-coder-0.5b" / "heal_log_deltallm-drop_recipe-deltallm_steps1-48.jsonl"
GUARDED = RESULTS / "quality_qwen2.5-coder-0.5b" / "distill_log_deltallm-drop_recipe-drop-share_guarded_stopped.jsonl"


def _healthy_logs() -> dict[str, list[dict]]:
    logs = {"0.5B drop-share build, deltallm recipe": [json.loads(x) for x in HEALTHY_05B.read_text().splitlines() if x.strip()]}
    for f in sorted([*RESULTS.glob("recovery*.json"), *RESULTS.glob("recovery*/*.json"), *RESULTS.glob("gpu_recovery*.json")]):
        for arm, a in json.loads(f.read_text()).get("arms", {}).items():
            if a.get("log"):
                logs[f"{f.relative_to(RESULTS)}:{arm}"] = a["log"]
    return logs


def _replay(log: list[dict], spill_dir=None):
    """Feed a log to a guard over one parameter that holds the step count, as if each step
    had trained it; returns (guard, [(step, rollback, parameter after the step)])."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([w], lr=1e-3)
    guard, events = SpikeGuard([w], opt, spill_dir=spill_dir), []
    for e in log:
        with torch.no_grad():
            w.fill_(float(e["step"]))
        r = guard.after_step(e["step"], e["loss"], e.get("p", 1.0))
        if r is not None:
            events.append((e["step"], r, float(w.detach())))
    return guard, events


def test_no_healthy_training_log_is_rolled_back():
    logs = _healthy_logs()
    assert len(logs) >= 20  # the evidence the thresholds were chosen on
    judged = 0
    for name, log in logs.items():
        guard, events = _replay(log)
        assert events == [], name
        judged += sum(1 for e in log if e.get("p", 1.0) >= 1.0)
    assert judged > 5000


@pytest.mark.parametrize("path", [DIVERGED, GUARDED])
@pytest.mark.parametrize("on_disk", [False, True])
def test_the_diverged_runs_are_rolled_back_to_before_their_spike(path, on_disk, tmp_path):
    log = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    (tmp_path / "spike-snapshot-000099.safetensors").write_bytes(b"an interrupted run's")
    guard, events = _replay(log[:16], tmp_path if on_disk else None)
    names = sorted(p.name for p in tmp_path.iterdir())
    kept = [f"spike-snapshot-{n:06d}.safetensors" for n in ((0, WINDOW) if on_disk else (99,))]
    assert names == kept  # on disk: the restored snapshot and the one before it; the stale file is gone
    (step, r, restored), = events
    assert step == 2 * WINDOW and r["rolled_back_to"] == WINDOW and restored == WINDOW  # the state after step 8
    assert r["spike_mean"] > SPIKE_RATIO * r["reference_mean"] and guard.lr_scale == 0.5
    if "rollback" in log[15]:  # the guarded run recorded the same decision (from unrounded losses)
        assert log[15]["rollback"] == pytest.approx(r, abs=1e-5)


def test_it_stops_with_a_clear_error_after_the_last_rollback():
    w = torch.nn.Parameter(torch.zeros(1))
    guard = SpikeGuard([w], torch.optim.AdamW([w]))
    step, loss = 0, 1.0
    with pytest.raises(EdgeDeltaError, match=r"training diverged at step \d+.*--lr"):
        for _ in range(100 * WINDOW):
            step, loss = step + 1, loss * 1.5
            guard.after_step(step, loss, 1.0)
    assert guard.rollbacks == MAX_ROLLBACKS and guard.lr_scale == 0.5 ** MAX_ROLLBACKS
    assert SpikeGuard([w], torch.optim.AdamW([w]), lr_scale=0.25).rollbacks == 2  # a resumed run counts its earlier ones


def test_a_ramp_is_not_judged():
    w = torch.nn.Parameter(torch.zeros(1))
    guard = SpikeGuard([w], torch.optim.AdamW([w]))
    for step in range(1, 10 * WINDOW):  # the loss climbs as more layers are replaced
        assert guard.after_step(step, 0.1 * step, min(1.0, step / (9 * WINDOW))) is None


def _reported_losses(monkeypatch, first: int, last: int):
    """Report a loss of 1.0 for every optimizer step and 3.0 for steps first..last (1-based;
    one micro-batch per step), leaving the gradients alone: the guard's input is then known."""
    real, calls = trainer._micro_loss, {"n": 0}

    def fake(*a, **kw):
        loss, parts = real(*a, **kw)
        calls["n"] += 1
        return loss, {**parts, "loss": 3.0 if first <= calls["n"] <= last else 1.0}

    monkeypatch.setattr(trainer, "_micro_loss", fake)


def test_a_spike_in_training_rolls_back_halves_the_lr_and_is_checkpointed(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    cfg = DistillConfig(tokens=16 * 4 * 24, seq_len=16, batch_size=4, lr=3e-3, warmup_frac=0.0, schedule="plain",
                        checkpoint_every=4)
    teacher, student = make_pair()
    _reported_losses(monkeypatch, WINDOW + 1, 2 * WINDOW)  # the rolling mean passes 2.0 at the 5th such step
    with pytest.raises(TrainingInterrupted):
        distill(student, cfg, tmp_path / "out", teacher=teacher, train_rows=rows(), progress=False, stop_after=2 * WINDOW + 2)
    assert "loss spiked at step 13" in capsys.readouterr().err  # said on stderr, also without a progress bar
    run = run_dir_for(tmp_path / "out")
    ck = json.loads((run / json.loads((run / "latest.json").read_text())["checkpoint"] / "state.json").read_text())
    assert ck["step"] == 2 * WINDOW + 2 and ck["lr_scale"] == 0.5
    monkeypatch.undo()
    res = distill(make_pair()[1], cfg, tmp_path / "out", teacher=teacher, train_rows=rows(), progress=False, resume=True)
    (rb,) = [r for r in res.log if "rollback" in r]
    assert res.to_dict()["rollbacks"] == [{"step": rb["step"], **rb["rollback"]}]
    assert rb["step"] == WINDOW + 5 and rb["rollback"]["rolled_back_to"] == 0  # the snapshot before step 6, the window's first
    for r in res.log:  # the learning rate after the rollback is half the schedule's, also after the resume
        want = lr_at(r["step"] - 1, cfg) * (0.5 if r["step"] > rb["step"] else 1.0)
        assert r["lr"] == pytest.approx(want), r["step"]


def test_a_resumed_run_judges_with_the_history_of_its_checkpoint(tmp_path, monkeypatch):
    """The spike starts right after the resume: only the reference from before it (rebuilt from
    the checkpoint's log) shows the resumed steps as a spike."""
    torch.set_num_threads(1)
    cfg = DistillConfig(tokens=16 * 4 * 28, seq_len=16, batch_size=4, lr=3e-3, warmup_frac=0.0, schedule="plain",
                        checkpoint_every=4)
    teacher, student = make_pair()
    _reported_losses(monkeypatch, 2 * WINDOW + 3, 3 * WINDOW + 2)  # steps 19..26 report 3.0
    with pytest.raises(TrainingInterrupted):
        distill(student, cfg, tmp_path / "out", teacher=teacher, train_rows=rows(), progress=False, stop_after=2 * WINDOW + 2)
    res = distill(make_pair()[1], cfg, tmp_path / "out", teacher=teacher, train_rows=rows(), progress=False, resume=True)
    assert [r["step"] for r in res.log if "rollback" in r] == [2 * WINDOW + 2 + 5]
