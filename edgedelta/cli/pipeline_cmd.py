"""edgedelta pipeline: from a model to a device report in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import drop_count, fraction, info, int_list, model_arg, nonneg_int


def _tokens(text: str) -> int:
    try:
        v = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of tokens") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pipeline", help="compress → distill → evaluate → export → run → plan devices, one report",
                       description="The main job. Re-running with the same inputs reuses finished stages (resumes after an interrupt).")
    model_arg(p)
    p.add_argument("--target-params", type=fraction, default=0.88, help="fraction of unique parameters to keep (default 0.88)")
    p.add_argument("--drop-layers", type=drop_count, help="remove this many least influential layers before sharing (default 0); "
                                                          "'auto' tries every count, keeps the lowest KL on held-out text")
    p.add_argument("--layer-lora", type=nonneg_int, metavar="RANK",
                   help="also train a LoRA of this rank on every unshared layer while distilling (merged: no extra "
                        "parameters; plain distillation at lr 1e-3). With --drop-layers 3 --layer-lora 20 the best "
                        "recipe measured on SmolLM2-135M at 12%% (default 0: deltas and gates only)")
    p.add_argument("--tokens", type=_tokens, help="distillation tokens (default 200000; --quick 8192; 0 = no training)")
    p.add_argument("--devices", default="all", help="device names, comma-separated, or 'all' (see `edgedelta devices`)")
    p.add_argument("--contexts", type=int_list, help="context lengths to plan for (default 512,2048; --quick 256,1024)")
    p.add_argument("--cpu-arch", help="CPU the artifacts will run on: x86_64|arm64 (default x86_64; arm64 for a Pi "
                                      "or Jetson): the shared-weight layout for its ONNX Runtime kernel, same results")
    p.add_argument("--out", type=Path, default=Path("runs/pipeline"), help="report folder (default runs/pipeline); re-runs resume")
    p.add_argument("--quick", action="store_true", help="small budgets: about 15 minutes on 2 cores")
    return p


def run(args) -> int:
    from ..pipeline import PipelineConfig, run_pipeline

    kw = dict(model=args.model, target_params=args.target_params, tokens=args.tokens, devices=args.devices, contexts=args.contexts,
              drop_layers=args.drop_layers, layer_lora=args.layer_lora, cpu_arch=args.cpu_arch)
    cfg = PipelineConfig.quick_config(**kw) if args.quick else PipelineConfig(**{k: v for k, v in kw.items() if v is not None})
    index = run_pipeline(cfg, args.out)
    info(f"report: {index}")
    print(index)
    return 0
