"""edgedelta distill: recover a compressed model by distillation from the model it was made
from (per-group reconstruction, then logit KL with progressive module replacement).

Every DistillConfig field is a flag (--field-name, help text from the dataclass), so the
CLI and the Python API cannot drift apart; --config FILE supplies a JSON base."""

from __future__ import annotations

import argparse
import os
import dataclasses
import typing
from pathlib import Path

_SKIP = {"version", "data"}  # data is --data (also accepts a path); version is internal


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_parser(sub) -> argparse.ArgumentParser:
    from ..distill.config import DistillConfig

    p = sub.add_parser("distill", help="recover a compressed model by distillation from its original",
                       description="Distil a compressed model directory from the model it was made from (recorded in its manifest). "
                                   "Checkpoints go to OUT.run/; --resume continues an interrupted run exactly.")
    p.add_argument("model_dir", help="compressed model directory (from `edgedelta compress` or an earlier distill)")
    p.add_argument("--out", help="output directory (default: MODEL_DIR-distilled)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT.run/ (same config required)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (and discard an earlier run folder)")
    p.add_argument("--data", help="training text: mixed-train (default: speeches and Wikipedia passages), sotu-train, "
                                    "wiki-train, or a text file / folder of your own (e.g. manuals, logs)")
    p.add_argument("--teacher", help="the original model (default: the source in MODEL_DIR's manifest): 'default', a directory or a .gguf")
    p.add_argument("--config", help="a DistillConfig JSON file (flags override its fields)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="cuda (bf16 autocast) when available by default")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    hints = typing.get_type_hints(DistillConfig)
    for f in dataclasses.fields(DistillConfig):
        if f.name in _SKIP:
            continue
        hint = hints[f.name]
        kind = {int: int, float: float, str: str}.get(hint, str)  # lists / tuples: comma-separated
        p.add_argument(_flag(f.name), dest=f"cfg_{f.name}", type=kind, default=None,
                       help=f"{f.metadata.get('help', '')} (default {f.default if f.default is not None else 'see help'})")
    return p


def _comma(v: str, conv=str) -> list:
    return [conv(x) for x in v.split(",") if x.strip()]


def config_from_args(args):
    from ..distill.config import DistillConfig
    from ..errors import ConfigError

    base = DistillConfig.from_json_file(args.config).to_dict() if args.config else {}
    for f in dataclasses.fields(DistillConfig):
        v = getattr(args, f"cfg_{f.name}", None)
        if v is None:
            continue
        if f.name == "trainable":
            v = _comma(v)
        elif f.name == "betas":
            try:
                v = _comma(v, float)
            except ValueError:
                raise ConfigError(f"--betas must be two comma-separated numbers, got '{v}'") from None
        base[f.name] = v
    if args.data:
        base["data"] = args.data
    if "tokens" not in base:
        raise ConfigError("--tokens N is required (training tokens, e.g. --tokens 200000)")
    return DistillConfig.from_dict(base)


def run(args) -> int:
    from ..distill.api import distill
    from ..errors import ConfigError

    cfg = config_from_args(args)
    src = Path(args.model_dir)
    if not src.is_dir():
        raise ConfigError(f"model directory '{src}' does not exist")
    out = Path(args.out) if args.out else src.with_name(src.name + "-distilled")
    teacher = None
    if args.teacher:
        from ..models.loading import load_model

        teacher = load_model(args.teacher).model
    res = distill(src, cfg, out, teacher=teacher, resume=args.resume, force=args.force,
                  progress=not args.no_progress, device=args.device)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate: one report, from rank 0
        return 0
    for g in res.reconstruction:
        print(f"reconstruction group {g['group']}: normalised MSE {g['mse_before']:.4f} -> {g['mse_after']:.4f}")
    loss = f"{res.final_loss:.4f}" if res.final_loss is not None else "n/a"
    print(f"distilled {res.tokens:,} tokens in {res.steps} steps, {res.seconds:.0f} s ({res.tokens_per_s:.0f} tok/s); "
          f"final loss {loss}; wrote {out} (log: {out / 'train_log.jsonl'}, curve: {out / 'loss_curve.png'})")
    return 0
