"""`edgedelta compare --model default --target-params 0.88 --out DIR`: DeltaLLM against ShortGPT,
LaCo, JointDrop and SliceGPT at the same unique-parameter count, optionally each healed with the same
distillation tokens (--tokens N), all evaluated on the same items. Writes results.json,
results.md and retention.png (chance-normalised retention) into DIR."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from .common import model_arg, output_dir


def add_parser(subparsers):
    from ..data.text import DEFAULT_TRAIN_TEXT
    from ..experiments.methods import DEFAULT_METHODS, METHODS
    from ..evaluation.tasks import DEFAULT_TASKS
    from ..recipes import RECIPES

    p = subparsers.add_parser("compare", help="DeltaLLM vs pruning baselines at equal parameters", description=__doc__)
    model_arg(p)
    p.add_argument("--target-params", type=float, default=0.88, help="fraction of unique parameters to keep, in (0, 1)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--recipe", choices=[n for n, r in RECIPES.items() if r.distill is not None],
                   help="healing protocol for every method (default: the recipe measured best at --target-params)")
    p.add_argument("--tokens", type=int, default=0, help="healing tokens per method (0 = evaluate without healing)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--limit", type=int, default=200, help="items per task (fixed random subset)")
    p.add_argument("--text", default=DEFAULT_TRAIN_TEXT, help="calibration and healing text: sotu-train, wiki-train, "
                                                           "mixed-train or a file/folder of your own")
    p.add_argument("--config", help="a JSON file of CompareConfig fields (e.g. calib_samples, drop_layers, seed); flags override")
    p.add_argument("--out", type=output_dir, required=True, help="output folder (written atomically)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args):
    from ..configio import config_from_dict, read_json
    from ..evaluation.api import EvalConfig
    from ..experiments.compare import CompareConfig

    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be a positive number of items, got {args.limit}")
    base = read_json(args.config) if args.config else {}
    if not isinstance(base, dict):
        raise ConfigError(f"a compare config must be a JSON object, got {type(base).__name__}")
    ev = base.pop("eval", {}) or {}
    if not isinstance(ev, dict):
        raise ConfigError(f"the compare config's 'eval' must be a JSON object, got {type(ev).__name__}")
    ev = config_from_dict(EvalConfig, {**ev, "tasks": args.tasks, "limit": args.limit}, "eval")
    flags = dict(target_params=args.target_params, methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                 heal_tokens=args.tokens, text=args.text, recipe=args.recipe)
    return config_from_dict(CompareConfig, {**base, **{k: v for k, v in flags.items() if v is not None}, "eval": ev}, "compare")


def run(args) -> int:
    from ..experiments.compare import compare, write_results
    from ..evaluation.report import markdown_compare
    from ..fsutil import atomic_dir, check_output_path
    from ..loading import load_model

    cfg = config_from_args(args)
    check_output_path(args.out, args.force)  # refuse before the slow part
    lm = load_model(args.model)
    progress = not args.no_progress and sys.stderr.isatty()
    res = compare(lm.model, lm.tokenizer, cfg, source=lm.source, progress=progress)
    title = f"{lm.source.get('name', args.model)} at {100 * args.target_params:.0f}% unique parameters"
    with atomic_dir(args.out, force=args.force) as tmp:
        write_results(res, tmp, title)
    ok = [r for r in res["rows"] if "eval" in r]
    sys.stdout.write(markdown_compare(ok))
    sys.stdout.write(f"wrote {args.out}/results.json, results.md, retention.png\n")
    return 0
