"""The device planner without calibration against measured peak RSS, on real-size artifacts.

A device the planner judges has never run the model, so its plan uses the planner's defaults
(devices/planner.py: DEFAULT_OVERHEAD_BYTES, DEFAULT_HIDDEN_FACTOR), not a calibration. This
benchmark runs each artifact at each context length in a fresh process on this host
(edgedelta.runtime.profiler: prefill of the context, then a few decode steps; peak RSS) and
reports the uncalibrated prediction's error. Default: the Qwen2.5-Coder-1.5B int4 artifact that
bench/stages.py builds (its 12% compressed, distilled model).

  python bench/planner_check.py [--artifacts DIR ...] [--contexts 512,2048,4096]

Writes bench/results/planner_check.json and .md."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from results_io import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_ARTIFACTS = [Path(__file__).resolve().parent / "_work" / "stages" / "qwen2.5-coder-1.5b" / "art-int4"]
NEW_TOKENS = 8


def check(artifacts: list[Path], contexts: list[int]) -> list[dict]:
    """One row per (artifact, context): measured peak RSS and the uncalibrated prediction."""
    from edgedelta.devices.host import host_device
    from edgedelta.devices.planner import facts_of, plan_facts
    from edgedelta.runtime.artifact import Artifact
    from edgedelta.runtime.profiler import sweep

    host, rows = host_device(), []
    for path in artifacts:
        art = Artifact.open(path)
        facts = facts_of(art)
        for r in sweep(path, contexts, NEW_TOKENS, "cpu"):
            p = plan_facts(facts, host, r["context"], prefill=r["prompt_tokens"])  # no calibration: the defaults
            rows.append({"artifact": str(path), "parameters": art.manifest.get("parameters", {}).get("total"),
                         "export_config": art.manifest.get("export_config"), "context": r["context"],
                         "prompt_tokens": r["prompt_tokens"], "peak_rss_bytes": r["peak_rss_bytes"],
                         "predicted_peak_bytes": p.predicted_peak_bytes, "error": p.predicted_peak_bytes / r["peak_rss_bytes"] - 1,
                         "terms": {"weights": p.weights_bytes, "kv": p.kv_bytes, "activations": p.activation_bytes,
                                   "overhead": p.overhead_bytes}})
            print(f"{path.name} @ {r['context']}: measured {r['peak_rss_bytes'] / 2**20:.0f} MiB, "
                  f"predicted {p.predicted_peak_bytes / 2**20:.0f} MiB ({rows[-1]['error']:+.1%})", file=sys.stderr, flush=True)
    return rows


def report(res: dict) -> str:
    from summarize import planner_check

    return "\n".join(["# The device planner without calibration vs measured peak RSS", "", *planner_check(res), "",
                      "Written by `bench/planner_check.py`; the prediction's terms per row in `planner_check.json`.", ""])


def main(argv=None) -> int:
    from edgedelta.errors import ConfigError
    from edgedelta.runtime.profiler import parse_contexts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, nargs="+", default=DEFAULT_ARTIFACTS)
    ap.add_argument("--contexts", default="512,2048,4096")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    missing = [str(p) for p in a.artifacts if not (p / "manifest.json").is_file()]
    if missing:
        print(f"error: no artifact at {', '.join(missing)} (the default is bench/stages.py's 1.5B int4 export: "
              "run `python bench/stages.py` first, or pass --artifacts)", file=sys.stderr)
        return 2
    try:
        contexts = parse_contexts(a.contexts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import onnxruntime as ort

    res = {"machine": platform.machine(), "onnxruntime": ort.__version__, "contexts": contexts, "new_tokens": NEW_TOKENS,
           "rows": check(a.artifacts, contexts)}
    write_results(a.out, "planner_check", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
