"""edgedelta compress: a model becomes a shared-plus-delta model directory."""

from __future__ import annotations

import argparse

from .common import drop_count, fraction, groups_arg, info, model_arg, out_args, positive_int
from ..delta.config import BASES


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compress", help="share layer weights + low-rank deltas (DeltaLLM)",
                       description="Compress a model by DeltaLLM weight sharing. Prints the plan, unique parameters and ratio.")
    model_arg(p)
    p.add_argument("--target-params", type=fraction, help="keep this fraction of the unique parameters (e.g. 0.88); the planner picks groups and ranks")
    p.add_argument("--groups", type=groups_arg, help="explicit sharing groups, e.g. 2-3,5-6 (instead of --target-params)")
    p.add_argument("--drop-layers", type=drop_count, help="first remove this many whole layers (least block influence), then "
                                                          "share for the rest of the budget (default 0); 'auto' compresses "
                                                          "with every count and keeps the lowest KL on held-out text (slower: "
                                                          "one compression per count)")
    p.add_argument("--config", help="a CompressConfig JSON file (command-line flags override its fields)")
    p.add_argument("--init", choices=["svd", "asvd"], help="delta init: weight SVD or activation-aware SVD (default asvd)")
    p.add_argument("--base", choices=list(BASES), help="shared base (default anchor: the group's most influential layer, kept exact)")
    p.add_argument("--rank-attn", type=int, help="delta rank for attention projections")
    p.add_argument("--rank-mlp", type=int, help="delta rank for MLP projections")
    p.add_argument("--no-gates", action="store_true", help="no per-layer sub-layer gates")
    p.add_argument("--attn-only", action="store_true", help="share attention projections only")
    p.add_argument("--mlp-only", action="store_true", help="share MLP projections only")
    p.add_argument("--calib-samples", type=positive_int, help="calibration sequences (default 32)")
    p.add_argument("--calib-text", help="calibration text: sotu-train, wiki-train, mixed-train (default) or a file/folder of "
                                        "your own (e.g. the plant's manuals: the planner then keeps what that text needs)")
    out_args(p)
    return p


def config_from_args(args):
    from ..delta.config import CompressConfig
    from ..errors import ConfigError

    base = CompressConfig.from_json_file(args.config).to_dict() if args.config else {}
    overrides = {
        "target_params": args.target_params, "groups": args.groups, "init": args.init, "base": args.base,
        "rank_attn": args.rank_attn, "rank_mlp": args.rank_mlp, "calib_samples": args.calib_samples,
        "calib_text": args.calib_text, "drop_layers": args.drop_layers,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_gates:
        base["gates"] = False
    if args.attn_only and args.mlp_only:
        raise ConfigError("--attn-only and --mlp-only exclude each other")
    if args.attn_only:
        base["share_mlp"] = False
    if args.mlp_only:
        base["share_attn"] = False
    if base.get("target_params") is not None and base.get("groups") is not None:
        raise ConfigError("give either --target-params or --groups, not both")
    if base.get("target_params") is None and base.get("groups") is None and base.get("layer_range") is None:
        raise ConfigError("no plan: give --target-params F, --groups A-B,... or --config FILE")
    return CompressConfig.from_dict(base)


def run(args) -> int:
    from ..delta.compress import compress, format_plan
    from ..delta.storage import save_compressed
    from ..fsutil import check_output_path
    from ..loading import load_model

    cfg = config_from_args(args)
    check_output_path(args.out, args.force)  # before any work: nothing is written on bad input
    lm = load_model(args.model)
    info(f"compressing {args.model} ...")
    res = compress(lm.model, cfg, tokenizer=lm.tokenizer, reuse_weights=True)  # saved, then dropped: nothing trains either model here
    source = dict(lm.source)
    facts = {"compress_config": cfg.to_dict(), "plan": res.plan, "init_report": res.report["init"], "source": source}
    save_compressed(res.model, args.out, tokenizer=lm.tokenizer, manifest_facts=facts, force=args.force)
    print(format_plan(res.plan))
    print(f"wrote {args.out}")
    return 0
