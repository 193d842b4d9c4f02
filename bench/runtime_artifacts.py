"""Artifacts for bench/runtime.py: the default model (SmolLM2-135M-Instruct) exported as is
(original) and after DeltaLLM compression with the default config at 12% fewer parameters
(what `edgedelta compress --target-params 0.88` builds: 6 anchored pairs; no recovery
training: speed and memory do not depend on it).

  python bench/runtime_artifacts.py [--work bench/_work]
Built once; reused while their manifests verify and were written with today's export
config and graph revision (an artifact from an older exporter is rebuilt: comparing a stale original graph with
a fresh compressed one once made their prefill peaks differ by the size of the logits)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.errors import EdgeDeltaError  # noqa: E402
from edgedelta.manifest import verify_manifest  # noqa: E402

TARGET_PARAMS = 0.88
PLAN_KEYS = ("groups", "anchors", "ranks", "original_params", "compressed_params", "ratio")  # recorded in the notes


def _ok(path: Path, config=None) -> bool:
    """Whether `path` verifies and was exported with `config` (default ExportConfig()) by today's graph revision."""
    from edgedelta.export import GRAPH_REVISION, ExportConfig

    manifest = _verified_manifest(path)
    if manifest is None:
        return False
    # a field left to auto (None: symmetric, tune_steps) is recorded resolved, so it matches any value
    recorded, want = manifest.get("export_config") or {}, (config or ExportConfig()).to_dict()
    return (recorded.keys() == want.keys() and all(v is None or recorded[k] == v for k, v in want.items())
            and manifest.get("graph_revision") == GRAPH_REVISION)


def _verified_manifest(path: Path) -> dict | None:
    """`path`'s manifest when its checksums verify, else None."""
    try:
        return verify_manifest(path)
    except EdgeDeltaError:
        return None


def _plan_of(compressed_dir: Path) -> dict:
    """The planner's facts (PLAN_KEYS) from a compressed model's manifest."""
    from edgedelta.manifest import read_manifest

    plan = read_manifest(compressed_dir).get("plan", {})
    return {k: plan[k] for k in PLAN_KEYS if k in plan}


def ensure_quantized(work: Path, log=print) -> Path:
    """The default model's int4 export (the export's defaults otherwise), built once."""
    from edgedelta.export import ExportConfig, export_onnx

    path, cfg = work / "smollm2-int4-onnx", ExportConfig(quantize="int4")
    if not _ok(path, cfg):
        export_onnx("default", cfg, path, force=True, progress=log)
    return path


def recorded_plan(path: Path, log=print) -> dict | None:
    """The sharing plan (groups, ranks) the planner chose for a results file's compressed
    artifact (bench/results/runtime.json: artifacts.compress_plan), or None (said through
    `log`) when the file records none: the planner then runs."""
    import json

    plan = (json.loads(path.read_text()).get("artifacts") or {}).get("compress_plan")
    if not plan:
        log(f"{path} records no compress_plan: the planner chooses the groups and ranks (minutes)")
        return None
    return {"groups": plan["groups"], "ranks": plan["ranks"]}


def ensure_artifacts(work: Path, log=print, compressed: Path | None = None,
                     plan: dict | None = None, original_only: bool = False, dtype: str = "fp32") -> tuple[Path, Path | None, dict]:
    """(original artifact, compressed artifact or None, notes). `compressed`: an existing
    compressed model directory (e.g. bench/recovery.py's cached init) to export instead of
    compressing again (the planner takes minutes). `plan`: groups and ranks to compress with
    instead of running the planner (recorded_plan): the same layers share at the same ranks,
    so the same artifact shapes, in a fraction of the time (a GPU lease). `original_only`: the
    original alone (compressed artifact None). dtype: the exports' (fp16 for the CUDA
    provider, whose GroupQueryAttention kernel is fp16/bf16 only); fp16 artifacts get their
    own folders."""
    from edgedelta.export import ExportConfig, export_onnx

    work.mkdir(parents=True, exist_ok=True)
    notes: dict = {}
    cfg = ExportConfig(dtype=dtype)
    tag = "" if dtype == "fp32" else f"-{dtype}"
    orig = work / f"smollm2-onnx{tag}"
    if not _ok(orig, cfg):
        t = time.perf_counter()
        export_onnx("default", cfg, orig, force=True, progress=log)
        notes["export_original_s"] = round(time.perf_counter() - t, 1)
    if original_only:
        return orig, None, notes
    comp = work / f"smollm2-delta-onnx{tag}"
    if compressed is not None:
        t = time.perf_counter()
        export_onnx(compressed, cfg, comp, force=True, progress=log)
        notes["compressed_from"] = str(compressed)
        notes["export_compressed_s"] = round(time.perf_counter() - t, 1)
        notes["compress_plan"] = _plan_of(compressed)
    elif _ok(comp, cfg):
        cdir = work / "smollm2-delta"  # the reused artifact's model: its plan, so a results file keeps it
        if (cdir / "manifest.json").is_file():
            notes["compress_plan"] = _plan_of(cdir)
    else:
        t = time.perf_counter()
        cdir = work / "smollm2-delta"
        made = _plan_of(cdir) if _verified_manifest(cdir) is not None else None
        if made is None or (plan and (made.get("groups") != plan["groups"] or made.get("ranks") != plan["ranks"])):
            try:
                from edgedelta.delta.compress import compress
                from edgedelta.delta.config import CompressConfig
                from edgedelta.delta.storage import save_compressed
                from edgedelta.loading import load_model
            except ImportError as e:
                notes["compressed"] = f"not built: {e}"
                return orig, None, notes
            lm = load_model("default")
            ccfg = CompressConfig(groups=plan["groups"], ranks=plan["ranks"]) if plan else CompressConfig(target_params=TARGET_PARAMS)
            res = compress(lm.model, ccfg, tokenizer=lm.tokenizer, progress=False)
            save_compressed(res.model, cdir, tokenizer=lm.tokenizer, force=True,
                            manifest_facts={"compress_config": ccfg.to_dict() if hasattr(ccfg, "to_dict") else None,
                                            "plan": res.plan})
            if plan:
                notes["compress_plan_given"] = True
        else:  # the model compressed for another dtype's artifacts, with the same plan
            notes["compressed_model_reused"] = str(cdir)
        export_onnx(cdir, cfg, comp, force=True, progress=log)
        notes["compress_and_export_s"] = round(time.perf_counter() - t, 1)
        notes["compress_plan"] = _plan_of(cdir)
    return orig, comp, notes


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(__file__).parent / "_work"))
    ap.add_argument("--plan-from", help="a results JSON whose artifacts.compress_plan gives the groups and ranks (skips the planner)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="export dtype (fp16: the CUDA provider's)")
    a = ap.parse_args()
    plan = recorded_plan(Path(a.plan_from)) if a.plan_from else None
    print(ensure_artifacts(Path(a.work), plan=plan, dtype=a.dtype))
