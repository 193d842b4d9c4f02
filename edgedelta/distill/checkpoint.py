"""Atomic training checkpoints in the run folder:

  run/checkpoint-000050/
    params.safetensors     the student tensors that training changes (by stable name)
    optimizer.safetensors  AdamW moments and step counters, keyed by parameter name
    state.json             step, tokens, DistillConfig, data fingerprint, stage results
    log.jsonl              the training log up to this step (the run log is rewound to it)
    manifest.json          sha256 of each file: a truncated or edited checkpoint is refused
  run/latest.json          {"checkpoint": "checkpoint-000050"}, replaced atomically

Tensors only through safetensors; nothing is unpickled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import EdgeDeltaError, IntegrityError
from ..fsutil import atomic_dir, write_json_atomic
from ..manifest import read_manifest, verify_manifest, write_manifest

CKPT_FORMAT = "edgedelta-distill-checkpoint"
LATEST = "latest.json"
ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


class CheckpointError(IntegrityError):
    """A checkpoint is missing, corrupt, or does not belong to this run."""


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors {'<name>.<key>': tensor}; names follow the param order."""
    params = [p for grp in optimizer.param_groups for p in grp["params"]]
    out = {}
    for name, p in zip(names, params):
        for k, v in optimizer.state.get(p, {}).items():
            if k in ADAM_KEYS:
                out[f"{name}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(float(v))).detach().cpu().contiguous()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    params = [p for grp in optimizer.param_groups for p in grp["params"]]
    state = {}
    for i, (name, p) in enumerate(zip(names, params)):
        entry = {k: tensors[f"{name}.{k}"] for k in ADAM_KEYS if f"{name}.{k}" in tensors}
        if entry:
            if set(entry) != set(ADAM_KEYS):
                raise CheckpointError(f"optimizer state of '{name}' is incomplete: has {sorted(entry)}")
            entry["exp_avg"] = entry["exp_avg"].to(p.device, p.dtype)
            entry["exp_avg_sq"] = entry["exp_avg_sq"].to(p.device, p.dtype)
            state[i] = entry
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def save_checkpoint(run_dir: Path, step: int, params: dict[str, torch.Tensor], opt_tensors: dict[str, torch.Tensor],
                    state: dict[str, Any], log_lines: list[dict], keep: int = 2) -> Path:
    """Write checkpoint-<step> atomically, point latest.json at it, prune old ones."""
    run_dir = Path(run_dir)
    name = f"checkpoint-{step:06d}"
    with atomic_dir(run_dir / name, force=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, tmp / "params.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        (tmp / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log_lines))
        write_manifest(tmp, CKPT_FORMAT, {"step": step})
    write_json_atomic(run_dir / LATEST, {"checkpoint": name})
    old = sorted(p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return run_dir / name


def latest_checkpoint(run_dir: Path) -> Path | None:
    run_dir = Path(run_dir)
    latest = run_dir / LATEST
    if not latest.is_file():
        return None
    try:
        name = json.loads(latest.read_text())["checkpoint"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"'{latest}' is corrupt ({e}); remove the run folder '{run_dir}' to start over") from None
    if not isinstance(name, str) or (run_dir / name).resolve().parent != run_dir.resolve():
        raise CheckpointError(f"'{latest}' names {name!r}, not a checkpoint folder inside '{run_dir}'; remove the run folder to start over")
    return run_dir / name


def load_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor], list[dict]]:
    """(state, params, optimizer tensors, log lines); verified against its manifest first."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
        if manifest.get("format") != CKPT_FORMAT:
            raise CheckpointError(f"'{path}' is a '{manifest.get('format')}', not a distillation checkpoint")
        verify_manifest(path, manifest)
        state = json.loads((path / "state.json").read_text())
        params = load_file(path / "params.safetensors")
        opt = load_file(path / "optimizer.safetensors")
        log = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines() if line.strip()]
    except CheckpointError:
        raise
    except EdgeDeltaError as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt: {e}") from None
    except (OSError, SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt: {type(e).__name__}: {e}") from None
    return state, params, opt, log
