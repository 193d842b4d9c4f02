"""Benchmark: does drop_layers='auto' pick the right number of layers to remove?

Default model (SmolLM2-135M-Instruct). For each budget, every count of layers removed before
sharing is built once (compress.drop_candidates, as the search does) and scored three ways:
- KL to the original on 8 of the calibration rows the candidate was fitted on (the criterion
  of sessions 1-9),
- KL to the original on held-out calibration-text rows (the search's criterion now), and the
  candidate's own next-token NLL on those rows (held-out perplexity = exp(NLL)),
- perplexity on the evaluation text (python-docs, sotu-recent), which the search never sees:
  the ground truth before healing.
Writes drop_search.{json,md,png} to --out (default bench/results), after every count.

    python bench/drop_search.py --budgets 0.75,0.88
    python bench/drop_search.py --budgets 0.75 --counts 3,8 --out bench/_work/ds  # these counts only
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--budgets", default="0.75,0.88", help="fractions of unique parameters kept")
    p.add_argument("--ppl-tokens", type=int, default=4096, help="evaluation tokens per text set")
    p.add_argument("--max-count", type=int, default=None, help="CompressConfig.drop_search_max")
    p.add_argument("--counts", default=None, help="only these counts, e.g. 3,8 (default: every count, as the search)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def ranks(values: dict) -> dict:
    """1 = lowest."""
    order = sorted(values, key=values.get)
    return {k: order.index(k) + 1 for k in values}


def spearman(a: dict, b: dict) -> float | None:
    keys = list(a)
    n = len(keys)
    if n < 3:
        return None
    ra, rb = ranks(a), ranks({k: b[k] for k in keys})
    return 1 - 6 * sum((ra[k] - rb[k]) ** 2 for k in keys) / (n * (n * n - 1))


def write_report(res: dict, out: Path) -> None:
    md = ["# Choosing how many layers to remove before sharing (drop_layers='auto')", "",
          f"Model: {res['model']}. Machine: {res['machine']}. Wall time: {res['seconds'] / 60:.1f} min.", "",
          "Each row is one count of layers removed first (least block influence), the rest of the budget met by "
          "sharing; untrained. KL (nats/token) to the original on 8 of the calibration rows the candidate was fitted "
          f"on, and on {res['heldout_rows']} held-out rows of the same text (drawn apart). Perplexity on the "
          "evaluation text, never seen by the search. Rank 1 = lowest.", ""]
    for b in res["budgets"]:
        rows = b["rows"]
        if not rows:
            continue
        truth = {r["count"]: r["log_ppl"] for r in rows}
        criteria = {"KL fitted rows": {r["count"]: r["kl_calibration"] for r in rows},
                    "KL held-out": {r["count"]: r["kl"] for r in rows}}
        if all(r.get("nll") is not None for r in rows):
            criteria["ppl held-out"] = {r["count"]: math.exp(r["nll"]) for r in rows}
        rk = {name: ranks(v) for name, v in criteria.items()}
        rt = ranks(truth)
        md += [f"## keep {100 * b['target']:.0f}% of the unique parameters", "",
               "| removed | " + " | ".join(f"{name} | rank" for name in criteria) + " | "
               + " | ".join(f"eval ppl {t}" for t in res["ppl_texts"]) + " | rank |",
               "|---:|" + "---:|---:|" * len(criteria) + "---:|" * len(res["ppl_texts"]) + "---:|"]
        for r in rows:
            c = r["count"]
            md.append(f"| {c} | " + " | ".join(f"{v[c]:.4f} | {rk[name][c]}" for name, v in criteria.items()) + " | "
                      + " | ".join(f"{r['ppl'][t]:.1f}" for t in res["ppl_texts"]) + f" | {rt[c]} |")
        best = lambda d: min(d, key=d.get)  # noqa: E731
        md += ["", f"- lowest evaluation perplexity: {best(truth)} removed"]
        for name, v in criteria.items():
            sp = spearman(v, truth)
            md.append(f"- {name} picks {best(v)}" + (f" (Spearman vs evaluation perplexity {sp:+.2f})" if sp is not None else ""))
        md += [f"- {b.get('stopped', 'running')}", ""]
    if res.get("notes"):
        md += ["## Notes", ""] + [f"- {n}" for n in res["notes"]]
    write_text_atomic(out / "drop_search.md", "\n".join(md) + "\n")
    _plot(res, out / "drop_search.png")


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    budgets = [b for b in res["budgets"] if b["rows"]]
    if not budgets:
        return
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        counts = [r["count"] for r in b["rows"]]
        ax.plot(counts, [r["kl_calibration"] for r in b["rows"]], "o-", label="KL, fitted rows")
        ax.plot(counts, [r["kl"] for r in b["rows"]], "s-", label="KL, held-out rows")
        ax.set_xlabel("layers removed before sharing")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("KL to the original (nats/token)")
        ax.set_title(f"keep {100 * b['target']:.0f}%")
        twin = ax.twinx()
        twin.plot(counts, [math.exp(r["log_ppl"]) for r in b["rows"]], "^--", color="tab:red", label="eval perplexity (geo. mean)")
        twin.set_ylabel("evaluation perplexity", color="tab:red")
        lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper left")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from edgedelta.delta.calibration import Calibration
    from edgedelta.delta.config import CompressConfig
    from edgedelta.delta.drop_search import drop_candidates, heldout_rows
    from edgedelta.evaluation.api import EvalConfig, evaluate
    from edgedelta.loading import load_model

    budgets = [float(x) for x in a.budgets.split(",")]
    counts = [int(x) for x in a.counts.split(",")] if a.counts else None  # parsed before the model loads
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    lm = load_model(a.model)
    ev = EvalConfig(tasks=["ppl"], ppl_tokens=a.ppl_tokens)
    res = {"model": lm.source.get("name", a.model), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "args": vars(a), "ppl_texts": list(ev.ppl_texts), "heldout_rows": CompressConfig.drop_search_samples,
           "budgets": [], "seconds": 0.0}

    def save():
        res["seconds"] = round(time.time() - t0, 1)
        write_json_atomic(out / "drop_search.json", res)
        write_report(res, out)

    for budget in budgets:
        cfg = CompressConfig(target_params=budget, drop_layers="auto", drop_search_max=a.max_count)
        entry = {"target": budget, "rows": []}
        res["budgets"].append(entry)
        calib, held = Calibration.draw(cfg, lm.tokenizer), heldout_rows(cfg, lm.tokenizer)
        for c in drop_candidates(lm.model, cfg, calib, held, progress=False, counts=counts):
            if c.result is None:
                entry["stopped"] = f"stopped at {c.stopped}"
                break
            ppl = {t: v["ppl"] for t, v in evaluate(c.result.model, lm.tokenizer, ev, progress=False)["ppl"].items()}
            plan = c.result.plan
            entry["rows"].append({"count": c.count, "kl": c.kl, "kl_calibration": c.kl_calibration, "nll": c.nll, "ppl": ppl,
                                  "log_ppl": sum(math.log(v) for v in ppl.values()) / len(ppl),
                                  "removed_layers": plan.get("removed_layers", []), "groups": plan["groups"],
                                  "params": plan["compressed_params"]})
            print(f"keep {budget}: {c.count} removed: KL fitted {c.kl_calibration:.4f}, held-out {c.kl:.4f}, ppl {ppl}",
                  file=sys.stderr, flush=True)
            save()
        entry.setdefault("stopped", f"counts {a.counts} only" if counts else "stopped at drop_search_max or all but two layers")
        save()
    print((out / "drop_search.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
