"""`distill(student, DistillConfig, out_dir)`: recover a compressed model by distilling from
the original model it was made from.

Folders: the result goes to `out_dir` (a compressed-model directory, written atomically,
with train_log.jsonl, loss_curve.png and the DistillConfig in its manifest). While training,
checkpoints live in the sibling run folder `<out_dir>.run/` (run_folder.py), which --resume
continues and which is removed once the output is complete. Every bad input is refused
before anything is written. The steps are in steps.py."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import DistillConfig
from .run_folder import open_run
from .steps import DistillResult, finish, prepare, start, train


def distill(student, config: DistillConfig, out_dir=None, *, teacher: nn.Module | None = None, tokenizer=None,
            train_rows: torch.Tensor | None = None, resume: bool = False, force: bool = False, progress: bool = True,
            stop_after: int | None = None, run_dir=None, device: str = "auto") -> DistillResult:
    """Recover `student` (a compressed dir, LoadedModel or compressed module) by per-group
    reconstruction (if config.recon_tokens) and then logit distillation with progressive
    module replacement. Writes `out_dir` (None: train in place, write nothing but the run
    folder, which then must be given). `teacher`: the original model (default: the source in
    the student's manifest). `train_rows` (n, seq_len) token ids replace config.data (tests).
    The student module is trained in place."""
    out = Path(out_dir) if out_dir is not None else None
    run, checkpoint = open_run(out, run_dir, config, resume, force)  # before any model loads
    job = prepare(student, config, run, checkpoint, teacher, tokenizer, train_rows, device)
    state = start(job, checkpoint, progress)
    state = train(job, state, progress, stop_after)
    return finish(job, state, out, force)
