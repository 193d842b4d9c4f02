"""Loss-spike guard: a run whose loss blows up is rolled back to a snapshot taken before the
blow-up and continues at half the learning rate.

Why: healing pure DeltaLLM on Qwen2.5-Coder-0.5B at lr 1e-3, batch 1 (the recipe measured best
on SmolLM2-135M) held a KL of 0.74-0.86 over steps 5-8, then jumped to 2-8 nats from step 12
with gradient norms up to 725 and never came back
(bench/results/quality_qwen2.5-coder-0.5b/heal_log_deltallm_recipe-drop-share_stopped.jsonl).
A run like that ends as a model worse than its own start, after the whole token budget.

The test: the mean loss of the last WINDOW steps against the lowest such mean before it, over
the steps where every compressed layer is active (the plain schedule from step 0, the others
after their ramp; during a ramp the loss level moves with the sampled mask, so those steps are
not judged). Over the 25 healthy SmolLM2-135M training logs kept in bench/results (recovery*,
gpu_recovery*: batch 1 to 8, CPU and GPU, plain and linear schedules, 24 to 781 such steps) that
ratio never exceeded 1.41, nor did it reach 2 on the 0.5B drop-share build trained at lr 3e-4,
batch 4 (heal_log_deltallm-drop_recipe-deltallm_steps1-48.jsonl); the 0.5B run above passed SPIKE_RATIO at step 16.
tests/distill/test_spike_guard.py replays all of them. The same recipe on the 0.5B drop-share
build spiked the same way (KL 0.78 over steps 1-8, 1.2-2.4 over steps 9-16); the guard rolled it
back to step 8 at step 16 and it went on without another spike at lr 5e-4
(bench/results/quality_qwen2.5-coder-0.5b/distill_log_deltallm-drop_recipe-drop-share_guarded_stopped.jsonl).

Snapshots (trained tensors and optimizer state) are taken every WINDOW steps and the two latest
are kept, so the one restored was taken before the window that spiked began. With a run folder
they are safetensors files there (a 1.5B distillation peaks at 21 GiB of this machine's 24 before
any snapshot, bench/results/stages_qwen2.5-coder-1.5b.json), else CPU tensors.
Data and the step count go on: the rows a rolled-back stretch used are not replayed. A resumed
run rebuilds its window and reference from the checkpoint's log (`prime`), so it judges as the
uninterrupted run would; its oldest snapshot is the checkpoint itself."""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import EdgeDeltaError
from .checkpoint import load_optimizer_tensors, optimizer_tensors

WINDOW = 8  # steps per mean; also the snapshot interval
SPIKE_RATIO = 2.0  # window mean / lowest earlier window mean that counts as divergence
MAX_ROLLBACKS = 3  # then the run stops: lr / 8 still diverged
SNAPSHOT_GLOB = "spike-snapshot-*.safetensors"


@dataclass
class _Snapshot:
    step: int
    tensors: dict[str, torch.Tensor] | None  # in memory: 'p<i>' parameters and '<p<i>>.<key>' AdamW state
    path: Path | None = None  # or this file of the same tensors


class SpikeGuard:
    """Call `after_step(step, loss, p)` after each optimizer step; read `lr_scale` before the
    next. It returns a dict describing a rollback when it made one, else None, and raises
    EdgeDeltaError after MAX_ROLLBACKS."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, step: int = 0,
                 lr_scale: float = 1.0, window: int = WINDOW, ratio: float = SPIKE_RATIO, max_rollbacks: int = MAX_ROLLBACKS,
                 spill_dir: Path | None = None):
        self.params, self.optimizer, self.spill_dir = params, optimizer, spill_dir
        self._names = [f"p{i}" for i in range(len(params))]
        if spill_dir is not None:  # an interrupted run's snapshots are not this run's
            for f in Path(spill_dir).glob(SNAPSHOT_GLOB):
                f.unlink()
        self.window, self.ratio, self.max_rollbacks = window, ratio, max_rollbacks
        self.lr_scale = lr_scale
        self.rollbacks = round(-math.log2(lr_scale)) if 0 < lr_scale < 1 else 0  # a resumed run's earlier ones count
        self._losses: deque[float] = deque(maxlen=window)
        self._best: float | None = None
        self._snapshots: deque[_Snapshot] = deque()
        self._keep(step)

    def _keep(self, step: int) -> None:
        """Snapshot the state after `step`; the oldest of three is dropped."""
        tensors = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in zip(self._names, self.params)}
        tensors.update(optimizer_tensors(self.optimizer, self._names))
        snap = _Snapshot(step, tensors)
        if self.spill_dir is not None:
            snap.path = Path(self.spill_dir) / SNAPSHOT_GLOB.replace("*", f"{step:06d}")
            tmp = snap.path.with_suffix(".tmp")
            save_file(tensors, tmp)
            os.replace(tmp, snap.path)
            snap.tensors = None
        self._snapshots.append(snap)
        while len(self._snapshots) > 2:
            self._drop(self._snapshots.popleft())

    @staticmethod
    def _drop(snap: _Snapshot) -> None:
        if snap.path is not None:
            snap.path.unlink(missing_ok=True)

    @torch.no_grad()
    def _restore(self, snap: _Snapshot) -> None:
        tensors = snap.tensors if snap.tensors is not None else load_file(snap.path)
        for n, p in zip(self._names, self.params):
            p.copy_(tensors[n].to(p.device, p.dtype))
        load_optimizer_tensors(self.optimizer, self._names, tensors)

    def prime(self, log_lines: list[dict]) -> None:
        """The window and reference a run had after these log lines (a resumed run's history;
        exact when every step was logged)."""
        for line in log_lines:
            self._judge(line["loss"], line.get("p", 1.0))
            if "rollback" in line:
                self._losses.clear()

    def _judge(self, loss: float, p: float) -> float | None:
        """Take one step's loss; the window's mean when it spiked, else None (the reference
        then follows the window)."""
        if p < 1.0:  # a ramp: the loss level follows the sampled mask
            self._best = None
            self._losses.clear()
            return None
        self._losses.append(float(loss))
        if len(self._losses) < self.window:
            return None
        mean = sum(self._losses) / self.window
        if self._best is not None and not mean <= self.ratio * self._best:  # also catches a NaN mean
            return mean
        self._best = mean if self._best is None else min(self._best, mean)
        return None

    def after_step(self, step: int, loss: float, p: float) -> dict | None:
        """`step`: optimizer steps done so far (1-based); `loss`: that step's loss; `p`: its mean
        replacement probability (only steps at p = 1 are judged)."""
        spiked = self._judge(loss, p)
        if spiked is not None:
            return self._roll_back(step, spiked)
        if step % self.window == 0:
            self._keep(step)
        return None

    def _roll_back(self, step: int, mean: float) -> dict:
        if self.rollbacks >= self.max_rollbacks:
            raise EdgeDeltaError(f"training diverged at step {step}: mean loss {mean:.4g} over the last {self.window} steps is "
                                 f"more than {self.ratio:g}x the lowest earlier mean ({self._best:.4g}), again after "
                                 f"{self.rollbacks} rollbacks at half the learning rate each (now x{self.lr_scale:g}); "
                                 "lower --lr further or raise --batch-size; nothing was written")
        first = step - self.window + 1  # the first step of the window that spiked
        snap = next((s for s in reversed(self._snapshots) if s.step < first), self._snapshots[0])
        self._restore(snap)
        while self._snapshots[-1] is not snap:
            self._drop(self._snapshots.pop())
        self.rollbacks += 1
        self.lr_scale *= 0.5
        self._losses.clear()
        return {"rolled_back_to": snap.step, "spike_mean": round(mean, 6), "reference_mean": round(self._best, 6),
                "lr_scale": self.lr_scale}
