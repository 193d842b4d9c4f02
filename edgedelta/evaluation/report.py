"""Human-readable views of evaluation results: a markdown table for one model, a comparison
table for several, and a bar chart of retention (% of the original's average score)."""

from __future__ import annotations

from pathlib import Path


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


def paired_difference(res: dict, other: dict) -> tuple[float, float] | None:
    """(average primary score of `res` minus `other`'s, its stderr) from per-item scores on the
    same items; None when either lacks them (results before per-item scores were kept) or the
    two were not evaluated alike."""
    from .metrics import paired_difference as paired

    if res.get("config") != other.get("config") or list(res["tasks"]) != list(other["tasks"]):
        return None
    if not res["tasks"] or any("correct" not in t for e in (res, other) for t in e["tasks"].values()):
        return None
    return paired([t["correct"] for t in res["tasks"].values()], [other["tasks"][n]["correct"] for n in res["tasks"]])


def markdown_paired(rows: list[dict]) -> str:
    """Bullets: the first DeltaLLM row minus every other method, paired on the same items
    (points of the average primary score), or "" when per-item scores are missing."""
    ours = next((r for r in rows if r["method"].startswith("deltallm")), None)
    if ours is None:
        return ""
    lines = []
    for r in rows:
        if r is ours or r["method"].startswith("deltallm") or r["method"] == "original":
            continue
        d = paired_difference(ours["eval"], r["eval"])
        if d is not None:
            diff, se = 100 * d[0], 100 * d[1]
            how = f"{abs(diff) / se:.1f} standard errors" if se else "the same difference on every item"
            lines.append(f"- {ours['method']} − {r['method']}: {diff:+.1f} ± {se:.1f} points ({how})")
    if not lines:
        return ""
    return "Paired differences of the average score, on the same items:\n\n" + "\n".join(lines) + "\n"


def retention(res: dict, reference: dict) -> float | None:
    """Average primary score as a fraction of the reference model's, over the same tasks."""
    if res.get("average") is None or not reference.get("average"):
        return None  # undefined when the reference scores 0
    return res["average"] / reference["average"]


def markdown_compare(rows: list[dict], reference_name: str = "original") -> str:
    """rows: [{"method", "params", "params_fraction", "eval": evaluate(...) result, ...}].
    One row a method: primary score per task, average, retention vs the reference, ppl."""
    ref = next((r for r in rows if r["method"] == reference_name), rows[0])
    tasks = list(ref["eval"]["tasks"])
    ppl_sets = list((ref["eval"].get("ppl") or {}))
    head = ["method", "unique params", "kept"] + tasks + ["average", "retention"] + [f"ppl {p}" for p in ppl_sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        ev = r["eval"]
        cells = [r["method"], f"{r['params'] / 1e6:.2f}M", f"{100 * r['params_fraction']:.1f}%"]
        cells += [_pct(ev["tasks"][t]["score"]) if t in ev["tasks"] else "—" for t in tasks]
        ret = retention(ev, ref["eval"])
        se = average_stderr(ev)
        cells += [_pct(ev.get("average")) + ("" if se is None else f" ± {100 * se:.1f}"), "—" if ret is None else f"{100 * ret:.1f}%"]
        cells += [f"{ev['ppl'][p]['ppl']:.1f}" if ev.get("ppl") and p in ev["ppl"] else "—" for p in ppl_sets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def retention_chart(groups: dict[str, dict[str, float]], path: str | Path, title: str) -> None:
    """Grouped bar chart. groups: {group label (e.g. '12% · healed'): {method: retention %}}.
    A dashed line marks 90% (the paper's claim at 12% fewer parameters)."""
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
    ax.set_ylabel("retention: % of original's average score")
    ax.set_ylim(0, max(110, *(v for g in groups.values() for v in g.values() if v == v)) + 5)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=min(len(methods), 5), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
