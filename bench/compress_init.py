"""Benchmark: which init and which layers lose least before any training.

Default model (SmolLM2-135M-Instruct). For each budget (12%, 25% fewer unique parameters):
the planner chooses groups once (default config); then every init variant is built on the
SAME groups at the same unique-parameter count (variants whose base is not one of the
group's layers give every layer a delta, so they get half the rank), and compared with
ShortGPT layer removal at the nearest count it can reach (its block influence measured on the
same calibration rows; with a calibration other than sotu-train, also on sotu-train).
Perplexity on held-out text (python-docs, sotu-recent; never the training text).
Writes bench/results/compress_init.{json,md}.

    python bench/compress_init.py [--budgets 0.88,0.75] [--eval-tokens 8192]
    python bench/compress_init.py --budgets 0.88 --variants default --drop-sweep 1,2,3,4,5 --out bench/results/drop_sweep
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from edgedelta.baselines import shortgpt
from edgedelta.data.text import DEFAULT_TRAIN_TEXT, calibration_batches, dataset_texts
from edgedelta.delta.accounting import count_parameters
from edgedelta.delta.calibration import Calibration, input_covariances
from edgedelta.delta.compress import compress
from edgedelta.delta.config import CompressConfig
from edgedelta.errors import ConfigError
from edgedelta.evaluation.perplexity import perplexity_on_texts
from edgedelta.fsutil import write_json_atomic, write_text_atomic
from edgedelta.models.adapters import adapter_for
from edgedelta.loading import load_model

RESULTS = Path(__file__).parent / "results"
EVAL_SETS = ("python-docs", "sotu-recent")
# name -> CompressConfig overrides (groups and ranks come from the plan)
VARIANTS = {
    "weight-SVD, mean base": dict(init="svd", base="mean", gates=False, scale_base=False),
    "ASVD, mean base": dict(init="asvd", base="mean", gates=False, scale_base=False),
    "ASVD, first layer anchors, α": dict(init="asvd", base="first", gates=False, scale_base=True),
    "ASVD, most influential layer anchors, α": dict(init="asvd", base="anchor", gates=False, scale_base=True),
    "ASVD, most influential layer anchors, α, sub-layer gates (default)": {},
}
DEFAULT = "ASVD, most influential layer anchors, α, sub-layer gates (default)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="0.88,0.75")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-text", default=DEFAULT_TRAIN_TEXT, help="training text set for calibration (sotu-train, wiki-train, mixed-train)")
    ap.add_argument("--variants", choices=("all", "default"), default="all", help="'default': only the default init (and removal)")
    ap.add_argument("--out", default=str(RESULTS / "compress_init"), help="results path stem (.json and .md are added)")
    ap.add_argument("--rank", type=int, default=32, help="starting rank; the planner spends slack on higher ranks")
    ap.add_argument("--drop-sweep", default="", help="also the default init after removing each of these layer counts first "
                                                     "(CompressConfig.drop_layers), e.g. 1,2,3,4,5: which count loses least")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    lm = load_model("default")
    tok, teacher = lm.tokenizer, lm.model
    texts = {name: dataset_texts(name) for name in EVAL_SETS}

    def ppl(model) -> dict:
        return {n: round(perplexity_on_texts(model, tok, t, seq_len=512, max_tokens=args.eval_tokens)["ppl"], 3) for n, t in texts.items()}

    out = {"model": "SmolLM2-135M-Instruct (default)", "eval_texts": list(EVAL_SETS), "eval_tokens_per_text": args.eval_tokens,
           "calibration": f"{args.calib_samples} x 256 tokens of {args.calib_text}", "budgets": {}}
    out["original"] = {"params": count_parameters(teacher)["total"], "ppl": ppl(teacher)}
    log(f"original {out['original']}  [{time.time() - t0:.0f}s]")
    calib = calibration_batches(tok, args.calib_samples, 256, seed=0, source=args.calib_text)
    adapter = adapter_for(teacher.config)
    projections = CompressConfig(groups=[[0, 1]]).shared_projections(adapter)
    covs = input_covariances(teacher, adapter, range(len(adapter.decoder_layers(teacher))), projections, calib, progress=True)
    measured = Calibration(calib, covs=covs)
    log(f"calibration done [{time.time() - t0:.0f}s]")

    for target in [float(x) for x in args.budgets.split(",")]:
        rows = {}
        planned = compress(teacher, CompressConfig(target_params=target, rank_attn=args.rank, rank_mlp=args.rank,
                                                   calib_text=args.calib_text), calibration=measured)
        plan = planned.plan
        log(f"plan {target}: groups {plan['groups']} ranks {plan['ranks']} ratio {plan['ratio']:.4f} [{time.time() - t0:.0f}s]")
        # rows fill in place: every write below reports what was measured so far
        out["budgets"][str(target)] = {"plan": {k: plan.get(k) for k in ("groups", "anchors", "ranks", "ratio", "candidates", "chosen",
                                                                          "sensitivity")}, "rows": rows}
        for name, kw in VARIANTS.items() if args.variants == "all" else [(DEFAULT, {})]:
            anchored = kw.get("base", "anchor") in ("anchor", "first")
            ranks = plan["ranks"] if anchored else {p: r // 2 for p, r in plan["ranks"].items()}
            cfg = CompressConfig(groups=plan["groups"], ranks=ranks, **kw)
            res = planned if name == DEFAULT else compress(teacher, cfg, calibration=measured, progress=False)
            rows[name] = {"params": count_parameters(res.model)["total"], "ppl": ppl(res.model)}
            log(f"  {name}: {rows[name]} [{time.time() - t0:.0f}s]")
            del res
        for n in [int(x) for x in args.drop_sweep.split(",") if x.strip()]:
            try:
                res = compress(teacher, CompressConfig(target_params=target, drop_layers=n, rank_attn=args.rank, rank_mlp=args.rank,
                                                       calib_text=args.calib_text), calib_ids=calib, progress=False)
            except ConfigError as e:  # e.g. removal alone already meets the budget
                log(f"  drop {n}: {e}")
                continue
            groups = [[res.spec.source_of(li) for li in g] for g in res.spec.groups]  # original numbering, as the removed layers
            rows[f"drop {n} ({', '.join(map(str, res.plan['removed_layers']))}) + sharing {groups} (default init)"] = {
                "params": count_parameters(res.model)["total"], "ppl": ppl(res.model), "removed_layers": res.plan["removed_layers"]}
            log(f"  drop {n}: {list(rows.values())[-1]} [{time.time() - t0:.0f}s]")
            del res
            write(out, Path(args.out))  # partial results survive an interrupt
        removals = {"ShortGPT layer removal (same params)": calib[:8]}
        if args.calib_text != "sotu-train":  # removal's layer choice depends on its calibration: show the other one too
            removals["ShortGPT layer removal, block influence on sotu-train"] = calibration_batches(tok, 8, 256, seed=0, source="sotu-train")
        for name, rows_for_influence in removals.items():
            removal = shortgpt.build(teacher, rows[DEFAULT]["params"], rows_for_influence)
            rows[name] = {"params": count_parameters(removal.model)["total"], "ppl": ppl(removal.model),
                          "removed_layers": removal.report.get("removed_layers")}
            log(f"  {name}: {rows[name]} [{time.time() - t0:.0f}s]")
        write(out, Path(args.out))
    out["seconds"] = round(time.time() - t0)
    write(out, Path(args.out))
    return 0


def write(out: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stem.with_suffix(".json"), out)
    lines = ["# Compression init before training (SmolLM2-135M-Instruct)", "",
             f"Perplexity on held-out text ({', '.join(out['eval_texts'])}; {out['eval_tokens_per_text']} tokens each, seq 512). "
             f"Calibration: {out['calibration']}. All rows of a budget share the planner's groups; variants without an "
             "anchor put a delta on every layer of a group, so they get half the rank (same unique parameters).", "",
             f"Original: {out['original']['params']:,} params, ppl " + " / ".join(f"{v}" for v in out['original']['ppl'].values()), ""]
    for target, b in out["budgets"].items():
        lines += [f"## keep {float(target):.0%} of parameters", "",
                  f"groups {b['plan']['groups']}, anchors {b['plan'].get('anchors')}, ranks {b['plan']['ranks']}", "",
                  *(["planner candidates (whole-plan KL to the original on calibration text, nats/token): "
                     + "; ".join(f"{n} {c['groups']} KL {c['kl']}" for n, c in b['plan']['candidates'].items())
                     + f"; kept: {b['plan']['chosen']}", ""] if b['plan'].get('candidates') else []),
                  "| method | unique params | " + " | ".join(f"ppl {n}" for n in out["eval_texts"]) + " |",
                  "|---|---:|" + "---:|" * len(out["eval_texts"])]
        for name, r in b["rows"].items():
            lines.append(f"| {name} | {r['params']:,} | " + " | ".join(str(r['ppl'][n]) for n in out["eval_texts"]) + " |")
        lines.append("")
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
