"""Peak RSS with and without releasing the mapped weight file's pages after load
(Session.from_dir(release_pages=...), edgedelta/runtime/memory.py), for exported artifacts of
the default model: each setting in a fresh process (bench/peers_worker.py, the peers
benchmark's measurement: load, greedy decode of 128 tokens after a 32-token prompt, prefill of
32 and 512 tokens), settings interleaved over rounds, the same token ids for both.

  python bench/release_pages.py                       # int4 and fp32 of the default model (exported here once)
  python bench/release_pages.py --artifact ART ...    # these artifacts instead

Writes bench/results/release_pages.json and release_pages.md; ratios are released/kept of the
same round."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402

WORK = ROOT / "bench" / "_work" / "release_pages"
OUT = ROOT / "bench" / "results"
METRICS = {"rss_after_load_mib": "RSS after load", "rss_peak_decode_mib": "peak RSS after decode",
           "rss_peak_all_mib": "peak RSS after the 512-token prefill"}


def default_artifacts() -> list[Path]:
    """int4 and fp32 exports of the default model under bench/_work (made once)."""
    from edgedelta.export import export_onnx
    from edgedelta.export.config import ExportConfig

    arts = []
    for name, cfg in (("int4", ExportConfig(quantize="int4")), ("fp32", ExportConfig())):
        path = WORK / name
        if not (path / "manifest.json").is_file():
            print(f"exporting the default model ({name}) to {path}", file=sys.stderr, flush=True)
            export_onnx("default", cfg, path, force=True)
        arts.append(path)
    return arts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", action="append", default=None, help="an exported artifact (repeatable)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.threads < 1:
        raise SystemExit(f"--rounds {a.rounds} / --threads {a.threads}: each must be at least 1")
    missing = [p for p in a.artifact or [] if not (Path(p) / "manifest.json").is_file()]
    if missing:
        raise SystemExit(f"not an exported artifact (no manifest.json): {missing[0]}")
    from peers import Contender, make_tokens, run_worker

    arts = [Path(p) for p in a.artifact] if a.artifact else default_artifacts()
    WORK.mkdir(parents=True, exist_ok=True)
    tok_path = WORK / "tokens.json"
    tok_path.write_text(json.dumps(make_tokens(32, [32, 512], 1, 512)))
    opts = {"threads": a.threads, "tokens": str(tok_path), "new_tokens": 128, "prefill_reps": 1}
    rows = {}
    for rnd in range(a.rounds):
        for art in arts:
            for release in (False, True):
                c = Contender(f"{art.name}-{'released' if release else 'kept'}", "edgedelta", path=str(art),
                              session={"release_pages": release, "spin": "off"})
                print(f"round {rnd + 1}/{a.rounds}: {c.label}", file=sys.stderr, flush=True)
                r = run_worker(c, {}, "speed", WORK, opts, timeout=1800)
                if "error" in r:
                    raise SystemExit(f"{c.label}: {r['error']}")
                rows.setdefault(art.name, {}).setdefault(release, []).append(r)
    res = {"threads": a.threads, "rounds": a.rounds, "artifacts": {}, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name, by in rows.items():
        kept, freed = by[False], by[True]
        entry = {"same_tokens": all(k["decode"]["token_ids"] == f["decode"]["token_ids"] for k, f in zip(kept, freed))}
        for m in METRICS:
            entry[m] = {"kept": statistics.median(r[m] for r in kept), "released": statistics.median(r[m] for r in freed),
                        "ratio": statistics.median(f[m] / k[m] for k, f in zip(kept, freed))}
        entry["decode_tok_s_ratio"] = statistics.median(f["decode"]["tokens_per_s"] / k["decode"]["tokens_per_s"]
                                                        for k, f in zip(kept, freed))
        res["artifacts"][name] = entry
    out = Path(a.out)
    write_json_atomic(out / "release_pages.json", res)
    md = ["# Releasing the weight file's pages after load", "",
          f"bench/release_pages.py: {a.rounds} round(s), each setting in a fresh process, {a.threads} threads, ORT spinning off; "
          "MiB = 2^20 bytes; ratio = released / kept, median of same-round ratios.", "",
          "| artifact | measure | kept MiB | released MiB | ratio |", "|---|---|---:|---:|---:|"]
    for name, e in res["artifacts"].items():
        for m, label in METRICS.items():
            md.append(f"| {name} | {label} | {e[m]['kept']:.1f} | {e[m]['released']:.1f} | {e[m]['ratio']:.3f} |")
        md.append(f"| {name} | decode tokens/s | | | {e['decode_tok_s_ratio']:.3f} |")
    md += ["", "Same greedy tokens with and without the release: "
           + ", ".join(f"{n} {'yes' if e['same_tokens'] else 'no'}" for n, e in res["artifacts"].items()) + "."]
    write_text_atomic(out / "release_pages.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
