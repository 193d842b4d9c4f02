"""Quality benchmark: DeltaLLM vs ShortGPT, LaCo, JointDrop and SliceGPT on the default model
(SmolLM2-135M-Instruct) at 12% and 25% fewer unique parameters, every zero-shot task plus
held-out perplexity, without and (with --heal-tokens) with equal-token healing.

Everything is evaluated on the same items (--limit per task, fixed seed) and the same
held-out text (python-docs, sotu-recent); calibration and healing text is mixed-train
(State of the Union addresses <= 1999 and Wikipedia passages from BoolQ's train split).
The original is evaluated once. Results are rewritten after every evaluated model to
bench/results/quality.json, so an interrupted run still reports what it measured;
quality.md and quality.png (chance-normalised retention on the tasks where the original beats
chance and majority) are regenerated from it
(--report-only does just that).

  python bench/quality.py                                  # CPU-sized defaults
  python bench/quality.py --limit 500 --heal-tokens 200000 # closer to the paper (GPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.cli.common import drop_count  # noqa: E402
from edgedelta.delta.compress import format_drop_search  # noqa: E402
from edgedelta.evaluation.api import EvalConfig, evaluate  # noqa: E402
from edgedelta.experiments.compare import METHODS, CompareConfig, _texts_note, compare  # noqa: E402
from edgedelta.evaluation.report import markdown_compare, markdown_paired, retention, retention_chart  # noqa: E402
from edgedelta.evaluation.tasks import DEFAULT_TASKS  # noqa: E402
from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402
from edgedelta import recipes  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--budgets", default="0.88,0.75", help="fractions of unique parameters kept")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--limit", type=int, default=60, help="items per task")
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--drop-layers", type=lambda t: drop_count(t, least=1), default=None,
                   help="layers the deltallm-drop method removes before sharing, or 'auto' (searched by KL to the original on "
                        "held-out text); default: the drop-share recipe's count at each budget")
    p.add_argument("--heal-tokens", type=int, default=0, help="equal healing tokens per method (0 = none)")
    p.add_argument("--recipe", choices=[n for n, r in recipes.RECIPES.items() if r.distill is not None], default=None,
                   help="healing protocol of every method (edgedelta/recipes.py); default: the measured best at each budget")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration rows shared by every method (compress default: 32)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--build-cache", default=str(Path(__file__).resolve().parent / "_work" / "quality_builds"),
                   help="folder keeping each DeltaLLM build, so a later run at the same settings loads it ('' = none)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); 1 is fastest on an oversubscribed machine")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--original-from", default=None, help="reuse the original's evaluation from this quality.json (same tasks/limit)")
    p.add_argument("--resume", action="store_true",
                   help="continue the quality.json in --out (same model and settings; --heal-tokens may be added to a "
                        "built-only run): measured rows are kept, and a rebuilt model's built evaluation too")
    p.add_argument("--note", action="append", default=None, help="with --report-only: add a note to the report (kept in the JSON)")
    p.add_argument("--merge", default=None, help="with --report-only: add the budgets of another quality.json (run in parallel)")
    return p.parse_args(argv)


def write_report(res: dict, out: Path) -> None:
    md = ["# Quality: DeltaLLM vs pruning baselines at equal unique parameters", "",
          f"Model: {res['model']}. {res['eval_text']}", "",
          f"Machine: {res['machine']}. Wall time so far: {res['seconds'] / 60:.1f} min.", ""]
    groups: dict[str, dict[str, float]] = {}
    orig = res.get("original")
    for b in res["budgets"]:
        rows = b["rows"]
        for stage in ("built", "healed"):
            sel = [r for r in rows if r["stage"] == stage and "eval" in r]
            if not sel or orig is None:
                continue
            label = f"{100 * (1 - b['target']):.0f}% fewer · {'healed' if stage == 'healed' else 'no healing'}"
            md += [f"## {label}", "", markdown_compare([orig] + sel), "", markdown_paired(sel, orig)]
            for r in sel:
                ret = retention(r["eval"], orig["eval"])
                if ret is not None:
                    groups.setdefault(label, {})[r["method"]] = 100 * ret
            budget = [f"- {r['method']}: {r['params'] / 1e6:.3f}M ({100 * r['params_fraction']:.2f}%), "
                      f"build {r['report'].get('build_seconds', '?')} s{_structure(r['report'])}" for r in sel if "report" in r]
            md += ["Unique parameters reached:", ""] + budget + [""]
        for r in rows:
            if "error" in r:
                md.append(f"- {r['method']} at {b['target']}: not built: {r['error']}")
    if res.get("notes"):
        md += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    write_text_atomic(out / "quality.md", "\n".join(md) + "\n")
    if groups:
        retention_chart(groups, out / "quality.png", f"{res['model']}: retention of the original's average zero-shot score")


def _structure(report: dict) -> str:
    """For a DeltaLLM row: layers removed first, sharing groups and, when searched, each count's KL."""
    plan = report.get("plan")
    if not plan:
        return ""
    out = f"; {len(plan.get('removed_layers') or [])} layers removed, {len(plan['groups'])} sharing groups"
    if "drop_search" in plan:
        out += "; " + format_drop_search(plan["drop_search"])
    return out


# arguments that change what a kept row measured; --heal-tokens and --recipe (the healing
# protocol) are checked against the healed rows only
_SAME_IN_A_RESUMED_RUN = ("model", "tasks", "limit", "ppl_tokens", "drop_layers", "calib_samples")


def _healing_recipe(recipe: str | None, target: float) -> str:
    return recipe or recipes.best_for(target).recipe.name


def _earlier_run(jpath: Path, a) -> dict | None:
    """The run --resume continues (None when --out has none yet); SystemExit when its settings differ."""
    if not jpath.exists():
        return None
    res = json.loads(jpath.read_text())
    before = res.get("runs", [res["args"]])[-1]
    differ = [k for k in _SAME_IN_A_RESUMED_RUN if before.get(k) != getattr(a, k)]
    if differ:
        raise SystemExit(f"--resume: {jpath} was measured with other settings: "
                         + ", ".join(f"{k} {before.get(k)!r} (now {getattr(a, k)!r})" for k in differ))
    tokens = sorted({r["heal"]["tokens"] for b in res["budgets"] for r in b["rows"] if r["stage"] == "healed" and "heal" in r})
    row = CompareConfig.heal_seq_len  # healing uses whole rows: a method's count is within one row of --heal-tokens
    if tokens and (not a.heal_tokens or any(abs(t - a.heal_tokens) > row for t in tokens)):
        raise SystemExit(f"--resume: {jpath} healed on {tokens} tokens, this run heals on {a.heal_tokens}")
    budgets = [float(x) for x in a.budgets.split(",")]
    for b in res["budgets"]:
        if not a.heal_tokens or b["target"] not in budgets:
            continue
        healed = {r["heal"].get("recipe") or _healing_recipe(before.get("recipe"), b["target"])
                  for r in b["rows"] if r["stage"] == "healed" and "heal" in r}
        now = _healing_recipe(a.recipe, b["target"])
        if healed - {now}:
            raise SystemExit(f"--resume: {jpath} healed its rows at keep {b['target']} with recipe {', '.join(sorted(healed))}; "
                             f"this run heals with {now}")
    return res


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "quality.json"
    if a.report_only:
        res = json.loads(jpath.read_text())
        if a.merge:
            other = json.loads(Path(a.merge).read_text())
            if other["original"]["eval"]["config"] != res["original"]["eval"]["config"]:
                raise SystemExit("--merge: the runs used different evaluation settings")
            by_target = {b["target"]: b for b in res["budgets"]}
            for b in other["budgets"]:  # add new budgets, and new methods to existing ones
                if b["target"] not in by_target:
                    res["budgets"].append(b)
                    continue
                mine = by_target[b["target"]]
                have = {(r["method"], r["stage"]) for r in mine["rows"] if "eval" in r}
                mine["rows"] += [r for r in b["rows"] if (r["method"], r["stage"]) not in have]
            res["seconds"] = max(res["seconds"], other["seconds"])
            res.setdefault("merged_from", []).append(str(a.merge))
        if a.note:
            res["notes"] = res.get("notes", []) + a.note
        if a.merge or a.note:
            write_json_atomic(jpath, res)
        write_report(res, out)
        return 0
    import torch

    from edgedelta.loading import load_model

    if a.threads:
        torch.set_num_threads(a.threads)

    earlier = _earlier_run(jpath, a) if a.resume else None
    t0 = time.time() - (earlier["seconds"] if earlier else 0.0)
    lm = load_model(a.model)
    ev = EvalConfig(tasks=a.tasks, limit=a.limit, ppl_tokens=a.ppl_tokens)
    res = {"model": lm.source.get("name", a.model), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "args": vars(a), "budgets": [], "original": None, "seconds": 0.0, "eval_text": ""}
    budgets = [float(x) for x in a.budgets.split(",")]
    if earlier:
        res["runs"] = earlier.get("runs", [earlier["args"]]) + [vars(a)]
        res["notes"] = earlier.get("notes", [])
        res["budgets"] = [b for b in earlier["budgets"] if b["target"] not in budgets]  # kept as they were

    def save():
        res["seconds"] = round(time.time() - t0, 1)
        res["budgets"].sort(key=lambda b: -b["target"])
        write_json_atomic(jpath, res)
        write_report(res, out)

    orig_eval = earlier["original"]["eval"] if earlier else None
    if a.original_from:
        prev = json.loads(Path(a.original_from).read_text())["original"]["eval"]
        if prev["config"] != json.loads(json.dumps(vars(ev))):
            raise SystemExit(f"--original-from: {a.original_from} used different evaluation settings")
        orig_eval = prev
    if orig_eval is None:
        print("evaluating the original", file=sys.stderr, flush=True)
        orig_eval = evaluate(lm.model, lm.tokenizer, ev)
    from edgedelta.delta.accounting import count_parameters

    res["original"] = {"method": "original", "stage": "original", "params": count_parameters(lm.model)["total"],
                       "params_fraction": 1.0, "eval": orig_eval}
    for budget in budgets:
        cfg = CompareConfig(target_params=budget, methods=a.methods.split(","), heal_tokens=a.heal_tokens, drop_layers=a.drop_layers,
                            recipe=a.recipe, calib_samples=a.calib_samples, build_cache=a.build_cache or None, eval=ev)
        previous = next((b for b in earlier["budgets"] if b["target"] == budget), None) if earlier else None
        entry = {"target": budget, "rows": list(previous["rows"]) if previous else []}
        res["budgets"].append(entry)
        res["eval_text"] = _texts_note(cfg)

        def on_row(row, entry=entry):
            key = (row["method"], row["stage"])
            entry["rows"] = [r for r in entry["rows"] if (r["method"], r["stage"]) != key] + [row]
            save()

        r = compare(lm.model, lm.tokenizer, cfg, source=lm.source, progress=False, original_eval=orig_eval, on_row=on_row,
                    previous=previous["rows"] if previous else None)
        entry["budget_params"] = r["budget_params"]
        save()
    save()
    print((out / "quality.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
