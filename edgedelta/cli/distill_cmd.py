"""edgedelta distill: recover a compressed model by distillation from the model it was made
from. The settings come from a recipe (edgedelta/recipes.py; by default the one measured best
at the model's budget); --config FILE sets any DistillConfig field on top, and the few flags
below (each measured in bench/results/) override both."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import output_dir, positive_int


def _lr(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def add_parser(sub) -> argparse.ArgumentParser:
    from ..recipes import RECIPES

    trainers = [r.name for r in RECIPES.values() if r.distill is not None]
    p = sub.add_parser("distill", help="recover a compressed model by distillation from its original",
                       description="Distil a compressed model directory from the model it was made from (recorded in its manifest). "
                                   "Checkpoints go to OUT.run/; --resume continues an interrupted run exactly. Every other "
                                   "DistillConfig field (seq_len, schedule, trainable, lora_rank, ...) is set with --config FILE.")
    p.add_argument("model_dir", help="compressed model directory (from `edgedelta compress` or an earlier distill)")
    p.add_argument("--tokens", type=positive_int, help="training tokens (required unless --config sets them)")
    p.add_argument("--recipe", choices=trainers, help="distillation recipe (default: the one measured best at the model's budget)")
    p.add_argument("--config", help="a JSON file of DistillConfig fields, applied over the recipe")
    p.add_argument("--data", help="training text: mixed-train (default: speeches and Wikipedia passages), sotu-train, "
                                  "wiki-train, or a text file / folder of your own (e.g. manuals, logs)")
    p.add_argument("--lr", type=_lr, help="peak learning rate (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, help="sequences per optimizer step (default: the recipe's)")
    p.add_argument("--out", type=output_dir, help="output directory (default: MODEL_DIR-distilled)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT.run/ (same config required)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (and discard an earlier run folder)")
    p.add_argument("--teacher", help="the original model (default: the source in MODEL_DIR's manifest): 'default', a built-in model name, a directory or a .gguf")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="cuda (bf16 autocast) when available by default")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _model_budget(model_dir: str) -> float | None:
    """The kept fraction of unique parameters recorded by compress, if the manifest says."""
    from ..errors import EdgeDeltaError
    from ..manifest import read_manifest

    try:
        ratio = (read_manifest(model_dir).get("plan") or {}).get("ratio")
    except (EdgeDeltaError, OSError, ValueError):
        return None
    return float(ratio) if isinstance(ratio, (int, float)) and 0 < ratio < 1 else None


def config_from_args(args):
    """(DistillConfig, why): the recipe's fields, then --config, then the flags."""
    from ..distill.config import DistillConfig
    from ..errors import ConfigError
    from ..recipes import best_for, get

    if args.recipe:
        recipe, why = get(args.recipe), "chosen with --recipe"
    else:
        budget = _model_budget(args.model_dir)
        choice = best_for(budget if budget is not None else 0.88)
        recipe, why = choice.recipe, choice.why
    fields = dict(recipe.distill.config_fields())
    fields.pop("tokens")  # the training budget is the user's decision
    if args.config:
        fields.update(_file_fields(args.config))
    for name in ("tokens", "lr", "batch_size"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.data:
        fields["data"] = args.data
    if "tokens" not in fields:
        raise ConfigError("--tokens N is required (training tokens, e.g. --tokens 200000)")
    return DistillConfig.from_dict(fields), f"recipe {recipe.name}: {why}"


def _file_fields(path) -> dict:
    """A --config file's DistillConfig fields, each checked now (a file without 'tokens' is
    checked with a placeholder count: the flag may supply it)."""
    from ..configio import config_from_dict, read_json
    from ..distill.config import DistillConfig

    data = read_json(path)
    config_from_dict(DistillConfig, {"tokens": 1, **data} if isinstance(data, dict) else data, "distill")
    return data


def run(args) -> int:
    from ..distill.api import distill
    from ..errors import ConfigError

    cfg, why = config_from_args(args)
    src = Path(args.model_dir)
    if not src.is_dir():
        raise ConfigError(f"model directory '{src}' does not exist")
    out = Path(args.out) if args.out else src.with_name(src.name + "-distilled")
    teacher = None
    if args.teacher:
        from ..loading import load_model

        teacher = load_model(args.teacher).model
    res = distill(src, cfg, out, teacher=teacher, resume=args.resume, force=args.force,
                  progress=not args.no_progress, device=args.device)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate: one report, from rank 0
        return 0
    print(why)
    for g in res.reconstruction:
        print(f"reconstruction group {g['group']}: normalised MSE {g['mse_before']:.4f} -> {g['mse_after']:.4f}")
    loss = f"{res.final_loss:.4f}" if res.final_loss is not None else "n/a"
    print(f"distilled {res.tokens:,} tokens in {res.steps} steps, {res.seconds:.0f} s ({res.tokens_per_s:.0f} tok/s); "
          f"final loss {loss}; wrote {out} (log: {out / 'train_log.jsonl'}, curve: {out / 'loss_curve.png'})")
    return 0
