"""The run folder `<out_dir>.run/` beside a distillation's output: where its checkpoints live
while it trains, what --resume continues, and what a new run refuses to overwrite. Everything
here is checked before any model loads."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, EdgeDeltaError
from ..fsutil import check_output_path
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .config import DistillConfig

RUN_SUFFIX = ".run"


def run_dir_for(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + RUN_SUFFIX)


@dataclass
class Checkpoint:
    """A checkpoint read back for --resume."""
    path: Path
    state: dict  # step, tokens, seconds, config, data_fingerprint, reconstruction, ...
    params: dict[str, torch.Tensor]  # trained tensors by name
    optimizer: dict[str, torch.Tensor]  # AdamW moments by name
    log: list[dict]  # train_log rows so far


def open_run(out: Path | None, run_dir, cfg: DistillConfig, resume: bool, force: bool) -> tuple[Path | None, Checkpoint | None]:
    """(run folder, the checkpoint to resume or None). Refuses an output that cannot be
    written, --resume without a checkpoint or with a different config, and a new run over an
    earlier run's checkpoints (unless force, which removes them)."""
    if out is not None:
        check_output_path(out, force)
    run = Path(run_dir) if run_dir is not None else (run_dir_for(out) if out is not None else None)
    if run is None:
        return None, None
    if not resume:
        if run.exists():
            if latest_checkpoint(run) is not None and not force:
                raise ConfigError(f"run folder '{run}' holds a checkpoint of an earlier run: pass --resume to continue it "
                                  "(or --force to start over)")
            shutil.rmtree(run)  # no checkpoint in it (a run that failed before its first one) or --force
        return run, None
    path = latest_checkpoint(run)
    if path is None:
        raise CheckpointError(f"nothing to resume: no checkpoint in '{run}'")
    ck = Checkpoint(path, *load_checkpoint(path))
    try:
        old = DistillConfig.from_dict(ck.state["config"])
    except (KeyError, EdgeDeltaError) as e:
        raise CheckpointError(f"checkpoint '{path}' has no valid config: {e}") from None
    diffs = old.differences(cfg)
    if diffs:
        raise ConfigError(f"--resume with a config that differs from the checkpoint's: {'; '.join(diffs)}")
    return run, ck
