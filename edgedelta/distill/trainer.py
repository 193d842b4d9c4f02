"""The end-to-end distillation loop. Everything that varies per step is a pure function of
the step number (data rows, replacement mask, learning rate), so a run resumed from a
checkpoint (parameters + AdamW state) continues exactly as the uninterrupted run would.

One optimizer step: sample the mask -> swap modules in the hybrid -> for each micro-batch:
teacher forward (no grad, recording the layer outputs the student needs) -> student forward
from the first active compressed layer on (teacher prefix reused) -> loss/accum backward ->
average gradients over processes -> clip -> AdamW -> the spike guard (spike_guard.py), which
rolls a diverging run back and halves its learning rate (the scale is checkpointed)."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import EdgeDeltaError
from ..models.adapters import adapter_for
from .config import DistillConfig
from .data import TrainData
from .distributed import DistContext, average_gradients
from .hybrid import HybridModel, LayerRecorder, hidden_of
from .logs import JsonlLog
from .losses import hidden_mse, kl_logits, kl_topk, lm_loss
from .schedule import ReplacementSchedule
from .spike_guard import SpikeGuard
from .teacher_cache import TopKCache, topk_of


class TrainingInterrupted(EdgeDeltaError):
    """Ctrl-C / SIGTERM (or a step limit): a checkpoint was saved; --resume continues."""

    exit_code = 130


def lr_at(step: int, cfg: DistillConfig) -> float:
    """Linear warm-up, then cosine from lr to lr * min_lr_ratio at the last step."""
    total = cfg.total_steps
    warm = int(round(cfg.warmup_frac * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


class StopRequest:
    """First Ctrl-C / SIGTERM asks the loop to stop after the current step (so the saved
    checkpoint is consistent); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class LoopState:
    step: int = 0  # optimizer steps completed
    tokens: int = 0  # training tokens consumed (global)
    seconds: float = 0.0  # training wall time so far (across resumptions)
    extra: dict = field(default_factory=dict)


def _micro_loss(hybrid: HybridModel, teacher: nn.Module, t_layers, x: torch.Tensor, cfg: DistillConfig,
                ctx: DistContext, cached_top=None) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Loss of one micro-batch x (b, T); None when no compressed layer is active (the hybrid
    then equals the teacher and has nothing to learn). `cached_top`: the teacher's cached
    top-k (values, ids) for these rows; with it (and no hidden loss) the teacher is not run."""
    active = hybrid.active_layers()
    if not active:
        return None, {"loss": 0.0, "kl": 0.0}
    amp = torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=ctx.use_autocast)
    skip_teacher = cached_top is not None and cfg.hidden_weight == 0
    t_outputs: dict = {}
    t_logits = None
    if not skip_teacher:
        # keyed by student layer: the prefix's last layer (the same index in both) and, for the
        # hidden loss, the teacher layer each active compressed layer was
        cut = hybrid.prefix_cut()
        want = {cut - 1: t_layers[cut - 1]} if cut > 0 else {}
        if cfg.hidden_weight > 0:
            if not hybrid.watch(active):
                raise ValueError("hidden_weight > 0 needs a hybrid with compressed layers to compare")
            want.update({i: t_layers[hybrid.teacher_index(i)] for i in active})
        with torch.no_grad(), amp, LayerRecorder(want) as trec:
            t_logits = teacher(input_ids=x, use_cache=False).logits  # (b, T, V)
        # the recorder is closed before the student runs: the hybrid's original layers ARE the
        # teacher's modules and would otherwise overwrite the teacher's records
        t_outputs = trec.outputs
    with amp, hybrid.teacher_prefix(t_outputs), LayerRecorder(hybrid.watch(active)) as srec:
        s_logits = hybrid.student(input_ids=x, use_cache=False).logits  # (b, T, V)
    parts: dict[str, torch.Tensor] = {}
    if cfg.kl_weight > 0:
        if cfg.teacher_topk > 0:
            values, ids = cached_top if cached_top is not None else topk_of(t_logits, cfg.teacher_topk)
            parts["kl"] = kl_topk(values.to(x.device), ids.to(x.device), s_logits, cfg.temperature)
        else:
            parts["kl"] = kl_logits(t_logits, s_logits, cfg.temperature)
    if cfg.hidden_weight > 0:
        parts["hidden"] = torch.stack([hidden_mse(hidden_of(srec.outputs[i]), hidden_of(t_outputs[i])) for i in active]).mean()
    if cfg.lm_weight > 0:
        parts["lm"] = lm_loss(s_logits, x)
    weights = {"kl": cfg.kl_weight, "hidden": cfg.hidden_weight, "lm": cfg.lm_weight}
    loss = sum(weights[k] * v for k, v in parts.items())
    return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}


def train_loop(hybrid: HybridModel, teacher: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
               data: TrainData, cfg: DistillConfig, ctx: DistContext, state: LoopState, log: JsonlLog,
               save: Callable[[LoopState], None], *, progress: bool = True, stop_after: int | None = None,
               topk_cache: TopKCache | None = None, snapshot_dir: Path | None = None) -> LoopState:
    """Run optimizer steps state.step .. total_steps-1. `save(state)` writes a checkpoint
    (called on the main process only). Raises TrainingInterrupted after saving when asked to
    stop (signal, or `stop_after` steps in this call). `snapshot_dir`: where the spike guard
    keeps its snapshots (None: in memory)."""
    schedule = ReplacementSchedule(cfg.schedule, len(hybrid.layers), cfg.total_steps, cfg.p0, cfg.ramp_frac,
                                   cfg.curriculum_order, cfg.seed)
    t_layers = adapter_for(teacher.config).decoder_layers(teacher)
    total = cfg.total_steps
    bar = tqdm(total=total * cfg.tokens_per_step, initial=state.tokens, unit="tok", unit_scale=True,
               desc="distill", disable=not (progress and ctx.is_main), dynamic_ncols=True)
    steps_here = 0
    guard = SpikeGuard(params, optimizer, step=state.step, lr_scale=state.extra.get("lr_scale", 1.0), spill_dir=snapshot_dir)
    guard.prime(log.lines)  # a resumed run's history (the checkpoint's log)
    stop = StopRequest()
    with stop:
        while state.step < total:
            t0 = time.time()
            step = state.step
            hybrid.set_active(schedule.sample(step))
            lr = lr_at(step, cfg) * guard.lr_scale
            for grp in optimizer.param_groups:
                grp["lr"] = lr
            sums = {"loss": 0.0, "kl": 0.0, "hidden": 0.0, "lm": 0.0}
            for idx in data.micro_indices(step, cfg.batch_size, cfg.grad_accum, ctx.rank, ctx.world):
                top = topk_cache.get(idx) if topk_cache is not None else None
                loss, parts = _micro_loss(hybrid, teacher, t_layers, data.rows[idx].to(ctx.device), cfg, ctx, top)
                if loss is not None and loss.requires_grad:
                    (loss / cfg.grad_accum).backward()
                for k in sums:
                    sums[k] += parts.get(k, 0.0) / cfg.grad_accum
            want_stop = stop.requested or (stop_after is not None and steps_here + 1 >= stop_after)
            # one all-reduce: gradients, then the loss terms and the stop request (summed)
            red = average_gradients(params, ctx, [sums[k] for k in sums] + [float(want_stop)])
            sums = {k: v / ctx.world for k, v in zip(sums, red[:4])}
            want_stop = red[4] > 0
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else float("inf")))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.time() - t0
            state.step += 1
            state.tokens += cfg.tokens_per_step
            state.seconds += dt
            steps_here += 1
            rollback = guard.after_step(state.step, sums["loss"], schedule.mean_p(step))
            if rollback is not None:
                state.extra["lr_scale"] = guard.lr_scale
                if ctx.is_main:  # on stderr with or without the progress bar
                    tqdm.write(f"edgedelta distill: loss spiked at step {state.step} (mean {rollback['spike_mean']:.4g} against "
                               f"{rollback['reference_mean']:.4g}); rolled back to step {rollback['rolled_back_to']}, "
                               f"learning rate x{guard.lr_scale:g}", file=sys.stderr)
            if ctx.is_main and (state.step % cfg.log_every == 0 or state.step == total or rollback is not None):
                log.append({"step": state.step, "tokens": state.tokens, **{k: round(v, 6) for k, v in sums.items()},
                            "lr": lr, "p": round(schedule.mean_p(step), 4), "active": int(hybrid.active.sum()),
                            "grad_norm": round(grad_norm, 4), "tok_s": round(cfg.tokens_per_step / max(dt, 1e-9), 1),
                            "elapsed_s": round(state.seconds, 1), **({"rollback": rollback} if rollback else {})})
            bar.update(cfg.tokens_per_step)
            bar.set_postfix(loss=f"{sums['loss']:.4f}", p=f"{schedule.mean_p(step):.2f}")
            last = state.step == total
            if not last and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and ctx.is_main:
                save(state)
            if want_stop and not last:
                if ctx.is_main:
                    save(state)
                bar.close()
                err = TrainingInterrupted(f"stopped after step {state.step}/{total}; checkpoint saved, continue with --resume")
                err.by_signal = stop.requested  # False: the caller's stop_after
                raise err
    bar.close()
    hybrid.set_active(torch.ones(len(hybrid.layers), dtype=torch.bool))
    return state
