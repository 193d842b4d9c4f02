"""docs/RESULTS.md, and the status table in README.md, from the JSON files the benchmarks
wrote in bench/results/.

Every number in RESULTS.md comes from one of those files, through a small section function
per file: nothing is typed by hand. A missing file gives a one-line "not measured" entry, so
the document can be regenerated at any time. To add a result: write a function
`section(data) -> list[str]` of markdown lines and add (title, file, function) to SECTIONS.

  python bench/summarize.py            # rewrite docs/RESULTS.md
  python bench/summarize.py --check    # exit 1 if docs/RESULTS.md differs from what the files give
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # last: only an installed edgedelta has export, runtime, devices
sys.path.append(str(ROOT / "bench"))  # peers.py: how its ratios are taken (stdlib only)

from edgedelta.evaluation.report import markdown_compare, markdown_paired  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "RESULTS.md"


def _yes(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def pipeline_quick(d: dict) -> list[str]:
    """The product target: `pipeline --quick` against ShortGPT removal at the same budget."""
    v, t = d["verdict"], d["timing"]
    lines = [f"Recipe `{d['recipe']}` on {d['model']}, {d['distill_tokens']:,} distillation tokens; removal healed with the "
             f"`removal` recipe on as many tokens. Machine: {d['machine']}.", "",
             markdown_compare(d["rows"]), "",
             "| criterion | result |", "|---|---|",
             "| held-out perplexity no worse than removal (every text) | " + _yes(v["ppl_no_worse"]) + " — "
             + "; ".join(f"{k}: {p['compressed']:.2f} vs {p['removal']:.2f}" for k, p in v["ppl"].items()) + " |"]
    if v["tasks_paired_diff"] is not None:
        lines.append(f"| tasks no worse, paired on the same items ({', '.join(v['informative_tasks'])}) | "
                     f"{_yes(v['tasks_no_worse'])} — {100 * v['tasks_paired_diff']:+.1f} ± {100 * v['tasks_paired_se']:.1f} points |")
    lines.append(f"| ≤ 15 min on 2 cores | {_yes(t['wall_s'] <= 900)} — {t['wall_s'] / 60:.1f} min wall, {t['cpu_s'] / 60:.1f} min CPU "
                 "(the machine was shared with other work: wall time inflated) |")
    return lines


def quality(d: dict) -> list[str]:
    """bench/quality.py: every method at one or more budgets, before and after healing."""
    lines = [f"Model {d['model']}; {d['eval_text']}.", "", _quality_coverage(d), ""]
    orig = d["original"]
    for b in d["budgets"]:
        for stage in ("built", "healed"):
            sel = [r for r in b["rows"] if r["stage"] == stage and "eval" in r]
            if not sel:
                continue
            lines += [f"**{100 * (1 - b['target']):.0f}% fewer unique parameters, {'healed' if stage == 'healed' else 'no healing'}**",
                      ""]
            if stage == "healed":
                lines += [_healing(sel), ""]
            lines += [markdown_compare([orig] + sel), markdown_paired(sel, orig), ""]
    return lines


def _healing(rows: list[dict]) -> str:
    """One line: how the healed rows were healed (recipe where recorded, lr, batch, tokens)."""
    heals = [r["heal"] for r in rows if "heal" in r]
    how = sorted({(h.get("recipe"), h.get("lr"), h.get("batch")) for h in heals}, key=str)
    tokens = sorted({h["tokens"] for h in heals})
    return ("Healing: " + "; ".join((f"recipe {rc}, " if rc else "") + f"lr {lr}, batch {bs}" for rc, lr, bs in how)
            + f"; {', '.join(f'{t:,}' for t in tokens)} tokens.")


def _quality_coverage(d: dict) -> str:
    """One line: which budget × stage × method rows the file holds, of those its runs asked for."""
    runs = d.get("runs", [d["args"]])
    asked = sorted({float(t) for r in runs for t in str(r["budgets"]).split(",")}, reverse=True)
    methods = list(dict.fromkeys(m for r in runs for m in str(r["methods"]).split(",")))
    by_target = {b["target"]: b["rows"] for b in d["budgets"]}
    parts = []
    for t in asked:
        for stage, name in (("built", "no healing"), ("healed", "healed")):
            have = [r["method"] for r in by_target.get(t, []) if r["stage"] == stage and "eval" in r]
            missing = [m for m in methods if m not in have]
            parts.append(f"{100 * (1 - t):.0f}% fewer, {name}: "
                         + (f"{len(have)} of {len(methods)} methods" if have else "not measured")
                         + (f" (not yet: {', '.join(missing)})" if have and missing else ""))
    return "Rows in this file: " + "; ".join(parts) + "."


def recovery(d: dict) -> list[str]:
    """bench/recovery.py: perplexity after distillation, per arm, against the teacher."""
    teacher = next(p for p in d["points"] if p["arm"] == "teacher")
    texts = list(d["meta"]["eval_texts"])
    lines = ["| arm | tokens | " + " | ".join(f"ppl {t}" for t in texts) + " | " + " | ".join(f"× teacher {t}" for t in texts) + " |",
             "|---|---:|" + "---:|" * (2 * len(texts))]
    last: dict[str, dict] = {}
    for p in d["points"]:
        last[p["arm"]] = p
    for arm, p in last.items():
        lines.append(f"| {arm} | {p['tokens']:,} | " + " | ".join(f"{p[t]['ppl']:.2f}" for t in texts) + " | "
                     + " | ".join(f"{p[t]['ppl'] / teacher[t]['ppl']:.3f}" for t in texts) + " |")
    what = {a: v.get("what", "") for a, v in d["arms"].items() if a not in ("init",) and not a.startswith("recon")}
    return lines + [""] + [f"- {a}: {w}" for a, w in what.items() if w]


def drop_sweep(d: dict) -> list[str]:
    """bench/compress_init.py --drop sweep: untrained perplexity by layers removed first."""
    texts = list(d["eval_texts"])
    lines = []
    for target, b in d["budgets"].items():
        lines += [f"Keep {float(target):.0%}, untrained; original: " + ", ".join(f"{t} {d['original']['ppl'][t]:.2f}" for t in texts), "",
                  "| variant | unique params | " + " | ".join(f"ppl {t}" for t in texts) + " |", "|---|---:|" + "---:|" * len(texts)]
        lines += [f"| {name} | {r['params']:,} | " + " | ".join(f"{r['ppl'][t]:.2f}" for t in texts) + " |" for name, r in b["rows"].items()]
    return lines


def runtime(d: dict) -> list[str]:
    """bench/runtime.py: decode speed ratios from interleaved rounds on the same machine."""
    r = d["speed"]["ratios"]
    lines = ["| ratio (decode tok/s, same rounds) | median of round ratios |", "|---|---:|"]
    lines += [f"| {k} | {v['median_of_round_ratios']:.2f} |" for k, v in r.items()]
    inter = d["speed"].get("compressed_over_original_interleaved")
    if inter:
        lines.append(f"| compressed/original, interleaved in one process | {inter['ratio']:.3f} |")
    runs = _planner_runs(d)
    if runs:
        lines += ["", "The device planner's predicted peak RSS against the measured one (each context a fresh process; "
                  "the runtime's overhead and per-token factor fitted on the contexts marked fit):", "",
                  "| model | context | measured MiB | predicted MiB | error |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['context']} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['predicted_peak_bytes'] / 2**20:.0f} "
                  f"| {r['prediction_error']:+.1%}{' (fit)' if r['calibration_point'] else ''} |" for r in runs]
    return lines


def _planner_runs(d: dict) -> list[dict]:
    """bench/runtime.py's memory runs, each with the planner's prediction."""
    return [r for m in ((d.get("memory") or {}).get("assess") or {}).get("models", []) for r in m.get("runs", [])
            if "predicted_peak_bytes" in r]


def delta_cost(d: dict) -> list[str]:
    """bench/delta_cost.py: what the delta branches and scales cost a decode step."""
    lines = ["| variant | threads | time ratio to the artifact |", "|---|---:|---:|"]
    lines += [f"| {r['variant']} | {r['threads']} | {r['ratio']:.3f} |" for r in d["runs"]]
    return lines


def quant_quality(d: dict) -> list[str]:
    """bench/quant_quality.py: held-out perplexity of each quantization against the float model."""
    lines = []
    for name, m in d["models"].items():
        lines += [f"{name}: float mean perplexity {m['float']['mean']:.3f} ({', '.join(d['eval_texts'])})", "",
                  "| bits | zero points | method | block | projections quantized | embedding quantized | ratio to float |",
                  "|---|---|---|---:|---|---|---:|"]
        lines += [f"| {r['quantize']} | {'none (symmetric)' if r.get('symmetric') else 'uint'} | {r['method']} | {r['block']} | "
                  f"{'yes' if r.get('projections_quantized', True) else 'no'} | {'yes' if r['embedding_quantized'] else 'no'} | "
                  f"{r['ppl_ratio']:.3f} |" for r in m["rows"]]
        lines.append("")
    return lines


def peers(d: dict) -> list[str]:
    """bench/peers.py: the issue's targets against onnxruntime-genai and llama.cpp, each met or missed."""
    lines = ["| target | measured | wanted | met |", "|---|---:|---:|---|"]
    for t in d.get("targets") or []:
        got = t.get("value")
        lines.append(f"| {t['target']} | {'-' if got is None else f'{got:.3f}'} | {t['op']} {t['threshold']} | "
                     f"{'yes' if t.get('met') else ('not measured' if got is None else 'no')} |")
    lines += ["", "Contenders, speeds and sizes: [bench/results/peers.md](../bench/results/peers.md)."]
    from peers_build import COMPRESSED

    qs = {model: (name, _load(name, RESULTS)) for model, name in (("original", "quant_sensitivity.json"),
                                                                   ("compressed", f"quant_sensitivity_{COMPRESSED.name}.json"))}
    why = _peer_misses(d, _load("zero_points.json", RESULTS), _load("quant_quality.json", RESULTS), qs)
    return lines + (["", "Where the missed targets lose, from the same files:", "", *why] if why else [])


def _export_of(d: dict, label: str) -> dict:
    """What the exporter did for an edgedelta contender of peers.json (its exports entry: the
    export config with symmetric resolved, the symmetric choice); {} for a peer."""
    path = (d["contenders"].get(label) or {}).get("path")
    return (d.get("exports") or {}).get(Path(path).name, {}) if path else {}


def _symmetric_of(d: dict, label: str) -> bool | None:
    """Whether a contender's export took symmetric blocks (None: a peer, unquantized, or float
    zero points: symmetric codes with offset tables, a form of their own)."""
    cfg = _export_of(d, label).get("export_config") or {}
    return None if cfg.get("float_zero_points") else cfg.get("symmetric")


def _int4_rows(d: dict, model: str, forms: tuple[bool, ...], exclude: tuple[str, ...], measured: str = "rounds") -> list[str]:
    """edgedelta int4 contenders of `model` whose export's symmetric value is one of `forms`,
    measured in d[measured] (rounds or summary)."""
    return [c for c in d["contenders"] if c not in exclude and c in d[measured] and "int4" in c
            and d["contenders"][c].get("model") == model and _symmetric_of(d, c) in forms]


def _decode_vs(d: dict, num: str, other: str) -> float:
    """`num`'s decode speed over `other`'s: the median of their same-round ratios."""
    from peers import METRICS, round_ratios

    return statistics.median(round_ratios(d["rounds"], num, other, METRICS["decode"][0]))


def _zero_point_note(d: dict, num: str, den: str, zp: dict | None) -> str:
    """For an int4 decode miss: which zero-point form the export took and why, the other form
    of the same model measured beside it, and (for the zero-point form) zero_points.py's A/B."""
    sym = _symmetric_of(d, num)
    rejected = (_export_of(d, num).get("symmetric_choice") or {}).get("rejected") or []
    if sym:
        note = "; exported with symmetric blocks (no zero points)"
    elif rejected:
        g = rejected[0]["quality_gate"]
        note = (f"; exported with uint zero points because its symmetric form missed the quality gate (perplexity ratio "
                f"{g['ppl_ratio']:.3f}, argmax agreement {g['agreement']:.3f}; thresholds {g['thresholds']['max_ppl_ratio']}, "
                f"{g['thresholds']['min_agreement']})")
    else:
        note = "; exported with uint zero points"
    other = _int4_rows(d, d["contenders"][num].get("model"), tuple({True, False} - {sym}), (num,))
    if other:
        c = other[0]
        sr = _decode_vs(d, c, den)
        note += (f"; the {'zero-point' if sym else 'symmetric'} export of the same model ({c}) decodes at {sr:.3f}x here with "
                 f"perplexity {d['summary'][c]['ppl']:.3f} against {d['summary'][num]['ppl']:.3f} (genai int4: "
                 f"{d['summary'][den]['ppl']:.3f})")
    den_sym = _symmetric_of(d, den)
    if den_sym is not None and den_sym != sym:  # an edgedelta denominator in the other form: compare like with like
        like = _int4_rows(d, d["contenders"][den].get("model"), (sym,), (num, den))
        if like:
            r = _decode_vs(d, num, like[0])
            note += (f"; {den} took {'symmetric blocks' if den_sym else 'uint zero points'}: against the same model's "
                     f"{'symmetric' if sym else 'zero-point'} export ({like[0]}) the ratio is {r:.3f}")
    if not sym and (zp or {}).get("decode"):
        ab = zp["decode"]
        note += (f"; in one process, alternating, symmetric int4 decodes {ab['uint4_over_none']:.3f}x as fast as "
                 f"uint4 zero points (quartiles {ab['uint4_over_none_quartiles'][0]:.3f}-"
                 f"{ab['uint4_over_none_quartiles'][1]:.3f}, zero_points.json)")
    return note


def _peer_misses(d: dict, zp: dict | None, qq: dict | None = None, qs: dict[str, tuple[str, dict | None]] | None = None) -> list[str]:
    """One line per missed target of peers.json, with the measurements that locate the loss:
    per-round ratios, memory beside the weights, the kernel and rounding facts of
    bench/zero_points.py (zp), bench/quant_quality.py's head-only rows (qq) and
    bench/quant_sensitivity.py's parts at 8 bits (qs: per contender model, "original" or
    "compressed", its file name and contents); None when absent."""
    from peers import METRICS, round_ratios

    kernel = {(k["m"], k["zero_points"], k["accuracy_level"]): k["us"] for k in (zp or {}).get("kernels", [])}
    out = []
    for t in d.get("targets") or []:
        if t.get("met") or t.get("value") is None:
            continue
        num, den, metric = t["numerator"], t["denominator"], t["metric"]
        why = None
        if METRICS[metric][0] is not None:  # a speed: the same-round ratios its target's median is taken from
            rr = round_ratios(d["rounds"], num, den, METRICS[metric][0])
            why = f"per-round ratios {', '.join(f'{x:.3f}' for x in rr)}"
            if metric == "decode" and "int4" in num:
                why += _zero_point_note(d, num, den, zp)
            if metric == "prefill512" and "int4" in num and (512, "uint4", 0) in kernel:
                why += (f"; MatMulNBits at M=512 takes {kernel[(512, 'uint4', 4)] / kernel[(512, 'uint4', 0)]:.2f}x the time at "
                        f"accuracy level 4 (the int4 default) as at level 0, while at M=1 (decode) level 0 takes "
                        f"{kernel[(1, 'uint4', 0)] / kernel[(1, 'uint4', 4)]:.2f}x level 4's (zero_points.json)")
        elif metric == "rss":
            sn, sd = d["summary"][num], d["summary"][den]
            imp = {n: sum(r["rss_after_import_mib"] for r in d["rounds"][n]) / len(d["rounds"][n]) for n in (num, den)}
            why = (f"peak RSS beside the weight file: {sn['peak_rss_mib'] - sn['file_mib']:.0f} MiB against "
                   f"{sd['peak_rss_mib'] - sd['file_mib']:.0f} MiB (of which the process after importing its runtime: "
                   f"{imp[num]:.0f} against {imp[den]:.0f} MiB); the weights save {sd['file_mib'] - sn['file_mib']:.1f} MiB")
        elif metric == "ppl" and zp and "int4" in num and d["contenders"][num].get("model") == "original":
            w = zp["weights"]
            why = (f"the float model is the GGUF's Q4_1 blocks dequantised ({w['blocks_on_q4_1_grid']:,} of {w['blocks']:,} blocks "
                   f"on that grid); MatMulNBits' uint4 zero points re-round them (relative weight error "
                   f"{w['rel_err_uint4_zp']:.4f} at RTN); MatMulNBits' own float zero points would hold them exactly but run "
                   f"{kernel[(1, 'float', 4)] / kernel[(1, 'uint4', 4)]:.0f}x slower at one token (zero_points.json)")
            head = {r["quantize"]: r["ppl_ratio"] for r in ((qq or {}).get("models", {}).get("original", {}).get("rows", []))
                    if r.get("projections_quantized") is False and r["method"] == "rtn"}
            if head:
                why += ("; with every projection kept float (its Q4_1 blocks exact) and only the tied embedding / LM head "
                        "quantized (RTN), perplexity is " + ", ".join(f"{v:.3f}x float at {k}" for k, v in sorted(head.items()))
                        + " (quant_quality.json)")
            if _symmetric_of(d, num):
                zp_rows = _int4_rows(d, "original", (False,), (num,), measured="summary")
                why += "; this export took symmetric blocks (no zero points: they passed its quality gate)"
                if zp_rows:
                    why += f", whose grid is coarser still: the zero-point export ({zp_rows[0]}) has perplexity {d['summary'][zp_rows[0]]['ppl']:.3f}"
            if den.startswith("llama"):
                why += f"; llama.cpp runs the blocks as shipped: perplexity {d['summary'][den]['ppl']:.3f}"
            why += "".join(_ab_note(d, num, key, words) for key, words in AB_OPTIONS)
            why += _sensitivity_note(d, num, *(qs or {}).get("original", ("", None)))
            why += _float_zp_note(d, num, den) + _exact_block_note(d, num)
        elif metric == "ppl" and "int4" in num:
            own = (qs or {}).get(d["contenders"][num].get("model"), ("", None))
            ab = "".join(_ab_note(d, num, key, words) for key, words in AB_OPTIONS)
            why = (ab + _sensitivity_note(d, num, *own) + _float_zp_note(d, num, den)).removeprefix("; ") or None
        if why:
            out.append(f"- {t['target']} ({t['value']:.3f}): {why}.")
    return out


# export options with an A/B pair of the same model in peers.json: (ExportConfig field, what its value means)
AB_OPTIONS = (("value_bits", "the value projection at {} bits"), ("embedding_block_size", "the embedding table / LM head in blocks of {}"),
              ("tune_steps", "{} steps of block-scale tuning"))


def _ab_partner(d: dict, num: str, key: str) -> str | None:
    """The contender measured in the same run whose export is of the same model and differs
    from `num`'s only in ExportConfig field `key` (another value, not absent), run with the same
    session options; None when there is none."""
    mine = _export_of(d, num).get("export_config") or {}
    rest = {k: v for k, v in mine.items() if k != key}
    for c in d["contenders"]:
        cfg = _export_of(d, c).get("export_config") or {}
        if (c != num and c in d["summary"] and c in d.get("rounds", {}) and mine.get(key) is not None
                and d["contenders"][c].get("model") == d["contenders"][num].get("model")
                and d["contenders"][c].get("session") == d["contenders"][num].get("session")
                and cfg.get(key) not in (None, mine[key]) and {k: v for k, v in cfg.items() if k != key} == rest):
            return c
    return None


def _ab_note(d: dict, num: str, key: str, words: str) -> str:
    """`num`'s A/B partner in ExportConfig field `key` (_ab_partner): its perplexity and `num`'s
    decode against it; "" when there is none."""
    c = _ab_partner(d, num, key)
    if c is None:
        return ""
    mine, theirs = (_export_of(d, x)["export_config"][key] for x in (num, c))
    dec = _decode_vs(d, num, c)
    return (f"; with {words.format(mine)} (this export) against {theirs} ({c}): perplexity "
            f"{d['summary'][num]['ppl']:.3f} against {d['summary'][c]['ppl']:.3f}, decode {dec:.3f}x")


def _sensitivity_note(d: dict, num: str, source: str, qs: dict | None) -> str:
    """What bench/quant_sensitivity.py found (file `source`, contents `qs`) for the int4 form `num`
    was exported in (the same blocks, bits of v and zero-point form; "" for another form or no file)."""
    cfg = _export_of(d, num).get("export_config") or {}
    same_form = (cfg.get("quantize") == "int4" and cfg.get("embedding_bits") in (None, 4) and not cfg.get("float_zero_points")
                 and all(cfg.get(k) == qs["export"].get(k) for k in ("block_size", "embedding_block_size", "value_bits", "symmetric"))
                 if qs else False)
    if not same_form:
        return ""
    p = _sensitivity_parts(qs)
    return (f"; this int4 form's error is spread over the model: in PyTorch ({p['default']['ratio']:.3f}x float there), one "
            f"part at a time at 8 bits gives at best {p['kind']['ratio']:.3f}x ({_part_name(p['kind'])}, "
            f"+{p['kind']['added_mib']:.1f} MiB) and {p['layer']['ratio']:.3f}x for the best single layer, against "
            f"{p['all']['ratio']:.4f}x with every weight at 8 bits ({source})")


def _float_zp_note(d: dict, num: str, den: str) -> str:
    """The same model's float-zero-point exports (ExportConfig.float_zero_points) measured in the
    same run: their perplexity against `den`'s and their decode against onnxruntime-genai int4's."""
    from peers import METRICS, round_ratios

    model = d["contenders"][num].get("model")
    genai = (d.get("roles") or {}).get("genai-int4")
    parts = []
    for c in d["contenders"]:
        cfg = _export_of(d, c).get("export_config") or {}
        if c not in d["summary"] or d["contenders"][c].get("model") != model or not cfg.get("float_zero_points"):
            continue
        dec = round_ratios(d["rounds"], c, genai, METRICS["decode"][0]) if genai in d.get("rounds", {}) else []
        parts.append(f"{c} (embedding {cfg.get('embedding_bits') or 4}-bit): perplexity "
                     f"{d['summary'][c]['ppl'] / d['summary'][den]['ppl']:.3f}x {den}'s"
                     + (f", decode {statistics.median(dec):.3f}x genai int4" if dec else "")
                     + f", file {d['summary'][c]['file_mib']:.1f} MiB")
    if not parts:
        return ""
    return ("; the export's float zero points (symmetric codes plus an 8-bit per-block offset table read on the input's "
            "block sums), measured in this run: " + "; ".join(parts))


def _exact_block_note(d: dict, num: str) -> str:
    """Why no export of the Q4_1 blocks' width can meet `num`'s decode target: the same model's
    symmetric int4 export in those blocks (no offset table, the cheapest form of that width)
    against onnxruntime-genai int4 in the same run; "" without such an export or target."""
    from zero_points import BLOCK

    genai = (d.get("roles") or {}).get("genai-int4")
    target = next((t for t in d.get("targets") or [] if t["metric"] == "decode" and t["numerator"] == num
                   and t["denominator"] == genai), None)
    model = d["contenders"][num].get("model")
    for c in d["contenders"]:
        cfg = _export_of(d, c).get("export_config") or {}
        if (target and c in d.get("rounds", {}) and genai in d.get("rounds", {}) and d["contenders"][c].get("model") == model
                and cfg.get("quantize") == "int4" and cfg.get("block_size") == BLOCK and cfg.get("symmetric")
                and not cfg.get("float_zero_points")):
            dec = _decode_vs(d, c, genai)
            return (f"; holding the Q4_1 blocks needs blocks of {BLOCK}, and in blocks of {BLOCK} even symmetric codes with no "
                    f"offset table ({c}) decode at {dec:.3f}x genai int4 in this run, against the {target['threshold']:.2f}x "
                    f"this export's decode target asks")
    return ""


def genai_compat(d: dict) -> list[str]:
    """bench/genai_compat.py: onnxruntime-genai on edgedelta artifacts, greedy tokens against edgedelta.runtime."""
    lines = ["| artifact | quantize | loads in onnxruntime-genai | identical greedy prompts |", "|---|---|---|---:|"]
    from genai_compat import quantize_label

    lines += [f"| {r['artifact']} | {quantize_label(r['export_config'])} | {'yes' if r['loaded'] else 'no'} | "
              f"{r.get('identical', '-')}/{r.get('prompts', '-')} |" for r in d["rows"]]
    return lines


def targets_table(targets: list[dict]) -> list[str]:
    """A benchmark's targets (dicts: target, measured, met, note) as a markdown table."""
    lines = ["| target | measured | result | note |", "|---|---:|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['measured']} | {_yes(t['met'])} | {t.get('note', '')} |")
    return lines


def serve(d: dict) -> list[str]:
    """bench/serve.py: the server under 1, 4 and 16 clients, batching off, llama-server, the soak."""
    lines = [f"{d['model']} ({d.get('artifact_form', 'fp32')} artifact), `{d['command']}`; llama.cpp: {d['llama_cpp']}. "
             "Latency percentiles leave out each "
             "client's first request (the start burst: its slowest first token is the last column).", "",
             "| server | clients | failed | tokens/s | TTFT p50 (s) | TTFT p99 (s) | start burst TTFT max (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for server, rows in d["levels"].items():
        for r in rows:
            lines.append(f"| {server} | {r['clients']} | {r['failed']} | {r['tokens_per_s']:.1f} | {r['ttft_p50_s']} | "
                         f"{r['ttft_p99_s']} | {r.get('ttft_start_burst_max_s', '-')} |")
    vs = _server_ratios(d)
    if vs:
        lines += ["", "edgedelta batched / llama.cpp, aggregate tokens/s: " + ", ".join(f"{c} clients {x:.2f}×" for c, x in vs.items())
                  + "; per-token p50 at 4 clients / 1 client: " + ", ".join(
                      f"{srv} {r4 / r1:.2f}×" for srv, (r1, r4) in _per_token_growth(d).items()) + "."]
    soak = d.get("soak")
    lines += [""] + (["Soak: not run."] if not soak else
                     [f"Soak: 4 clients for {soak['seconds']:.0f} s, {soak['requests']} requests, {soak['failed']} failed, "
                      f"RSS {soak['rss_start_mib']:.1f} → {soak['rss_end_mib']:.1f} MiB ({soak['rss_drift_pct']:+.2f}%)."])
    lines += [""] + targets_table(d["targets"])
    return lines + ([""] + [f"- {n}" for n in d["notes"]] if d.get("notes") else [])


def _server_ratios(d: dict) -> dict[int, float]:
    """Aggregate tokens/s of edgedelta's batched server over llama-server's, per client count."""
    ours = {r["clients"]: r["tokens_per_s"] for r in d["levels"].get("edgedelta batched", [])}
    llama = {r["clients"]: r["tokens_per_s"] for r in d["levels"].get("llama.cpp", [])}
    return {c: ours[c] / llama[c] for c in ours if llama.get(c)}


def _per_token_growth(d: dict) -> dict[str, tuple[float, float]]:
    """Per-token p50 (s) at 1 and 4 clients, for each server that ran both (batching off aside)."""
    out = {}
    for srv, rows in d["levels"].items():
        by = {r["clients"]: r.get("tpot_p50_s") for r in rows}
        if by.get(1) and by.get(4) and srv != "edgedelta --max-batch 1":
            out[srv] = (by[1], by[4])
    return out


def stages(d: dict) -> list[str]:
    """bench/stages.py: every stage on one model, wall time and the stage's own peak RSS."""
    lines = [f"Model {d['model']}; host {d['host']}; `{d['command']}`.", "",
             "| stage | exit | wall (min) | peak RSS (GiB) | code |", "|---|---:|---:|---:|---|"]
    for r in d["stages"]:
        lines.append(f"| {r['stage']} | {r['exit_code']} | {r['wall_s'] / 60:.1f} | {r['peak_rss_gib']:.2f} | {r.get('commit', '')} |")
    for sk in d["skipped"]:
        lines.append(f"| {sk['stage']} | skipped ({sk['why']}) | | | |")
    reruns = (["Reruns, in order (a row keeps the last measurement of it that finished):",
               *[f"- `{c}`" for c in d["reruns"]]] if d.get("reruns") else [])
    notes = ["Notes:", *[f"- {n}" for n in d["notes"]], ""] if d.get("notes") else []
    inside = [*pipeline_lines(d["pipeline"]), ""] if d.get("pipeline") else []
    # each block followed by a blank line
    inside_exports = [line for block in (export_lines(d.get("exports") or {}), peak_lines(d, "../bench/results/")) if block
                      for line in (*block, "")]
    return lines + [""] + reruns + ([""] if reruns else []) + notes + inside_exports + inside + targets_table(d["targets"])


def pipeline_lines(p: dict) -> list[str]:
    """The pipeline stage's own breakdown (bench/stages.py's report and RESULTS.md)."""
    lines = ["Inside the pipeline stage (its stages.json):", "", "| pipeline stage | wall (min) |", "|---|---:|"]
    lines += [f"| {r['stage']} | {r['seconds'] / 60:.1f} |" for r in p["stages"]]
    if p.get("distill"):
        d = p["distill"]
        lines += ["", f"Distillation: {d['tokens']:,} tokens at {d['tokens_per_s']} tokens/s, final loss {d['final_loss']:.4g}."]
    if p.get("quality"):
        texts = sorted({t for q in p["quality"].values() for t in (q.get("ppl") or {})})
        lines += ["", "| model | task average | " + " | ".join(f"ppl {t}" for t in texts) + " |",
                  "|---|---:|" + "---:|" * len(texts)]
        for name, q in p["quality"].items():
            avg = q.get("average")
            lines.append(f"| {name} | {'' if avg is None else f'{avg:.4f}'} | "
                         + " | ".join(f"{(q.get('ppl') or {}).get(t, float('nan')):.2f}" for t in texts) + " |")
    return lines


def peak_lines(res: dict, chart_dir: str = "") -> list[str]:
    """Where each sampled stage's memory peaks (bench/stages.py's report and RESULTS.md)."""
    peaks = [(r["stage"], r["rss_timeline"]) for r in res["stages"] if r.get("rss_timeline")]
    if not peaks:
        return []
    chart = f"; chart: [{res['rss_chart']}]({chart_dir}{res['rss_chart']})" if res.get("rss_chart") else ""
    return [f"Where the memory peaks (RSS of the stage's process tree, sampled every second{chart}):",
            *[f"- {st}: {tl['peak_gib']:.2f} GiB at {tl['peak_at_s']:.0f} s, after the log line `{tl['log_before_peak']}`"
              for st, tl in peaks]]


def export_lines(exports: dict[str, dict]) -> list[str]:
    """One line per export stage with its phases in seconds (bench/stages.py's report and
    RESULTS.md); a manifest without phases gives no line."""
    lines = []
    for stage, e in exports.items():
        t = e.get("timing_s") or {}
        if "phases" not in t:
            continue
        ph = t["phases"]
        parts = [f"load {t['load']:.0f}", f"graph {ph['graph']:.0f} (calibration passes {t['calibration_passes']:.0f})"]
        parts += [f"{k.replace('_', ' ')} {ph[k]:.0f}" for k in ("write", "check", "parity", "quality_gate") if k in ph]
        lines.append(f"- {stage}: " + ", ".join(parts) + f"; total {t['total']:.0f} s (the artifact's manifest)")
    return (["Inside the export stages (seconds):", *lines] if lines else [])


def release_pages(d: dict) -> list[str]:
    """bench/release_pages.py: RSS with the mapped weight file's pages kept and released after load."""
    names = {"rss_after_load_mib": "RSS after load", "rss_peak_decode_mib": "peak RSS after decode",
             "rss_peak_all_mib": "peak RSS after the 512-token prefill"}
    lines = [f"{d['rounds']} round(s), fresh processes, {d['threads']} threads; ratio = released / kept (same round).", "",
             "| artifact | measure | kept MiB | released MiB | ratio |", "|---|---|---:|---:|---:|"]
    for art, e in d["artifacts"].items():
        lines += [f"| {art} | {label} | {e[m]['kept']:.1f} | {e[m]['released']:.1f} | {e[m]['ratio']:.3f} |" for m, label in names.items()]
        lines.append(f"| {art} | decode tokens/s | | | {e['decode_tok_s_ratio']:.3f} |")
    return lines


def arena(d: dict) -> list[str]:
    """bench/arena.py: the CPU memory arena on (shrunk after each prefill) against off, fresh
    processes; bench/huge_pages.py's table has the same shape, with load times."""
    load = all("load_s" in e["on_over_off"] for e in d["summary"].values())
    lines = [f"{d['rounds']} round(s), each measurement a fresh process, the settings alternating; {d['threads']} threads; "
             f"model {d['model']}; onnxruntime {d['onnxruntime']}. Ratios are medians of same-round on/off ratios.", "",
             "| artifact @ prompt | prefill tok/s off | on | on/off | prefill peak MiB off | on | on/off "
             "| RSS after prefill on/off | decode peak on/off | decode step on/off |" + (" load on/off |" if load else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if load else "")]
    for key, e in d["summary"].items():
        m, q = e["median"], e["on_over_off"]
        lines.append(f"| {key} | {m['off']['prefill_tok_s']:.0f} | {m['on']['prefill_tok_s']:.0f} | {q['prefill_tok_s']:.3f} "
                     f"| {m['off']['prefill_peak_mib']:.0f} | {m['on']['prefill_peak_mib']:.0f} | {q['prefill_peak_mib']:.3f} "
                     f"| {q['rss_after_prefill_mib']:.3f} | {q['decode_peak_mib']:.3f} | {q['decode_ms']:.3f} |"
                     + (f" {q['load_s']:.2f} |" if load else ""))
    return lines


def embedding_lookup(d: dict) -> list[str]:
    """bench/embedding_lookup.py: the quantized embedding lookup as the exporter's dequantizing
    Gather and as ONNX Runtime's GatherBlockQuantized, over the same packed table."""
    lines = [f"Model {d['model']}, {d['threads']} threads, onnxruntime {d['onnxruntime']}. Decode: both graphs in one process, "
             "alternating, step-time ratio gbq/dequantize (quartiles); the rest: fresh processes, the graphs alternating, "
             f"medians of same-round gbq/dequantize ratios over {d['rounds']} round(s).", "",
             "| export | max \\|Δlogit\\| | decode step | prefill | prefill tok/s | prefill peak RSS | peak RSS MiB dequantize → gbq "
             "| RSS after prefill | peak RSS after decode |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, e in d["kinds"].items():
        dec = e["decode"]
        for n, (prompt, p) in enumerate(e["process"].items()):
            q, med = p["gbq_over_dequantize"], p["median"]
            head = (f"| {kind} | {e['max_abs_logit_diff']:.1e} | {dec['gbq_over_dequantize']:.3f} "
                    f"({dec['quartiles'][0]:.3f}-{dec['quartiles'][1]:.3f})") if n == 0 else "| | |"
            lines.append(f"{head} | {prompt} tokens | {q['prefill_tok_s']:.3f} | {q['prefill_peak_mib']:.3f} | "
                         f"{med['dequantize']['prefill_peak_mib']:.0f} → {med['gbq']['prefill_peak_mib']:.0f} | "
                         f"{q['rss_after_prefill_mib']:.3f} | {q['decode_peak_mib']:.3f} |")
    return lines


def planner_check(d: dict) -> list[str]:
    """bench/planner_check.py: the planner's uncalibrated prediction against measured peak RSS."""
    lines = [f"Each context a fresh process on this host ({d['machine']}, onnxruntime {d['onnxruntime']}): the prompt "
             f"prefilled in one step, then {d['new_tokens']} decode steps. Predicted with the planner's defaults "
             "(no calibration), as for a device that has not run the model.", "",
             "| artifact | parameters | quantize | context | measured peak MiB | predicted MiB | error |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in d["rows"]:
        params = f"{r['parameters'] / 1e6:,.0f}M" if r.get("parameters") else "?"
        lines.append(f"| {Path(r['artifact']).parent.name}/{Path(r['artifact']).name} | {params} | "
                     f"{(r.get('export_config') or {}).get('quantize', '?')} | {r['context']} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{r['predicted_peak_bytes'] / 2**20:.0f} | {r['error']:+.1%} |")
    return lines


def gram_precision(d: dict) -> list[str]:
    """bench/gram_precision.py: the calibration Gram in bfloat16 against float32, and what it does to GPTQ."""
    lines = [f"{d['model']}, layer {d['layer']}: {d['tokens']:,} calibration tokens, forward in {d['forward']}. "
             "GPTQ int4 output error judged by the float32 Hessian.", "",
             "| projection | Gram speedup (bf16 vs fp32) | ‖ΔH‖/‖H‖ | GPTQ error, bf16 H / fp32 H |", "|---|---:|---:|---:|"]
    lines += [f"| {r['projection']} | {r['speedup']:.2f}x | {r['hessian_rel_diff']:.1e} | {r['gptq_output_err_ratio']:.4f} |"
              for r in d["rows"]]
    return lines


def _sensitivity_parts(d: dict) -> dict:
    """bench/quant_sensitivity.py's rows: the default, all at 8 bits, the best kind and the best
    layer (each the row of lowest perplexity in its group), and the layers' median ratio."""
    rows = d["rows"]
    layers = sorted(r["ratio"] for r in rows if r["group"] == "layer")
    return {"default": next(r for r in rows if r["group"] == "default"), "all": next(r for r in rows if r["group"] == "all"),
            "kind": min((r for r in rows if r["group"] == "kind"), key=lambda r: r["ratio"]),
            "layer": min((r for r in rows if r["group"] == "layer"), key=lambda r: r["ratio"]),
            "layer_median": layers[len(layers) // 2]}


def _part_name(row: dict) -> str:
    """A quant_sensitivity kind row as words: the tied table, the deltas, or every projection K."""
    kind = row["row"].removeprefix("kind ")
    return {"table": "the tied embedding / LM head", "delta": "every delta"}.get(kind, f"every {kind} projection")


def quant_sensitivity_section(stem: str) -> Callable[[dict], list[str]]:
    """bench/quant_sensitivity.py (results `stem`.json, .md, .png): the default int4 form's
    perplexity with one part at a time at 8 bits."""
    def section(d: dict) -> list[str]:
        p = _sensitivity_parts(d)
        e = d["export"]
        table = f" (table {e['embedding_block_size']})" if e.get("embedding_block_size") else ""
        return [f"{d['model']}, the default int4 form ({e['method']}, block {e['block_size']}{table}, "
                f"{'symmetric' if e['symmetric'] else 'uint zero points'}, v at {e['value_bits']} bits) in PyTorch: "
                f"{p['default']['ratio']:.3f}x float perplexity, KL {p['default']['kl']:.3f} nats/token. Every weight at 8 bits: "
                f"{p['all']['ratio']:.4f}x. One part at 8 bits at a time: the best kind, {_part_name(p['kind'])}, "
                f"gives {p['kind']['ratio']:.3f}x (+{p['kind']['added_mib']:.1f} MiB); the best single layer, "
                f"{p['layer']['row'].removeprefix('layer ')}, {p['layer']['ratio']:.3f}x; the median layer {p['layer_median']:.3f}x.", "",
                f"Every row and the chart: [bench/results/{stem}.md](../bench/results/{stem}.md), "
                f"[{stem}.png](../bench/results/{stem}.png)."]

    return section


def scale_tuning(d: dict) -> list[str]:
    """bench/scale_tuning.py: the default int4 form's perplexity after block-scale tuning, by
    learning rate and steps (PyTorch)."""
    from edgedelta.export.scale_tuning import TUNE_LR

    e, base = d["export"], d["rows"][0]
    at_rate = [r for r in d["rows"][1:] if r["lr"] == TUNE_LR]
    best = min(d["rows"][1:], key=lambda r: r["ratio"], default=None)
    text = (f"{d['model']}, the default int4 form ({e['method']}, symmetric blocks of {e['block_size']}, v at {e['value_bits']} "
            f"bits) in PyTorch: {base['ratio']:.4f}x float perplexity before tuning (KL {base['kl']:.4f} nats/token)")
    if at_rate:
        text += (f"; at the export's learning rate ({TUNE_LR:g}) "
                 + ", ".join(f"{r['steps']} steps give {r['ratio']:.4f}x (KL {r['kl']:.4f}, {r['seconds']:.0f} s)" for r in at_rate))
    if best and best not in at_rate:
        text += f"; the best row is {best['steps']} steps at {best['lr']:g}, {best['ratio']:.4f}x"
    return [text + ".", "", "Every row: [bench/results/scale_tuning.md](../bench/results/scale_tuning.md)."]


def tuning_ab(d: dict) -> list[str]:
    """bench/peers.py: each scale-tuned export (ExportConfig.tune_steps) against the export of the
    same model that differs from it in tune_steps only, measured in the same run."""
    notes = []
    for c in (c for c in d.get("order", d["summary"]) if c in d["summary"]):
        mine = _export_of(d, c).get("export_config") or {}
        if not mine.get("tune_steps"):
            continue
        o = _ab_partner(d, c, "tune_steps")
        if o is None or _export_of(d, o)["export_config"]["tune_steps"]:
            continue
        fl = (d.get("roles") or {}).get(f"{d['contenders'][c].get('model')}-fp32")
        dec = _decode_vs(d, c, o)
        vs_float = (f"; {d['summary'][c]['ppl'] / d['summary'][fl]['ppl']:.3f}x against "
                    f"{d['summary'][o]['ppl'] / d['summary'][fl]['ppl']:.3f}x the float model's ({fl})" if fl in d["summary"] else "")
        notes.append(f"- {c} ({mine['tune_steps']} steps) against {o}: perplexity {d['summary'][c]['ppl']:.3f} against "
                     f"{d['summary'][o]['ppl']:.3f} ({d['summary'][c]['ppl'] / d['summary'][o]['ppl']:.3f}x{vs_float}), decode "
                     f"{dec:.3f}x, file {d['summary'][c]['file_mib']:.1f} against {d['summary'][o]['file_mib']:.1f} MiB")
    if not notes:
        return ["No tuned export with an untuned twin in this run."]
    return (["Each tuned export against its untuned twin, in the same run (ratios: medians of same-round ratios):", ""]
            + notes + ["", "Every figure: [bench/results/peers.md](../bench/results/peers.md)."])


def _link_only(path: str) -> Callable[[dict], list[str]]:
    def section(d: dict) -> list[str]:
        return [f"Measured; the table is in [{path}](../{path}) (no summary function yet)."]

    return section


def zero_points_section(path: str) -> Callable[[dict], list[str]]:
    """bench/zero_points.py: how many projection blocks sit on a Q4_1 grid, and the int4 forms
    of the model decoding in one process, with each export's quality gate."""
    def section(d: dict) -> list[str]:
        w = d["weights"]
        out = [f"{w['model']}: {w['blocks_on_q4_1_grid']:,} of {w['blocks']:,} projection blocks on a Q4_1 grid; relative "
               f"int4 weight error {w['rel_err_uint4_zp']:.4f} with uint4 zero points (RTN).", ""]
        dec = d.get("decode")
        if dec:
            q = dec["uint4_over_none_quartiles"]
            fl = (f"; float zero points (symmetric codes plus an 8-bit offset table) take {dec['float_over_none']:.3f}x the "
                  f"symmetric step time (quartiles {dec['float_over_none_quartiles'][0]:.3f}-"
                  f"{dec['float_over_none_quartiles'][1]:.3f})" if "float_over_none" in dec else "")
            out += [f"{w['model']} int4, the forms loaded in one process and decoding in alternation ({dec['alternations']} "
                    f"alternations of {dec['steps']} steps): symmetric blocks decode {dec['uint4_over_none']:.3f}x as fast as "
                    f"uint4 zero points (quartiles {q[0]:.3f}-{q[1]:.3f}){fl}.", "",
                    "| zero points | file MiB | quality gate: perplexity ratio | argmax agreement |", "|---|---:|---:|---:|"]
            for k, name in (("uint4", "uint4"), ("none", "none (symmetric)"), ("float", "float (offset table)")):
                if k not in dec["file_mib"]:
                    continue
                g = (dec.get("quality_gate") or {}).get(k)
                ppl, agree = (f"{g['ppl_ratio']:.3f}", f"{g['agreement']:.3f}") if g else ("-", "-")
                out.append(f"| {name} | {dec['file_mib'][k]:.1f} | {ppl} | {agree} |")
            out.append("")
        out.append(f"Kernel timings and the per-tensor errors: [{path}](../{path}).")
        return out

    return section


# (title, file under bench/results, section function); a file that is absent is listed as not measured
SECTIONS: list[tuple[str, str, Callable[[dict], list[str]]]] = [
    ("Target: `edgedelta pipeline --quick` vs ShortGPT removal", "pipeline_quick.json", pipeline_quick),
    ("Quality at 12% fewer parameters, 300 items per task", "quality_healed_b1_12_l300/quality.json", quality),
    ("Quality at 25% fewer parameters, every method", "quality_healed_b1_25_all/quality.json", quality),
    ("Quality at 0.5B (Qwen2.5-Coder-0.5B)", "quality_qwen2.5-coder-0.5b/quality.json", quality),
    ("Recovery at 12%: drop-share", "recovery_b1/b1_f_shared_lora.json", recovery),
    ("Recovery at 12%: ShortGPT removal healed", "recovery_b1/b1_c.json", recovery),
    ("Layers removed before sharing", "drop_sweep.json", drop_sweep),
    ("Runtime speed", "runtime.json", runtime),
    ("Cost of the delta branches", "delta_cost.json", delta_cost),
    ("Peers (onnxruntime-genai, llama.cpp)", "peers.json", peers),
    ("Releasing the weight file's pages after load", "release_pages.json", release_pages),
    ("CPU memory arena on and off", "arena.json", arena),
    ("Transparent huge pages for the prepacked weights, on and off", "huge_pages.json", arena),
    ("Quantized embedding lookup: dequantizing Gather vs GatherBlockQuantized", "embedding_lookup.json", embedding_lookup),
    ("onnxruntime-genai loads edgedelta artifacts", "genai_compat.json", genai_compat),
    ("Quantization quality", "quant_quality.json", quant_quality),
    ("Quantization quality at 0.5B (Qwen2.5-Coder-0.5B)", "quant_quality_qwen2.5-coder-0.5b/quant_quality.json", quant_quality),
    ("int4 perplexity by part: one part at a time at 8 bits", "quant_sensitivity.json", quant_sensitivity_section("quant_sensitivity")),
    ("int4 perplexity by part: the peers' compressed model", "quant_sensitivity_compressed-12.json",
     quant_sensitivity_section("quant_sensitivity_compressed-12")),
    ("Block-scale tuning of the int4 export", "scale_tuning.json", scale_tuning),
    ("Block-scale tuning in the peer run", "peers.json", tuning_ab),
    ("Zero points: Q4_1 blocks re-rounded vs held exactly", "zero_points.json", zero_points_section("bench/results/zero_points.md")),
    ("Zero points at 0.5B (Qwen2.5-Coder-0.5B)", "zero_points_qwen2.5-coder-0.5b/zero_points.json",
     zero_points_section("bench/results/zero_points_qwen2.5-coder-0.5b/zero_points.md")),
    ("Zero points at 1.5B (Qwen2.5-Coder-1.5B)", "zero_points_qwen2.5-coder-1.5b/zero_points.json",
     zero_points_section("bench/results/zero_points_qwen2.5-coder-1.5b/zero_points.md")),
    ("Calibration Grams in bfloat16 (Qwen2.5-Coder-1.5B)", "gram_precision.json", gram_precision),
    ("Redundancy of consecutive layers by model size", "redundancy.json", _link_only("bench/results/redundancy.md")),
    ("Device verdicts at 0.5B and 1.5B", "device_plans.json", _link_only("bench/results/device_plans.md")),
    ("The planner without calibration at 1.5B", "planner_check.json", planner_check),
    ("Server", "serve.json", serve),
    ("Every stage at 1.5B", "stages_qwen2.5-coder-1.5b.json", stages),
]


def render(results: Path = RESULTS) -> str:
    out = ["# Results", "",
           "Generated by `python bench/summarize.py` from the JSON files in `bench/results/`; do not edit by hand. "
           "Task columns marked * are the informative ones: the original beats its chance and majority-class rates by "
           "more than 2 standard errors. Retention is chance-normalised on those tasks, Σ(score − chance) / "
           "Σ(original − chance), ± its paired standard error. Speed figures are ratios from interleaved runs on a shared "
           "2-core machine, not absolute times.", ""]
    for title, rel, fn in SECTIONS:
        out += [f"## {title}", "", f"Source: `bench/results/{rel}`", ""]
        path = results / rel
        if not path.is_file():
            out += ["Not measured yet (the file is absent).", ""]
            continue
        out += fn(json.loads(path.read_text())) + [""]
    return "\n".join(line.rstrip() for line in "\n".join(out).splitlines()).rstrip() + "\n"


README = ROOT / "README.md"
STATUS_BEGIN, STATUS_END = "<!-- status:begin (bench/summarize.py) -->", "<!-- status:end -->"


def _load(rel: str, results: Path) -> dict | None:
    path = results / rel
    return json.loads(path.read_text()) if path.is_file() else None


def _vs_shortgpt(d: dict, budget: dict, method: str, stage: str) -> str | None:
    """`method` against ShortGPT removal in one budget of a quality.json, at one stage (built
    or healed); None when either row is missing."""
    from edgedelta.evaluation.chance import informative_tasks, paired_on

    rows = {r["method"]: r for r in budget["rows"] if r["stage"] == stage and "eval" in r}
    if method not in rows or "shortgpt" not in rows:
        return None
    ours, sg = rows[method]["eval"], rows["shortgpt"]["eval"]
    tasks = informative_tasks(d["original"]["eval"])
    diff, se = paired_on(ours, sg, tasks)
    ppl = "; ".join(f"{t} {ours['ppl'][t]['ppl']:.1f} vs {sg['ppl'][t]['ppl']:.1f}" for t in ours["ppl"])
    return f"tasks {100 * diff:+.1f} ± {100 * se:.1f} points (paired, {len(tasks)} informative tasks); perplexity {ppl}"


# the targets of bench/peers.py that the README's status table shows, beside every missed one
# (all of them are in RESULTS.md)
PEER_STATUS = ("original int4 decode ≥ 1.05× genai int4", "compressed int4 decode ≥ 1.0× genai int4",
               "compressed int4 file ≤ 0.90× genai int4", "compressed int4 peak RSS ≤ 0.90× genai int4",
               "fp32 decode ≥ 1.0× genai fp32", "int4 perplexity ≤ 1.05× float", "int4 perplexity below genai int4's",
               "compressed/original int4 decode ≥ 0.95")


def status_table(results: Path = RESULTS) -> str:
    """The README's short table of where the project stands, from the same files."""
    rows = ["| question | measured | file |", "|---|---|---|"]
    pq = _load("pipeline_quick.json", results)
    if pq is None:
        rows.append("| `pipeline --quick` no worse than ShortGPT removal, ≤ 15 min | not measured yet | `pipeline_quick.json` |")
    else:
        v, t = pq["verdict"], pq["timing"]
        d = "n/a" if v["tasks_paired_diff"] is None else f"{100 * v['tasks_paired_diff']:+.1f} ± {100 * v['tasks_paired_se']:.1f} points"
        rows.append(f"| `pipeline --quick` no worse than ShortGPT removal, ≤ 15 min | perplexity {_yes(v['ppl_no_worse'])}; "
                    f"tasks {_yes(v['tasks_no_worse'])} ({d}); {t['wall_s'] / 60:.0f} min wall, {t['cpu_s'] / 60:.0f} min CPU "
                    "on a shared machine | `pipeline_quick.json` |")
    for budget, rel in (("12%", "quality_healed_b1_12_l300/quality.json"), ("25%", "quality_healed_b1_25_all/quality.json")):
        d = _load(rel, results)
        got = d and _vs_shortgpt(d, d["budgets"][0], "deltallm-drop", "healed")
        if got:
            rows.append(f"| 135M: drop-share vs ShortGPT at {budget}, both healed with the same tokens | {got} | `{rel}` |")
    rel = "quality_qwen2.5-coder-0.5b/quality.json"
    d = _load(rel, results)
    for b in (d or {}).get("budgets", []):
        for stage, how in (("built", "without healing"), ("healed", "both healed with the same tokens")):
            for method, name in (("deltallm", "pure DeltaLLM"), ("deltallm-drop", "drop-share")):
                got = _vs_shortgpt(d, b, method, stage)
                if got is not None:
                    rows.append(f"| 0.5B: {name} vs ShortGPT at {100 - round(100 * b['target'])}%, {how} | {got} | `{rel}` |")
    pe = _load("peers.json", results)
    for t in (pe or {}).get("targets") or []:
        if t["target"] in PEER_STATUS or (t["value"] is not None and not t["met"]):
            # two decimals, or three where two would read as the threshold itself
            digits = 3 if t["value"] is not None and round(t["value"], 2) == t.get("threshold") else 2
            got = "not measured" if t["value"] is None else f"{t['value']:.{digits}f}× ({'met' if t['met'] else 'missed'})"
            rows.append(f"| {t['target']} | {got} | `peers.json` |")
    sv = _load("serve.json", results)
    for t in (sv or {}).get("targets") or []:
        rows.append(f"| server: {t['target']} | {t['measured']} ({'met' if t['met'] else 'missed'}) | `serve.json` |")
    vs = _server_ratios(sv) if sv else {}
    if vs:
        rows.append(f"| server ({sv.get('artifact_form', 'fp32')} artifact) / llama-server (Q4_1), aggregate tokens/s | "
                    + ", ".join(f"{c} clients {x:.2f}×" for c, x in vs.items()) + " | `serve.json` |")
    st = _load("stages_qwen2.5-coder-1.5b.json", results)
    for t in (st or {}).get("targets") or []:
        rows.append(f"| 1.5B on 2 cores, 24 GiB: {t['target']} | {t['measured']} ({'met' if t['met'] else 'missed'}) "
                    "| `stages_qwen2.5-coder-1.5b.json` |")
    if st and st.get("stages"):  # what a machine needs for each stage at this size
        per = ", ".join(f"{r['stage']} {r['wall_s'] / 60:.1f} min / {r['peak_rss_gib']:.1f} GiB" for r in st["stages"] if r["exit_code"] == 0)
        rows.append(f"| 1.5B: wall time / peak RSS of each stage | {per} | `stages_qwen2.5-coder-1.5b.json` |")
    r = _load("runtime.json", results)
    if r is not None:
        ratios = r["speed"]["ratios"]
        rows.append(f"| decode speed vs optimum / PyTorch eager (same artifact, interleaved; an earlier graph) | "
                    f"{ratios['ours/optimum']['median_of_round_ratios']:.2f}× / {ratios['ours/torch_eager']['median_of_round_ratios']:.2f}× "
                    "| `runtime.json` |")
        runs = _planner_runs(r)
        held_out = [abs(x["prediction_error"]) for x in runs if not x["calibration_point"]]
        if held_out:
            models = ", ".join(dict.fromkeys(x["model"] for x in runs))
            rows.append(f"| device planner: peak RSS predicted vs measured, worst of the contexts not fitted "
                        f"({models}; to {max(x['context'] for x in runs)} tokens) | {max(held_out):.1%} | `runtime.json` |")
    return "\n".join(rows)


def readme_with_status(readme: str, results: Path = RESULTS) -> str:
    """README text with the block between the status markers regenerated."""
    head, rest = readme.split(STATUS_BEGIN, 1)
    _, tail = rest.split(STATUS_END, 1)
    return head + STATUS_BEGIN + "\n" + status_table(results) + "\n" + STATUS_END + tail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/RESULTS.md is not what the JSON files give")
    a = ap.parse_args(argv)
    text = render()
    readme = readme_with_status(README.read_text())
    if a.check:
        if not DOC.is_file() or DOC.read_text() != text or README.read_text() != readme:
            print("docs/RESULTS.md or README.md's status table is out of date: run python bench/summarize.py", file=sys.stderr)
            return 1
        return 0
    from edgedelta.fsutil import write_text_atomic

    write_text_atomic(DOC, text)
    write_text_atomic(README, readme)
    print(f"wrote {DOC} and the status table in {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
