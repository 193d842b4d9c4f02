"""edgedelta pipeline: from a model to a device report in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import drop_count, fraction, info, int_list, model_arg, output_dir


def _tokens(text: str) -> int:
    try:
        v = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of tokens") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_parser(sub) -> argparse.ArgumentParser:
    from ..recipes import RECIPES

    p = sub.add_parser("pipeline", help="compress → distill → evaluate → export → run → plan devices, one report",
                       description="The main job, with the recipe measured best at the budget (it prints which and the file "
                                   "in bench/results/ that measured it). Re-running with the same inputs reuses finished stages "
                                   "(resumes after an interrupt). Every other PipelineConfig field is set with --config FILE.")
    model_arg(p, default=None)
    p.add_argument("--target-params", type=fraction, help="fraction of unique parameters to keep (default 0.88)")
    p.add_argument("--recipe", choices=[n for n, r in RECIPES.items() if r.shares],
                   help="override the recipe (default: the one measured best at --target-params)")
    p.add_argument("--drop-layers", type=drop_count, help="layers removed before sharing (default: the recipe's count at this "
                                                          "budget); 'auto' tries every count, keeps the lowest KL on held-out text")
    p.add_argument("--tokens", type=_tokens, help="distillation tokens (default: the recipe's budget; 0 = no training)")
    p.add_argument("--devices", help="device names, comma-separated, or 'all' (default; see `edgedelta devices`)")
    p.add_argument("--contexts", type=int_list, help="context lengths to plan for (default 512,2048; --quick 256,1024)")
    p.add_argument("--cpu-arch", help="CPU the artifacts will run on: x86_64|arm64 (default x86_64; arm64 for a Pi "
                                      "or Jetson): the shared-weight layout for its ONNX Runtime kernel, same results")
    p.add_argument("--config", help="a JSON file of PipelineConfig fields (flags override them)")
    p.add_argument("--out", type=output_dir, default=Path("runs/pipeline"), help="report folder (default runs/pipeline); re-runs resume")
    p.add_argument("--quick", action="store_true", help="the same recipe with small budgets: about 15 minutes on 2 cores")
    return p


def run(args) -> int:
    from ..configio import read_json
    from ..errors import ConfigError
    from ..pipeline import PipelineConfig, run_pipeline

    base = read_json(args.config) if args.config else {}
    if not isinstance(base, dict):
        raise ConfigError(f"a pipeline config must be a JSON object, got {type(base).__name__}")
    flags = dict(model=args.model, target_params=args.target_params, recipe=args.recipe, tokens=args.tokens, devices=args.devices,
                 contexts=args.contexts, drop_layers=args.drop_layers, cpu_arch=args.cpu_arch)
    kw = {**base, **{k: v for k, v in flags.items() if v is not None}}
    if args.quick:
        kw["quick"] = True
    from ..configio import config_from_dict

    cfg = config_from_dict(PipelineConfig, kw, "pipeline")
    index = run_pipeline(cfg, args.out)
    info(f"report: {index}")
    print(index)
    return 0
