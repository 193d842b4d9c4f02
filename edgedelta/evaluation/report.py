"""Human-readable views of evaluation results: a markdown table for one model, a comparison
table for several (with each task's chance and majority rates), and a bar chart of
chance-normalised retention."""

from __future__ import annotations

from pathlib import Path

from .chance import informative_tasks, normalised_retention, paired_on, task_rates


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown_single(res: dict, title: str = "") -> str:
    """One model: a row per task (metric, score ± stderr, n), then perplexities."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| task | metric | score (%) | ± stderr | acc | acc_norm | n |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, t in res["tasks"].items():
        p = t["primary"]
        lines.append(f"| {name} | {p} | {_pct(t['score'])} | {_pct(t.get(p + '_stderr'))} | {_pct(t.get('acc'))} | "
                     f"{_pct(t.get('acc_norm'))} | {t['n']} |")
    if res.get("average") is not None:
        lines.append(f"| **average** | primary | **{_pct(res['average'])}** | | | | |")
    if res.get("ppl"):
        lines += ["", "| held-out text | perplexity | tokens |", "|---|---:|---:|"]
        for name, p in res["ppl"].items():
            lines.append(f"| {name} | {p['ppl']:.2f} | {p['tokens']} |")
    return "\n".join(lines) + "\n"


def average_stderr(res: dict) -> float | None:
    """Standard error of the average of primary scores: sqrt(sum of squared task stderrs) / k
    (tasks scored on independent items)."""
    ses = [t.get(t["primary"] + "_stderr") for t in res["tasks"].values()]
    if not ses or any(se is None for se in ses):
        return None
    return sum(se * se for se in ses) ** 0.5 / len(ses)


def paired_difference(res: dict, other: dict, tasks: list[str] | None = None) -> tuple[float, float] | None:
    """(average primary score of `res` minus `other`'s over `tasks` (default: all), its paired
    stderr) from per-item scores on the same items; None when either lacks them or the two were
    not evaluated alike."""
    if list(res["tasks"]) != list(other["tasks"]):
        return None
    return paired_on(res, other, list(res["tasks"]) if tasks is None else tasks)


def markdown_paired(rows: list[dict], reference: dict | None = None) -> str:
    """Bullets: the first DeltaLLM row minus every other method, paired on the same items,
    on the reference's informative tasks (chance.py), or "" when per-item scores are missing."""
    ours = next((r for r in rows if r["method"].startswith("deltallm")), None)
    ref = reference or next((r for r in rows if r["method"] == "original"), None)
    if ours is None or ref is None:
        return ""
    tasks = informative_tasks(ref["eval"])
    lines = []
    for r in rows:
        if r is ours or r["method"].startswith("deltallm") or r["method"] == "original":
            continue
        d = paired_on(ours["eval"], r["eval"], tasks)
        if d is not None:
            diff, se = 100 * d[0], 100 * d[1]
            how = f"{abs(diff) / se:.1f} standard errors" if se else "the same difference on every item"
            lines.append(f"- {ours['method']} − {r['method']}: {diff:+.1f} ± {se:.1f} points ({how})")
    if not lines:
        return ""
    return (f"Paired differences of the mean score on the informative tasks ({', '.join(tasks)}), on the same items:\n\n"
            + "\n".join(lines) + "\n")


def retention(res: dict, reference: dict) -> float | None:
    """Chance-normalised retention on the reference's informative tasks (chance.py)."""
    r = normalised_retention(res, reference)
    return None if r is None else r["value"]


def _rate_row(label: str, key: str, ref: dict, tasks: list[str], width: int) -> str:
    cells = [label, "", ""]
    for t in tasks:
        rates = task_rates(t, ref["tasks"][t], ref.get("config") or {})
        v = None if rates is None else rates[key]
        cells.append("—" if v is None else _pct(v))
    return "| " + " | ".join(cells + [""] * (width - len(cells))) + " |"


def markdown_compare(rows: list[dict], reference_name: str = "original") -> str:
    """rows: [{"method", "params", "params_fraction", "eval": evaluate(...) result, ...}].
    One row a method: primary score per task (* = informative: the reference beats chance and
    majority by more than 2 standard errors), average over all tasks, chance-normalised
    retention on the informative tasks ± its paired stderr, perplexities; then the chance
    and majority rates of each task."""
    ref = next((r for r in rows if r["method"] == reference_name), rows[0])
    tasks = list(ref["eval"]["tasks"])
    informative = set(informative_tasks(ref["eval"]))
    ppl_sets = list((ref["eval"].get("ppl") or {}))
    head = (["method", "unique params", "kept"] + [t + ("*" if t in informative else "") for t in tasks]
            + ["average (all)", "retention* (chance-norm.)"] + [f"ppl {p}" for p in ppl_sets])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        ev = r["eval"]
        cells = [r["method"], f"{r['params'] / 1e6:.2f}M", f"{100 * r['params_fraction']:.1f}%"]
        cells += [_pct(ev["tasks"][t]["score"]) if t in ev["tasks"] else "—" for t in tasks]
        se = average_stderr(ev)
        ret = normalised_retention(ev, ref["eval"], sorted(informative, key=tasks.index)) if informative else None
        ret_cell = "—" if ret is None else f"{100 * ret['value']:.1f}%" + ("" if r is ref else f" ± {100 * ret['se']:.1f}")
        cells += [_pct(ev.get("average")) + ("" if se is None else f" ± {100 * se:.1f}"), ret_cell]
        cells += [f"{ev['ppl'][p]['ppl']:.1f}" if ev.get("ppl") and p in ev["ppl"] else "—" for p in ppl_sets]
        lines.append("| " + " | ".join(cells) + " |")
    if tasks:
        lines.append(_rate_row("*chance*", "chance", ref["eval"], tasks, len(head)))
        lines.append(_rate_row("*majority class*", "majority", ref["eval"], tasks, len(head)))
    note = ("\n\\* informative task: the original beats max(chance, majority) by more than 2 standard errors. Retention = "
            "Σ(score − chance) / Σ(original − chance) over those tasks, ± its paired standard error (same items).\n")
    return "\n".join(lines) + "\n" + (note if tasks else "")


def retention_chart(groups: dict[str, dict[str, float]], path: str | Path, title: str) -> None:
    """Grouped bar chart. groups: {group label (e.g. '12% · healed'): {method: retention %}}.
    A dashed line marks 90%."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(m for g in groups.values() for m in g))
    x = np.arange(len(groups))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(groups) + 2), 4.2))
    for i, m in enumerate(methods):
        vals = [g.get(m, np.nan) for g in groups.values()]
        bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, label=m)
        for b, v in zip(bars, vals):
            if not np.isnan(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.5, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(90, ls="--", lw=1, color="gray")
    ax.axhline(100, lw=0.8, color="black")
    ax.set_xticks(x, list(groups))
    ax.set_ylabel("chance-normalised retention, %")
    ax.set_ylim(0, max(110, *(v for g in groups.values() for v in g.values() if v == v)) + 5)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=min(len(methods), 5), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
