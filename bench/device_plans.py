"""Benchmark: which device runs Qwen2.5-Coder 0.5B / 1.5B, at which precision, and where does
DeltaLLM compression change the answer?

For each built-in model (its architecture read from the installed GGUF's header), the
original and the compressed model (12% fewer parameters: the budget planner's parameter
arithmetic at the default recipe's starting ranks, devices/virtual.py sharing_for_budget)
are planned as virtual artifacts at fp32, int8 and int4 (the exporter's byte layout, the
embedding quantized like the rest as the exporter does today) on every device profile at
2k and 8k context (and 8k with the prompt prefilled 512 tokens at a time, `edgedelta run
--prefill-chunk 512`), with the planner's default runtime overhead (no calibration on a device).
A verdict changes when original and compressed differ in fits / tight (margin under 10% of
the prediction) / does not fit.

Writes device_plans.{json,md,png} to --out (default bench/results). No model is loaded: it
runs in seconds.

    python bench/device_plans.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.devices import all_devices  # noqa: E402
from edgedelta.devices.planner import DEFAULT_HIDDEN_FACTOR, DEFAULT_OVERHEAD_BYTES, plan_facts  # noqa: E402
from edgedelta.devices.virtual import PRECISIONS, VirtualExport, account, sharing_for_budget, virtual_facts  # noqa: E402
from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402

MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
# (context, prefill chunk): the runtime's default prefills the whole prompt in one step, whose
# per-token activations dominate at 8k; `run --prefill-chunk 512` bounds them
SCENARIOS = ((2048, None), (8192, None), (8192, 512))
TARGET = 0.88
VERDICTS = ("fits", "tight", "does not fit")
GIB = 1 << 30


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--target", type=float, default=TARGET, help="fraction of parameters the compressed model keeps")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def config_from_gguf(path: Path) -> dict:
    """The transformers-style config fields the planner needs, from a GGUF header (no tensor data
    read). The LM head is untied when the file stores output.weight (as transformers loads it)."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    f = lambda key: r.fields[f"{arch}.{key}"].contents()  # noqa: E731
    names = {t.name: t for t in r.tensors}
    return {"model_type": arch, "num_hidden_layers": int(f("block_count")), "hidden_size": int(f("embedding_length")),
            "intermediate_size": int(f("feed_forward_length")), "num_attention_heads": int(f("attention.head_count")),
            "num_key_value_heads": int(f("attention.head_count_kv")), "max_position_embeddings": int(f("context_length")),
            "vocab_size": int(names["token_embd.weight"].shape[-1]), "tie_word_embeddings": "output.weight" not in names}


def start_ranks(config: dict) -> dict[str, int]:
    """The planner's starting ranks (delta/plan.py plan_budget): the default CompressConfig's
    rank, capped at an eighth of each matrix's smaller side."""
    from edgedelta.delta.config import CompressConfig
    from edgedelta.devices.virtual import _shapes

    cfg = CompressConfig()
    kinds = {"q": "attn", "k": "attn", "v": "attn", "o": "attn", "gate": "mlp", "up": "mlp", "down": "mlp"}
    return {p: min(cfg.rank_for(p, kinds[p]), max(1, min(shape) // 8)) for p, shape in _shapes(config).items()}


def rows_for(name: str, config: dict, target: float) -> list[dict]:
    sharing, orig_params, comp_params = sharing_for_budget(config, target, start_ranks(config))
    rows = []
    for prec in PRECISIONS:
        for compressed in (False, True):
            x = VirtualExport(prec, sharing=sharing if compressed else None)
            label = f"{name} {'12% compressed' if compressed else 'original'} {prec}"
            facts = virtual_facts(config, x, name=label)
            rows.append({"model": name, "precision": prec, "compressed": compressed, "label": label,
                         "parameters": comp_params if compressed else orig_params, "facts": facts,
                         "stored_by_kind": account(config, x).stored, "sharing": sharing.__dict__ if compressed else None})
    return rows


def scenario_name(context: int, chunk: int | None) -> str:
    return f"{context // 1024}k" + (f", prefill {chunk} at a time" if chunk else "")


def chart(res: dict, path: Path, devices: list) -> None:
    """devices/report.py's verdict chart: a row per variant, a panel per scenario, the cells where
    compression changes the verdict framed."""
    from edgedelta.devices.report import chart_verdicts

    meta = {r["label"]: r for r in res["variants"]}
    row = {lab: f"{lab} ({m['facts']['weight_bytes'] / GIB:.2f} GiB)" for lab, m in meta.items()}
    cells = {(row[p["label"]], p["device"], p["scenario"]): p for p in res["plans"]}
    changed = {(row[lab], c["device"], c["scenario"]) for c in res["changes"] for lab, m in meta.items()
               if (m["model"], m["precision"]) == (c["model"], c["precision"])}
    chart_verdicts(cells, list(row.values()), res["scenarios"], devices, path, changed,
                   title="Will it run? Model (weights in GiB) x device.")


def write_md(res: dict, out: Path, devices: list) -> None:
    md = ["# Device plans for the 0.5B and 1.5B models: original vs 12% compressed", "",
          f"Virtual artifacts (devices/virtual.py: the exporter's byte layout, from each GGUF's header) planned with the "
          f"planner's default runtime overhead ({DEFAULT_OVERHEAD_BYTES >> 20} MiB, not calibrated on a device), KV cache "
          f"fp32 in one in-place buffer, the per-token activations of a prefill (the planner's default factor, "
          f"{DEFAULT_HIDDEN_FACTOR:g}) of the whole context or of one chunk, the LM head on the last position. Compressed: the planner's parameter "
          "arithmetic for 12% fewer parameters. Written by bench/device_plans.py.", "",
          "## The variants", "", "| variant | parameters | weights stored | read per token |", "|---|---|---|---|"]
    for r in res["variants"]:
        md.append(f"| {r['label']} | {r['parameters'] / 1e6:,.0f}M | {r['facts']['weight_bytes'] / GIB:.2f} GiB | "
                  f"{r['facts']['weight_bytes_read_per_token'] / GIB:.2f} GiB |")
    sh = {r["model"]: r["sharing"] for r in res["variants"] if r["sharing"]}
    md += ["", "Sharing plans: " + "; ".join(f"{m}: {s['groups']} pairs, ranks "
                                            + ", ".join(f"{k}={v}" for k, v in s["ranks"].items()) for m, s in sh.items()), ""]
    md += ["## Where compression changes the verdict", "",
           "| model | precision | device | context | original | compressed | margin original → compressed |",
           "|---|---|---|---|---|---|---|"]
    for c in res["changes"]:
        md.append(f"| {c['model']} | {c['precision']} | {c['device']} | {c['scenario']} | {c['original']} | {c['compressed']} | "
                  f"{c['margin_original'] / GIB:+.2f} → {c['margin_compressed'] / GIB:+.2f} GiB |")
    if not res["changes"]:
        md.append("| (none) | | | | | | |")
    md += ["", "![verdicts](device_plans.png)", "", "## Every plan", "",
           "| variant | context | " + " | ".join(d.name for d in devices) + " |", "|---|---|" + "---|" * len(devices)]
    by = {(p["label"], p["device"], p["scenario"]): p for p in res["plans"]}
    short = {"fits": "fits", "tight": "tight", "does not fit": "no"}
    for r in res["variants"]:
        for ctx, chunk in SCENARIOS:
            sc = scenario_name(ctx, chunk)
            cells = [f"{short[by[(r['label'], d.name, sc)]['verdict']]} {by[(r['label'], d.name, sc)]['decode_ceiling_tok_s']:.0f}/s"
                     for d in devices]
            md.append(f"| {r['label']} | {sc} | " + " | ".join(cells) + " |")
    md += ["", "Cells: verdict and the decode ceiling (device bandwidth / bytes read per token; sharing does not lower "
           "it: a shared base is re-read by every layer that uses it)."]
    write_text_atomic(out / "device_plans.md", "\n".join(md) + "\n")


def main() -> None:
    args = parse_args()
    from edgedelta.models.install import gguf_path, require_installed
    from edgedelta.models.registry import get_builtin

    devices = sorted(all_devices().values(), key=lambda d: (d.available_bytes, d.name))
    variants, plans = [], []
    for name in args.models.split(","):
        m = get_builtin(name)
        require_installed(m)
        config = config_from_gguf(gguf_path(m))
        for r in rows_for(name, config, args.target):
            r["config"] = config
            variants.append(r)
            for d in devices:
                for ctx, chunk in SCENARIOS:
                    p = plan_facts(r["facts"], d, ctx, prefill_chunk=chunk)
                    plans.append({**p.to_dict(), "label": r["label"], "model": name, "precision": r["precision"],
                                  "compressed": r["compressed"], "prefill_chunk": chunk, "scenario": scenario_name(ctx, chunk)})
    by = {(p["model"], p["precision"], p["compressed"], p["device"], p["scenario"]): p for p in plans}
    changes = []
    for (model, prec, comp, dev, sc), p in by.items():
        if comp:
            continue
        q = by[(model, prec, True, dev, sc)]
        if p["verdict"] != q["verdict"]:
            changes.append({"model": model, "precision": prec, "device": dev, "scenario": sc, "original": p["verdict"],
                            "compressed": q["verdict"], "margin_original": p["margin_bytes"], "margin_compressed": q["margin_bytes"]})
    for r in variants:
        r["facts"] = r["facts"].__dict__.copy()
    res = {"target_params": args.target, "scenarios": [scenario_name(c, k) for c, k in SCENARIOS], "overhead_bytes": DEFAULT_OVERHEAD_BYTES,
           "devices": [d.to_dict() for d in devices], "variants": variants, "plans": plans, "changes": changes}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "device_plans.json", res)
    write_md(res, out, devices)
    chart(res, out / "device_plans.png", devices)
    print(f"{len(plans)} plans, {len(changes)} verdicts changed by compression; wrote {out}/device_plans.{{json,md,png}}")


if __name__ == "__main__":
    main()
