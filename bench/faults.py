"""Faults and load (issue 7's reliability suite, the slow cases), tiny models, one run:

  kill   `edgedelta compress | distill | export | pipeline` (the CLI, in a subprocess) is killed
         at a random moment of its run (uniform over the uninterrupted run's duration) with
         SIGTERM or SIGKILL, in a loop. After each kill: the output path either does not
         exist or verifies against its manifest (pipeline: every stage output that exists
         verifies, every stage recorded in stages.json is complete, index.md is whole);
         distillation checkpoints verify. Then the same command runs again (distill with
         --resume when a checkpoint exists; pipeline resumes by itself) and must finish with
         an output that verifies; compress/export must match the uninterrupted run's sha256.
         Leftover temporary folders (.NAME.partial-*) are counted.
  load   1,000 generations back to back from one runtime Session on a tiny artifact (and on
         the default model's artifact if one exists, --default-artifact): RSS after the first
         10 and after the last; the difference must stay under 5%.
Writes bench/results/faults.json and faults.md.

  python bench/faults.py                                   # ~30-45 min on 2 shared cores
  python bench/faults.py --trials 3 --pipeline-trials 1 --scenarios compress,export
  python bench/faults.py --only load --default-artifact bench/_work/smollm2-onnx
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgedelta.errors import EdgeDeltaError  # noqa: E402
from edgedelta.fsutil import sha256_file, write_json_atomic  # noqa: E402
from edgedelta.manifest import verify_manifest  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "_work" / "faults"
TEXT = ("The conveyor belt motor overheats when the bearing grease dries out. Check the belt tension, "
        "the motor current and the cooling fan before replacing parts. ") * 40


# ---- inputs ------------------------------------------------------------------------------------
def build_inputs(work: Path) -> dict[str, Path]:
    """A tiny 8-layer Llama folder, its compressed version and a training text (built once)."""
    import torch

    sys.path.insert(0, str(REPO))
    from edgedelta.delta.compress import compress
    from edgedelta.delta.config import CompressConfig
    from edgedelta.delta.storage import save_compressed
    from tests.tiny import tiny_ids, tiny_model, tiny_tokenizer

    torch.set_num_threads(1)
    paths = {"model": work / "inputs" / "model", "compressed": work / "inputs" / "compressed", "text": work / "inputs" / "text.txt"}
    if not paths["model"].is_dir():
        m = tiny_model("llama", layers=8)
        tmp = paths["model"].with_name("model.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        m.save_pretrained(tmp)
        tiny_tokenizer().save_pretrained(tmp)
        os.replace(tmp, paths["model"])
    if not paths["compressed"].is_dir():
        from edgedelta.loading import load_model

        lm = load_model(paths["model"])
        res = compress(lm.model, CompressConfig(groups=[[2, 3], [4, 5]], rank_attn=2, rank_mlp=2), calib_ids=tiny_ids(), progress=False)
        save_compressed(res.model, paths["compressed"], tokenizer=lm.tokenizer,
                        manifest_facts={"source": {"kind": "hf", "path": str(paths["model"].resolve())}})
    paths["text"].write_text(TEXT)
    paths["distill_config"] = work / "inputs" / "distill.json"
    paths["distill_config"].write_text('{"seq_len": 16, "checkpoint_every": 4}')
    # the pipeline's --quick evaluation has items longer than tiny_model's 256 positions
    paths["model_long"] = work / "inputs" / "model_long"
    if not paths["model_long"].is_dir():
        from transformers import AutoModelForCausalLM

        from tests.tiny import tiny_config

        cfg = tiny_config("llama", 8)
        cfg.max_position_embeddings = 2048
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
        tmp = paths["model_long"].with_name("model_long.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        m.save_pretrained(tmp)
        tiny_tokenizer().save_pretrained(tmp)
        os.replace(tmp, paths["model_long"])
    return paths


def commands(inp: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {
        "compress": ["compress", "--model", str(inp["model"]), "--groups", "2-3,4-5", "--rank-attn", "2", "--rank-mlp", "2",
                     "--calib-samples", "2", "--out", str(out)],
        "distill": ["distill", str(inp["compressed"]), "--recipe", "deltallm", "--tokens", "4096", "--config", str(inp["distill_config"]),
                    "--batch-size", "4", "--data", str(inp["text"]), "--no-progress", "--out", str(out)],
        "export": ["export", str(inp["compressed"]), "--out", str(out)],
        "pipeline": ["pipeline", "--model", str(inp["model_long"]), "--quick", "--tokens", "512", "--devices", "rpi5-8gb",
                     "--contexts", "32,64", "--out", str(out)],
    }


def start(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "EDGEDELTA_CACHE": str(WORK / "cache")}
    f = open(log, "a")
    f.write(f"\n$ edgedelta {' '.join(argv)}\n")
    f.flush()
    return subprocess.Popen([sys.executable, "-m", "edgedelta.cli", *argv], env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_to_end(argv: list[str], log: Path, timeout: float = 1800) -> tuple[int, float]:
    t0 = time.time()
    p = start(argv, log)
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        rc = p.wait()
    return rc, time.time() - t0


# ---- invariants ----------------------------------------------------------------------------------
def _verifies(folder: Path) -> str | None:
    try:
        verify_manifest(folder)
        return None
    except EdgeDeltaError as e:
        return str(e)


def partials(out: Path) -> list[str]:
    """Temporary folders an interrupted atomic write left beside `out` (and, for the pipeline, inside it)."""
    found = [p for p in out.parent.glob(f".{out.name}.*") if ".partial-" in p.name or ".old-" in p.name]
    if out.is_dir():
        found += [p for p in out.rglob(".*") if ".partial-" in p.name or ".old-" in p.name or p.name.endswith(".tmp")]
    return sorted(str(p.relative_to(out.parent)) for p in found)


def check_after_kill(scenario: str, out: Path) -> list[str]:
    """Problems (empty = fine): a half-written artifact where a complete one is expected."""
    problems = []
    if scenario != "pipeline":
        if out.exists() and (why := _verifies(out)):
            problems.append(f"{out.name} exists but does not verify: {why}")
        if scenario == "distill":
            from edgedelta.distill.run_folder import run_dir_for
            from edgedelta.distill.checkpoint import latest_checkpoint, load_checkpoint

            run = run_dir_for(out)
            try:
                ck = latest_checkpoint(run) if run.is_dir() else None
                if ck is not None:
                    load_checkpoint(ck)
            except EdgeDeltaError as e:
                problems.append(f"checkpoint does not load: {e}")
        return problems
    if not out.is_dir():
        return problems
    for sub in ("compressed", "distilled", "artifacts/original", "artifacts/compressed", "devices"):
        d = out / sub
        if d.exists() and (d / "manifest.json").exists() and (why := _verifies(d)):
            problems.append(f"{sub} does not verify: {why}")
    stages = out / "stages.json"
    if stages.exists():
        try:
            state = json.loads(stages.read_text())
        except ValueError as e:
            return problems + [f"stages.json is corrupt: {e}"]
        for name, rec in state.items():
            o = out / rec["output"]
            if o.is_dir():
                if (o / "manifest.json").exists() and (why := _verifies(o)):
                    problems.append(f"stage '{name}' recorded but its output does not verify: {why}")
            elif not o.is_file():
                problems.append(f"stage '{name}' recorded but {rec['output']} is missing")
            elif o.suffix == ".json":
                try:
                    json.loads(o.read_text())
                except ValueError:
                    problems.append(f"stage '{name}' output {rec['output']} is truncated")
    for f in ("quality.json", "sample.json", "pipeline_config.json"):
        if (out / f).exists():
            try:
                json.loads((out / f).read_text())
            except ValueError:
                problems.append(f"{f} is truncated")
    if (out / "index.md").exists() and "## Devices" not in (out / "index.md").read_text():
        problems.append("index.md is truncated")
    return problems


def final_hash(scenario: str, out: Path) -> str | None:
    f = {"compress": "model.safetensors", "distill": "model.safetensors", "export": "model.onnx.data"}.get(scenario)
    return sha256_file(out / f) if f and (out / f).is_file() else None


# ---- the kill loop ---------------------------------------------------------------------------------
def kill_loop(scenario: str, inp: dict, trials: int, rng: random.Random, log: Path, rng_seed: int = 0) -> dict:
    base = WORK / scenario
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    ref_out = base / "reference"
    rc, ref_s = run_to_end(commands(inp, ref_out)[scenario], log)
    if rc != 0:
        raise SystemExit(f"{scenario}: the uninterrupted reference run failed (rc {rc}); see {log}")
    ref_hash = final_hash(scenario, ref_out)
    print(f"[{scenario}] reference run {ref_s:.1f} s", file=sys.stderr, flush=True)
    rows = []
    for i in range(trials):
        out = base / f"t{i:02d}"
        sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
        delay = rng.uniform(0.05, 1.0) * ref_s
        argv = commands(inp, out)[scenario]
        p = start(argv, log)
        killed = False
        try:
            p.wait(delay)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, sig)  # the CLI process itself (its children, e.g. profiler workers, see the SIGKILL below)
            killed = True
        try:
            rc_killed = p.wait(120)
        except subprocess.TimeoutExpired:  # SIGTERM ignored for 2 minutes: that is a finding too
            os.killpg(p.pid, signal.SIGKILL)
            rc_killed = p.wait()
        with open(log, "a") as f:
            f.write(f"[faults] {scenario} trial {i}: {'killed' if killed else 'finished'} ({sig.name} at {delay:.1f} s), rc {rc_killed}\n")
        try:
            os.killpg(p.pid, signal.SIGKILL)  # orphaned grandchildren, if any
        except ProcessLookupError:
            pass
        after_kill = check_after_kill(scenario, out)
        left = partials(out)
        complete_after_kill = out.exists() and (scenario == "pipeline" and (out / "index.md").exists() or scenario != "pipeline" and not _verifies(out))
        # the next run: resume or restart
        rerun = list(argv)
        if scenario == "distill" and not complete_after_kill:
            from edgedelta.distill.run_folder import run_dir_for
            from edgedelta.distill.checkpoint import latest_checkpoint

            try:
                if latest_checkpoint(run_dir_for(out)) is not None:
                    rerun.append("--resume")
            except EdgeDeltaError:
                rerun.append("--force")
        resumed = "--resume" in rerun
        next_log = base / f"t{i:02d}.next-run.log"  # its own log: the pipeline's reuse lines are counted in it
        if complete_after_kill and scenario != "pipeline":
            rc2, dt2 = 0, 0.0  # nothing to do: the kill came after the output was complete
        else:
            rc2, dt2 = run_to_end(rerun, next_log)
        problems = list(after_kill)
        if rc2 != 0:
            problems.append(f"next run failed with exit {rc2}")
        elif scenario != "pipeline" and (why := _verifies(out)):
            problems.append(f"after the next run the output does not verify: {why}")
        elif scenario == "pipeline" and not (out / "index.md").is_file():
            problems.append("after the next run there is no index.md")
        same = None
        if ref_hash is not None and rc2 == 0:
            same = final_hash(scenario, out) == ref_hash
            if scenario in ("compress", "export") and not same:
                problems.append("output differs from the uninterrupted run")
        reused = next_log.read_text().count("unchanged, reusing") if scenario == "pipeline" and next_log.is_file() else 0
        if scenario == "pipeline" and reused:
            resumed = True
        left_after = partials(out)
        rows.append({"trial": i, "batch": rng_seed, "signal": sig.name, "at_s": round(delay, 2), "killed": killed, "exit_after_signal": rc_killed,
                     "complete_after_kill": bool(complete_after_kill), "temp_left_after_kill": left, "next_run": "none (already complete)" if complete_after_kill and scenario != "pipeline" else "resume" if resumed else "restart",
                     "next_run_exit": rc2, "next_run_s": round(dt2, 1), "same_sha256_as_uninterrupted": same,
                     "pipeline_stages_reused": reused if scenario == "pipeline" else None, "temp_left_after_next_run": left_after,
                     "problems": problems})
        print(f"[{scenario}] trial {i}: {sig.name} at {delay:.1f} s -> rc {rc_killed}; next run {rows[-1]['next_run']} "
              f"rc {rc2}; {'OK' if not problems else problems}", file=sys.stderr, flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return {"reference_s": round(ref_s, 1), "trials": rows}


# ---- load --------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def load_test(artifact: Path, n: int, new_tokens: int, label: str) -> dict:
    """n generations back to back from one Session; RSS after the first 10 and after the last."""
    import gc

    from edgedelta.runtime import Session

    s = Session.from_dir(artifact, provider="cpu", threads=1)
    prompts = ["Check the pump bearing", "Why does the motor overheat?", "List three causes of belt slip", "Hello"]
    rss, t0 = {}, time.time()
    for i in range(1, n + 1):
        s.generate(prompts[i % len(prompts)], max_new_tokens=new_tokens)
        if i in (10, 100, n // 2, n):
            gc.collect()
            rss[i] = rss_bytes()
            print(f"[load {label}] {i} generations, RSS {rss[i] / 2**20:.1f} MiB, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    growth = (rss[n] - rss[10]) / rss[10]
    return {"artifact": str(artifact), "generations": n, "new_tokens": new_tokens, "seconds": round(time.time() - t0, 1),
            "rss_mib": {str(k): round(v / 2**20, 1) for k, v in rss.items()}, "growth_10_to_last": round(growth, 4),
            "ok": abs(growth) < 0.05}


def load_in_subprocess(artifact: Path, n: int, new_tokens: int, label: str) -> dict:
    """A fresh process (the kill loop's imports must not colour the RSS figures)."""
    code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from faults import load_test; print(json.dumps(load_test(__import__('pathlib').Path({str(artifact)!r}), {n}, {new_tokens}, {label!r})))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    sys.stderr.write(r.stderr[-2000:])
    if r.returncode != 0:
        return {"artifact": str(artifact), "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- report ----------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    lines = ["# Faults and load (bench/faults.py)", "", f"Host: {res['host']}; {res['date']}; seed {res['seed']}.", ""]
    if res.get("kill"):
        tot = sum(len(v["trials"]) for v in res["kill"].values())
        bad = sum(1 for v in res["kill"].values() for r in v["trials"] if r["problems"])
        lines += ["## Kill loop", "",
                  f"{tot} runs interrupted (or let finish when the random moment came after the end), {bad} with a problem. "
                  "A problem is: an output path that exists but does not verify, a checkpoint that does not load, a pipeline "
                  "stage recorded without a complete output, a truncated report, or a next run that fails / differs from the "
                  "uninterrupted run (compress, export).", "",
                  "| command | reference run (s) | runs | SIGTERM | SIGKILL | killed before the end | output complete when the signal landed | next run resumed | same sha256 as uninterrupted | temp folders left after kill (SIGTERM / SIGKILL) | after next run | problems |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
        for name, v in res["kill"].items():
            t = v["trials"]
            same = [r["same_sha256_as_uninterrupted"] for r in t if r["same_sha256_as_uninterrupted"] is not None]
            lt = sum(len(r["temp_left_after_kill"]) > 0 for r in t if r["signal"] == "SIGTERM")
            lk = sum(len(r["temp_left_after_kill"]) > 0 for r in t if r["signal"] == "SIGKILL")
            lines.append(f"| {name} | {v['reference_s']} | {len(t)} | {sum(r['signal'] == 'SIGTERM' for r in t)} | "
                         f"{sum(r['signal'] == 'SIGKILL' for r in t)} | {sum(r['killed'] for r in t)} | {sum(r['complete_after_kill'] for r in t)} | "
                         f"{sum(r['next_run'] == 'resume' for r in t)} | "
                         f"{sum(same)}/{len(same)} | {lt} / {lk} | {sum(len(r['temp_left_after_next_run']) > 0 for r in t)} | "
                         f"{sum(bool(r['problems']) for r in t)} |")
        probs = [(n, r) for n, v in res["kill"].items() for r in v["trials"] if r["problems"]]
        if probs:
            lines += ["", "Problems:", ""] + [f"- {n} trial {r['trial']} (seed {r.get('batch', res['seed'])}, {r['signal']} at {r['at_s']} s): {'; '.join(r['problems'])}" for n, r in probs]
        lines += ["", "Temporary folders are hidden siblings (`.NAME.partial-*`) that SIGKILL cannot clean up; they never sit at the "
                  "output path. Distillation resumes from its last checkpoint (`--resume`); the pipeline resumes by itself, "
                  "reusing every stage whose output verifies.", ""]
        lines += [f"Note: {n}" for n in res.get("notes", [])] + ([""] if res.get("notes") else [])
    if res.get("load"):
        lines += ["## Load: generations back to back from one Session", "",
                  "| artifact | generations | new tokens each | RSS after 10 (MiB) | RSS after 100 | RSS after the last | growth 10 → last | < 5% | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for name, r in res["load"].items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error']} | | | | | | | |")
                continue
            m = r["rss_mib"]
            lines.append(f"| {name} | {r['generations']} | {r['new_tokens']} | {m['10']} | {m.get('100', '')} | {m[str(r['generations'])]} | "
                         f"{100 * r['growth_10_to_last']:+.2f}% | {'yes' if r['ok'] else 'NO'} | {r['seconds']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="compress,export,distill,pipeline")
    ap.add_argument("--trials", type=int, default=8, help="kills per command (pipeline: --pipeline-trials)")
    ap.add_argument("--pipeline-trials", type=int, default=3)
    ap.add_argument("--only", choices=["kill", "load"], default=None)
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--default-artifact", default=None, help="the default model's artifact (edgedelta export default --out X) for the load test")
    ap.add_argument("--default-generations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--append", action="store_true", help="add the kill trials to those in faults.json instead of replacing them")
    ap.add_argument("--report-only", action="store_true", help="rewrite faults.md from faults.json")
    args = ap.parse_args()
    if args.report_only:
        (RESULTS / "faults.md").write_text(markdown(json.loads((RESULTS / "faults.json").read_text())))
        return 0

    import platform

    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    log = WORK / "faults.log"
    out_json = RESULTS / "faults.json"
    res = {}
    res.update({"host": f"{platform.node()} ({os.cpu_count()} CPUs, shared)", "date": time.strftime("%Y-%m-%d %H:%M"), "seed": args.seed})
    rng = random.Random(args.seed)
    inp = build_inputs(WORK)

    ran: set[str] = set()  # kill scenarios run by this invocation

    def save():  # merge with the file as it is now: a concurrent `--only load` / `--only kill` run keeps its part
        now = json.loads(out_json.read_text()) if out_json.is_file() else {}
        for key in ("load", "kill"):
            if key in res:
                merged = {**now.get(key, {}), **res[key]}
                if key == "kill" and args.append:  # add this run's trials to the stored ones
                    for name, v in res[key].items():
                        if name not in ran:
                            continue
                        old = [t for t in now.get(key, {}).get(name, {}).get("trials", []) if t.get("batch") != args.seed]
                        merged[name] = {**v, "trials": old + v["trials"]}
                now[key] = merged
        now.update({k: v for k, v in res.items() if k not in ("load", "kill")})
        res.update(now)
        write_json_atomic(out_json, now)
        (RESULTS / "faults.md").write_text(markdown(now))

    if args.only in (None, "load"):
        res["load"] = {}
        art = WORK / "inputs" / "artifact"
        if not art.is_dir():
            rc, _ = run_to_end(["export", str(inp["compressed"]), "--out", str(art)], log)
            assert rc == 0, f"export failed, see {log}"
        res["load"]["tiny compressed"] = load_in_subprocess(art, args.generations, 16, "tiny")
        save()
        if args.default_artifact:
            res["load"]["SmolLM2-135M (default model)"] = load_in_subprocess(Path(args.default_artifact), args.default_generations, 4, "default")
            save()
    if args.only in (None, "kill"):
        res["kill"] = {}
        for name in [s for s in args.scenarios.split(",") if s]:
            n = args.pipeline_trials if name == "pipeline" else args.trials
            res["kill"][name] = kill_loop(name, inp, n, rng, log, args.seed)
            ran.add(name)
            save()
    save()
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
