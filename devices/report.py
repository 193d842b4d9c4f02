"""`--report DIR`: report.md and report.html with the tables and four PNG charts
(matplotlib, Agg backend, no display needed):

  verdicts.png           model x device, coloured by verdict (fits / tight / does not fit),
                         one panel per context: the chart to read first
  memory_per_device.png  predicted peak memory per device, one bar per model (original vs
                         compressed), the memory available to the model as a red line
  context_memory.png     context length vs predicted peak per model, measured host peaks as
                         points, KV-cache bytes dashed
  host_measured.png      measured decode tokens/s and time to first token per context
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .planner import Plan
from .tables import GIB, MIB, devices_table, plan_breakdown_table, plans_table, runs_table

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_memory_per_device(plans: list[Plan], devices: list, context: int, path: Path) -> None:
    """Top: predicted peak per model (bars, log scale, labelled in MiB) and the memory available
    on the device (red line). Bottom: the same as a share of that memory (linear), where the
    original-vs-compressed gap is visible."""
    plt = _plt()
    models = list(dict.fromkeys(p.model for p in plans))
    devices = sorted(devices, key=lambda d: d.available_bytes)
    names = [d.name for d in devices]
    by = {(p.model, p.device): p for p in plans if p.context == context}
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.05 * len(names) + 2), 7.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 2]})
    w = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * w for j in range(len(names))]
        peaks = [by[(m, n)].predicted_peak_bytes if (m, n) in by else 0 for n in names]
        col = _COLORS[i % len(_COLORS)]
        bars = ax.bar(xs, [p / GIB for p in peaks], width=w, label=f"{m}", color=col)
        for rect, p in zip(bars, peaks):
            ax.annotate(f"{p / MIB:.0f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                        va="bottom", fontsize=6.5, rotation=90, xytext=(0, 2), textcoords="offset points")
        share = [100 * p / d.available_bytes for p, d in zip(peaks, devices)]
        ax2.bar(xs, share, width=w, color=col)
    for j, d in enumerate(devices):
        ax.hlines(d.available_bytes / GIB, j - 0.45, j + 0.45, colors="#d62728", linewidth=2.5,
                  label="memory available to the model" if j == 0 else None)
    ax2.axhline(100, color="#d62728", linewidth=1.5)
    ax.set_yscale("log")
    ax.set_ylabel("GiB (log scale)")
    ax.set_title(f"Predicted peak memory at context {context} (bar labels in MiB) vs memory available")
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax2.set_ylabel("% of available memory")
    ax2.set_yscale("log")
    ax2.grid(axis="y", alpha=0.3, which="both")
    ax2.set_xticks(range(len(names)))
    ax2.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


VERDICT_ORDER = ("fits", "tight", "does not fit")
VERDICT_COLORS = {"fits": "#4caf50", "tight": "#ffb300", "does not fit": "#e53935"}


def chart_verdicts(cells: dict, rows: list[str], scenarios: list[str], devices: list, path: Path,
                   changed: set | frozenset = frozenset(), title: str = "Will it run?") -> None:
    """The at-a-glance chart: one panel per scenario (e.g. a context length), a row per model
    (variant), a column per device (smallest memory first), each cell coloured by verdict and
    labelled with the margin in GiB. cells[(row, device name, scenario)] = Plan (or its dict);
    cells in `changed` (same keys) get a black frame (e.g. where compression changes the verdict)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    get = lambda p, k: p[k] if isinstance(p, dict) else getattr(p, k)  # noqa: E731
    names = [d.name for d in devices]
    fig, axes = plt.subplots(len(scenarios), 1, squeeze=False, sharex=True,
                             figsize=(4.5 + 0.62 * len(names), 1.8 + len(scenarios) * (0.3 * len(rows) + 0.4)))
    for ax, sc in zip(axes[:, 0], scenarios):
        grid = [[VERDICT_ORDER.index(get(cells[(r, n, sc)], "verdict")) for n in names] for r in rows]
        ax.imshow(grid, cmap=ListedColormap([VERDICT_COLORS[v] for v in VERDICT_ORDER]), vmin=0, vmax=2, aspect="auto")
        for i, r in enumerate(rows):
            for j, n in enumerate(names):
                ax.text(j, i, f"{get(cells[(r, n, sc)], 'margin_bytes') / GIB:+.1f}", ha="center", va="center", fontsize=7)
                if (r, n, sc) in changed:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2, ec="black"))
        ax.set_title(str(sc), fontsize=9)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{d.name} ({d.memory_gib:g} GiB)" for d in devices], rotation=35, ha="right", fontsize=7.5)
    handles = [Rectangle((0, 0), 1, 1, color=VERDICT_COLORS[v]) for v in VERDICT_ORDER]
    labels = ["fits", "tight (margin < 10%)", "does not fit"]
    if changed:
        handles.append(Rectangle((0, 0), 1, 1, fill=False, ec="black", lw=2))
        labels.append("compression changes the verdict")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{title} Cell = predicted margin in GiB", fontsize=10)
    fig.tight_layout(rect=(0, 0.025, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_context_memory(models: list[dict], host, path: Path, contexts: list[int]) -> None:
    from .planner import Calibration, ModelFacts, plan_facts

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    limit = min((m["facts"].get("max_positions") or max(contexts)) for m in models)
    top = min(max(max(contexts) * 2, 4096), limit)
    grid = sorted({int(top * k / 40) for k in range(1, 41)} | set(contexts))
    for i, m in enumerate(models):
        facts = ModelFacts(**m["facts"])
        cal = Calibration(**m["calibration"]) if m.get("calibration") else None
        col = _COLORS[i % len(_COLORS)]
        ax.plot(grid, [plan_facts(facts, host, c, calibration=cal).predicted_peak_bytes / MIB for c in grid], color=col,
                label=f"{m['name']}: predicted peak")
        ax.plot(grid, [facts.kv_buffers * facts.kv_bytes(c) / MIB for c in grid], color=col, linestyle="--", alpha=0.7,
                label=f"{m['name']}: KV cache")
        runs = m.get("runs") or []
        if runs:
            ax.scatter([r["context"] for r in runs], [r["peak_rss_bytes"] / MIB for r in runs], color=col, marker="o",
                       edgecolor="black", zorder=3, label=f"{m['name']}: measured peak RSS (host)")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("MiB")
    ax.set_title("Context length vs memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_host_measured(models: list[dict], path: Path) -> bool:
    plt = _plt()
    with_runs = [m for m in models if m.get("runs")]
    if not with_runs:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ctxs = sorted({r["context"] for m in with_runs for r in m["runs"]})
    w = 0.8 / len(with_runs)
    slow = max(r["ttft_s"] for m in with_runs for r in m["runs"]) > 10
    scale, t_unit = (1.0, "s") if slow else (1000.0, "ms")
    for i, m in enumerate(with_runs):
        by = {r["context"]: r for r in m["runs"]}
        xs = [j + (i - (len(with_runs) - 1) / 2) * w for j in range(len(ctxs))]
        col = _COLORS[i % len(_COLORS)]
        a1.bar(xs, [by[c]["decode_tok_s"] if c in by else 0 for c in ctxs], width=w, color=col, label=m["name"])
        a2.bar(xs, [by[c]["ttft_s"] * scale if c in by else 0 for c in ctxs], width=w, color=col, label=m["name"])
    for ax, title, unit in ((a1, "decode", "tokens/s"), (a2, "time to first token", t_unit)):
        ax.set_xticks(range(len(ctxs)))
        ax.set_xticklabels([str(c) for c in ctxs])
        ax.set_xlabel("context length")
        ax.set_ylabel(unit)
        ax.set_title(f"Measured on this host: {title}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def md_to_html(md: str) -> str:
    """The small Markdown subset report.md uses: #-headings, tables, images, paragraphs, lists."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not set(lines[i]) <= set("|-: "):
                    rows.append([html.escape(c.strip()) for c in lines[i].strip("|").split("|")])
                i += 1
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in rows[0]) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:]) + "</table>")
            continue
        if ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            out.append(f"<h{level}>{html.escape(ln[level:].strip())}</h{level}>")
        elif ln.startswith("![") and "](" in ln:
            alt, src = ln[2:].split("](", 1)
            out.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt.rstrip("]"))}" style="max-width:100%"></p>')
        elif ln.startswith("- "):
            out.append(f"<ul><li>{html.escape(ln[2:])}</li></ul>")
        elif ln.strip():
            out.append(f"<p>{html.escape(ln)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>edgedelta report</title><style>{style}</style></head><body>\n" + \
        "\n".join(out) + "\n</body></html>\n"


def layout_notes(models: list[dict], devices: list) -> list[str]:
    """A paragraph per artifact whose shared weights are laid out for another CPU family than
    some of the devices (export --cpu-arch; export/prepack.py)."""
    lines = []
    for m in models:
        arch = m["facts"].get("cpu_arch")
        other = [d.name for d in devices if arch and d.cpu_arch and d.cpu_arch != arch]
        if other:
            lines += [f"{m['name']} is laid out for {arch} CPUs. For {', '.join(other)}, export it with "
                      f"`--cpu-arch {'arm64' if arch == 'x86_64' else 'x86_64'}`: the same results, in the weight "
                      "layout ONNX Runtime's single-token kernel on that CPU reads without copying (on arm64 the "
                      "x86_64 layout copies each transposed weight on every call: bench/results/arm64_layout_counts.md).", ""]
    return lines


def gpu_notes(devices: list) -> list[str]:
    """A paragraph when some device is a GPU: there the bandwidth ceiling is far out of reach."""
    gpus = [d.name for d in devices if d.kind == "gpu"]
    if not gpus:
        return []
    return [f"On a GPU ({', '.join(gpus)}) a small model does not come near its decode ceiling: each decode step "
            "launches one kernel per graph node, and the launches, not the memory, set the pace "
            "(bench/results/gpu_runtime.md: SmolLM2-135M on an H200 with ONNX Runtime's CUDA provider).", ""]


def write_report(out_dir: str | Path, data: dict[str, Any], devices: list) -> Path:
    """Write report.md, report.html, the PNGs and data.json into out_dir; returns report.md's path."""
    from .host import host_device

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans: list[Plan] = data["plans"]
    ctx = max(data["contexts"])
    models = data["models"]
    chart_memory_per_device(plans, devices, ctx, out / "memory_per_device.png")
    by_size = sorted(devices, key=lambda d: (d.available_bytes, d.name))
    chart_verdicts({(p.model, p.device, f"context {p.context}"): p for p in plans}, list(dict.fromkeys(p.model for p in plans)),
                   [f"context {c}" for c in data["contexts"]], by_size, out / "verdicts.png")
    chart_context_memory(models, host_device(), out / "context_memory.png", data["contexts"])
    has_runs = chart_host_measured(models, out / "host_measured.png")
    runs = [r for m in models for r in m.get("runs") or []]
    h = data["host"]
    md = ["# edgedelta device report", "",
          f"Models: {', '.join(m['name'] + (' (compressed)' if m['compressed'] else '') for m in models)}. "
          f"Contexts: {', '.join(map(str, data['contexts']))}. Host: {h['display_name']}, {h['memory_gib']} GiB RAM, "
          f"measured copy bandwidth {h['bandwidth_gbps']} GB/s.", "",
          "## Fit and decode ceiling per device", "",
          "Predicted peak = unique weight bytes + KV cache (every layer keeps its own K/V: one buffer that "
          "GroupQueryAttention updates in place, else past + present) + activations of a "
          "full-context prefill + runtime overhead calibrated on this host. Decode ceiling = device bandwidth / bytes read "
          "per token: a weight shared by several layers is re-read by each of them, so sharing lowers memory, not this "
          "ceiling. Verdict 'tight' = margin under 10% of the prediction.", "",
          plans_table(plans, markdown=True), "", *layout_notes(models, devices), *gpu_notes(devices),
          "![verdict per model and device](verdicts.png)", "",
          "![memory per device](memory_per_device.png)", "",
          "## What the prediction is made of", "", plan_breakdown_table(plans, markdown=True), "",
          "![context length vs memory](context_memory.png)", ""]
    if has_runs:
        md += ["## Measured on this host", "",
               "Each context in a fresh process: prompt of (context - new tokens) random tokens, then greedy decode. "
               "Peak RSS is the kernel's high-water mark per phase. 'error' = predicted / measured - 1 (the planner's "
               "overhead is calibrated at the smallest context).", "", runs_table(runs, markdown=True), "",
               "![measured on this host](host_measured.png)", ""]
    md += ["## Devices", "", devices_table(devices, markdown=True), "",
           "Bandwidth sources are cited in each device file (devices/profiles/*.json)."]
    text = "\n".join(md) + "\n"
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(md_to_html(text))
    serial = {**data, "plans": [p.to_dict() for p in plans]}
    (out / "data.json").write_text(json.dumps(serial, indent=2, default=str) + "\n")
    return out / "report.md"
