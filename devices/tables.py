"""Plain-text / Markdown tables of devices, plans and measurements (shared by the CLI and the
report). Bytes are shown in MiB below 10 GiB, else GiB."""

from __future__ import annotations

from typing import Any, Iterable

from .planner import Plan
from .profile import Device

MIB, GIB = 1 << 20, 1 << 30


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    return f"{sign}{n / GIB:.1f} GiB" if n >= 10 * GIB else f"{sign}{n / MIB:.0f} MiB" if n >= MIB else f"{sign}{n / 1024:.0f} KiB"


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def table(headers: list[str], rows: Iterable[list[Any]], markdown: bool = False) -> str:
    rows = [[str(c) for c in r] for r in rows]
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def devices_table(devs: Iterable[Device], markdown: bool = False) -> str:
    rows = [[d.name, d.display_name, d.kind, f"{d.memory_gib:g} GiB", f"{d.memory_gib - d.os_reserved_gib:g} GiB",
             f"{d.bandwidth_gbps:g} GB/s", d.cpu_cores, d.cpu_arch or "-", ",".join(d.providers), ",".join(d.dtypes)] for d in devs]
    return table(["name", "device", "kind", "memory", "for model", "bandwidth", "cores", "cpu", "providers", "dtypes"], rows, markdown)


def plans_table(plans: list[Plan], markdown: bool = False) -> str:
    """One row per (device, context); one column block per model, so original and compressed
    sit side by side."""
    models = list(dict.fromkeys(p.model for p in plans))
    by = {(p.device, p.context, p.model): p for p in plans}
    keys = list(dict.fromkeys((p.device, p.context) for p in plans))
    headers = ["device", "context", "available"]
    for m in models:
        headers += [f"{m}: peak", "margin", "verdict", "≤ tok/s"]
    rows = []
    for dev, ctx in keys:
        first = next(by[(dev, ctx, m)] for m in models if (dev, ctx, m) in by)
        row = [dev, ctx, fmt_bytes(first.available_bytes)]
        for m in models:
            p = by.get((dev, ctx, m))
            row += [fmt_bytes(p.predicted_peak_bytes), fmt_bytes(p.margin_bytes), p.verdict, fmt_rate(p.decode_ceiling_tok_s)] if p else ["-"] * 4
        rows.append(row)
    return table(headers, rows, markdown)


def plan_breakdown_table(plans: list[Plan], markdown: bool = False) -> str:
    """The terms of each prediction (one row per model and context, device-independent)."""
    seen, rows = set(), []
    for p in plans:
        if (p.model, p.context) in seen:
            continue
        seen.add((p.model, p.context))
        rows.append([p.model, p.context, fmt_bytes(p.weights_bytes), fmt_bytes(p.kv_bytes), fmt_bytes(p.activation_bytes),
                     fmt_bytes(p.overhead_bytes) + ("" if p.overhead_calibrated else " (default)"), fmt_bytes(p.predicted_peak_bytes),
                     fmt_bytes(p.bytes_read_per_token)])
    return table(["model", "context", "weights", "KV cache", "activations", "overhead", "predicted peak", "read/token"], rows, markdown)


def runs_table(runs: list[dict[str, Any]], markdown: bool = False) -> str:
    rows = [[r.get("model", ""), r["context"], r["provider"], f"{r['load_s']:.2f}", f"{r['ttft_s'] * 1000:.0f}",
             fmt_rate(r["decode_tok_s"]), fmt_bytes(r["peak_rss_bytes"]), fmt_bytes(r.get("peak_rss_decode_bytes")),
             fmt_bytes(r.get("predicted_peak_bytes")),
             (f"{r['prediction_error']:+.1%}" + (" (fit)" if r.get("calibration_point") else ""))
             if r.get("prediction_error") is not None else "-", fmt_bytes(r["kv_bytes"]),
             fmt_bytes(r.get("gpu_peak_generate_bytes"))] for r in runs]
    return table(["model", "context", "provider", "load s", "TTFT ms", "decode tok/s", "peak RSS", "decode-phase peak",
                  "predicted", "error", "KV",
                  "GPU mem"], rows, markdown)
