"""`edgedelta eval MODEL --tasks ppl,arc_easy,...`: zero-shot accuracy and held-out perplexity
of a model directory, the default model, a GGUF file or an exported ONNX artifact. Prints a
markdown table; --json writes every metric (with stderr), the settings and the texts used."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from .common import output_file


def add_parser(subparsers):
    from ..evaluation.tasks import DEFAULT_TASKS, FILE_METRICS, known_tasks

    p = subparsers.add_parser("eval", help="zero-shot tasks and perplexity of a model or ONNX artifact",
                              description=__doc__)
    p.add_argument("model", help="'default', a built-in model name (`edgedelta models`), a model directory, a .gguf file, "
                                       "or an ONNX artifact folder")
    p.add_argument("--tasks", default=None, help=f"comma-separated; known: {','.join(known_tasks())}; or 'all' (default: "
                   f"{','.join(DEFAULT_TASKS)}; with --task-file only that file)")
    p.add_argument("--limit", type=int, default=None, help="items per task (a fixed random subset, same for every model)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the --limit subset")
    p.add_argument("--text", action="append", default=None, metavar="FILE|DIR|SET",
                   help="held-out text for ppl (repeatable): a file, a folder, or python-docs / sotu-recent (default: both)")
    p.add_argument("--ppl-tokens", type=int, default=16384, help="tokens per text set for ppl")
    p.add_argument("--task-file", default=None, help="your own multiple-choice items, JSONL (see docs/EVAL.md)")
    p.add_argument("--task-metric", choices=FILE_METRICS, default=None,
                   help="the task file's score: acc, or acc_norm (length-normalised) for answers of unequal length "
                        "(default: the file's {\"metric\": ...} line, else acc)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per forward pass")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"], help="ONNX Runtime provider for artifacts: auto|cpu|cuda")
    p.add_argument("--json", dest="json_out", type=output_file, default=None, help="write results as JSON here")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from ..evaluation.api import DEFAULT_PPL_TEXTS, EvalConfig, evaluate
    from ..evaluation.backends import scorer_for
    from ..evaluation.tasks import DEFAULT_TASKS
    from ..evaluation.report import markdown_single
    from ..fsutil import write_json_atomic

    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be a positive number of items, got {args.limit}")
    tasks = args.tasks if args.tasks is not None else ([] if args.task_file else list(DEFAULT_TASKS))
    cfg = EvalConfig(tasks=tasks, limit=args.limit, seed=args.seed, task_file=args.task_file, task_metric=args.task_metric,
                     ppl_texts=args.text or list(DEFAULT_PPL_TEXTS), ppl_tokens=args.ppl_tokens,
                     batch_tokens=args.batch_tokens)
    if args.task_file:  # validate before the (slow) model load
        from ..evaluation.tasks import load_task_file

        load_task_file(args.task_file)
    scorer, source = scorer_for(args.model, batch_tokens=args.batch_tokens, provider=args.provider)
    res = evaluate(None, config=cfg, scorer=scorer, progress=not args.no_progress and sys.stderr.isatty())
    res["model"] = source
    sys.stdout.write(markdown_single(res, title=f"edgedelta eval {args.model}"))
    if res.get("ppl"):
        used = ", ".join(f"{k} ({v['documents']} docs, {v['tokens']} tokens)" for k, v in res["ppl"].items())
        sys.stdout.write(f"\nperplexity text: {used}\n")
    if args.json_out:
        write_json_atomic(args.json_out, res)
        sys.stdout.write(f"wrote {args.json_out}\n")
    return 0
