"""Measure on the host, calibrate the planner, and plan every device: the data behind
`edgedelta profile` and its report.

For each artifact: a context sweep (each length in a fresh process), the planner's overhead
calibrated from the smallest length's measured peak RSS, predicted vs measured peak at every
length (the prediction error is the planner's accuracy check), then plans per device."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from .planner import (Calibration, ModelFacts, calibrate_joint, calibration_path, check_context, facts_of,
                      load_calibration, plan_facts)
from .profile import Device


def assess(artifacts: list[str | Path], contexts: list[int], devices: list[Device], new_tokens: int = 16,
           provider: str = "cpu", threads: int | None = None, measure: bool = True, save_calibration: bool = True,
           log=lambda msg: None, calibrate_on: int = 2) -> dict[str, Any]:
    """Returns {"host", "contexts", "models": [{name, path, facts, calibration, runs}], "plans": [Plan...]}.
    The planner is calibrated on the `calibrate_on` smallest contexts; errors at the others are
    out-of-sample (each run says `calibration_point`)."""
    from edgedelta.runtime.artifact import Artifact
    from edgedelta.runtime.profiler import sweep

    from .host import host_device

    host = host_device()
    out: dict[str, Any] = {"host": {**host.to_dict(), "platform": platform.platform(), "processor": platform.processor()},
                           "contexts": contexts, "new_tokens": new_tokens, "models": [], "plans": []}
    entries = []
    for path in artifacts:
        art = Artifact.open(path)  # verified: a tampered artifact is refused here
        m = facts_of(art)
        for c in contexts:  # bad lengths fail before any measuring
            check_context(c, m.max_positions)
        entries.append((art, m, {"name": m.name, "path": str(Path(path).resolve()), "compressed": m.compressed,
                                 "facts": m.__dict__.copy(), "runs": []}))
    if measure:
        for art, m, entry in entries:
            log(f"profiling {m.name}: contexts {contexts} ({new_tokens} new tokens each, provider {provider})")
            entry["runs"] = sweep(art.path, contexts, new_tokens, provider, threads)
    for art, m, entry in entries:
        saved = None if measure else load_calibration(art.path)
        entry["calibration"] = saved.__dict__ if saved else None
        out["models"].append(entry)
    finish(out, devices, host, calibrate_on, provider, log)
    if measure and save_calibration:
        for art, _, _ in entries:
            Calibration(**out["calibration"]).to_json(calibration_path(art.path))
    return out


def finish(out: dict[str, Any], devices: list[Device], host: Device, calibrate_on: int = 2, provider: str = "cpu",
           log=lambda msg: None) -> dict[str, Any]:
    """From measured runs: one joint calibration (the `calibrate_on` smallest contexts of every
    model), predicted vs measured per run, and plans for every device and context. Also used
    to refit stored results (bench/runtime.py --refit) without measuring again."""
    pairs = []
    for entry in out["models"]:
        m = ModelFacts(**entry["facts"])
        pairs += [(m, r) for r in sorted(entry["runs"], key=lambda r: r["context"])[:max(1, calibrate_on)]]
    # overhead and per-token factor belong to the runtime: one fit for all models
    joint = calibrate_joint(pairs, host=host.display_name, provider=provider) if pairs else None
    out["calibration"] = joint.__dict__ if joint else None
    out["plans"] = []
    for entry in out["models"]:
        m = ModelFacts(**entry["facts"])
        cal = joint or (Calibration(**entry["calibration"]) if entry.get("calibration") else None)
        entry["calibration"] = cal.__dict__ if cal else None
        for r in entry["runs"]:
            pred = plan_facts(m, host, r["context"], calibration=cal, prefill=r["prompt_tokens"]).predicted_peak_bytes
            r.update(model=m.name, predicted_peak_bytes=pred, prediction_error=pred / r["peak_rss_bytes"] - 1,
                     calibration_point=r["context"] in cal.contexts,
                     weight_bandwidth_gbps=m.weight_bytes_read_per_token * r["decode_tok_s"] / 1e9)
            log(f"  {m.name} context {r['context']}: TTFT {r['ttft_s'] * 1000:.0f} ms, decode {r['decode_tok_s']:.1f} tok/s, "
                f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB (predicted {pred / 2**20:.0f})")
        for d in devices:
            for c in out["contexts"]:
                out["plans"].append(plan_facts(m, d, c, calibration=cal))
    return out
