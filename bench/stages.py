"""Every stage on one real model, each in its own process, one after another: wall time, the
stage's own peak RSS (os.wait4 in rusage_shim.py: the stage's high-water mark, not this script's), its
exit code, and whether the host swapped (issue 26: every stage at 1.5B on 2 cores, 24 GiB).

  python bench/stages.py --model qwen2.5-coder-1.5b    # the issue's run (hours on 2 cores)
  python bench/stages.py --model default --quick       # the same stages on SmolLM2-135M (minutes)

Stages: compress at --target-params (the pipeline's recipe defaults), distill a short run
(--distill-tokens), eval (held-out perplexity), export fp32 and int4 of the compressed model,
export fp32 of the original, run (32 tokens from the int4 artifact), profile (both fp32
artifacts at a 512-token context), pipeline --quick. A stage that fails is recorded with its
exit code and the last lines of its log; the stages after it that need its output are skipped.

Targets (issue 26): compress <= 45 min with peak RSS <= 16 GiB; each export <= 10 min; the
compressed/original RSS ratio after a 512-token prefill within 0.03 of the unique-parameter
ratio; no stage killed, no swapping. Writes bench/results/stages_<model>.json and .md;
logs in bench/_work/stages/<model>/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.append(str(Path(__file__).resolve().parents[1]))

from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402
from summarize import export_lines, peak_lines, pipeline_lines, targets_table  # noqa: E402  (bench/summarize.py: the same tables in RESULTS.md)

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / "_work" / "stages"
GIB = 2**30
SHIM = Path(__file__).resolve().parent / "rusage_shim.py"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgedelta.cli", *args]


def run_stage(name: str, cmd: list[str], log_dir: Path) -> dict:
    """Run one stage; wall time, the child's peak RSS (wait4), exit code, swap-outs meanwhile,
    and where in the stage the memory peak falls (rss_timeline)."""
    log = log_dir / f"{name}.log"
    swap0 = psutil.swap_memory().sout
    t0 = time.perf_counter()
    result = log_dir / f"{name}.rusage.json"
    result.unlink(missing_ok=True)
    with open(log, "w") as f:  # through rusage_shim.py: ru_maxrss without this process's own mark
        p = subprocess.Popen([sys.executable, str(SHIM), str(result), *cmd], stdout=f, stderr=subprocess.STDOUT)
        sampler = RssSampler(p.pid, log)
        sampler.start()
        shim_code = p.wait()
        sampler.stop()
    wall = time.perf_counter() - t0
    # the shim itself killed (it has no rusage to give): its own exit code, no peak
    usage = json.loads(result.read_text()) if result.is_file() else {"exit_code": shim_code, "maxrss_kib": 0}
    result.unlink(missing_ok=True)
    code = usage["exit_code"]
    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
    row = {"stage": name, "command": " ".join(cmd[2:]), "exit_code": code, "killed": code < 0,
           "wall_s": round(wall, 1), "peak_rss_gib": round(usage["maxrss_kib"] * 1024 / GIB, 3),
           "swapped_out_bytes": psutil.swap_memory().sout - swap0, "log": str(log), "commit": _commit(),
           "rss_timeline": sampler.summary()}
    if code != 0:
        row["log_tail"] = tail
    print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {code}, {wall / 60:.1f} min, peak RSS {row['peak_rss_gib']:.2f} GiB",
          file=sys.stderr, flush=True)
    return row


class RssSampler:
    """Samples the RSS of a launcher's descendants (summed: what they hold in RAM together,
    pages they share counted in each; the launcher, rusage_shim.py, left out) every `interval`
    seconds, with the size of the stage's log at each sample, so a peak can be placed after
    the last line logged before it."""

    def __init__(self, pid: int, log: Path, interval: float = 1.0, points: int = 120):
        import threading

        self.pid, self.log, self.interval, self.points = pid, log, interval, points
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, bytes, log size)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._done.is_set():
            try:
                rss = sum(q.memory_info().rss for q in proc.children(recursive=True))
                size = self.log.stat().st_size if self.log.is_file() else 0
            except psutil.Error:  # a process ended between two reads
                if not proc.is_running():
                    break
                self._done.wait(0.05)
                continue
            self.samples.append((time.perf_counter() - self._t0, rss, size))
            self._done.wait(self.interval)

    def summary(self) -> dict | None:
        """The sampled peak, when it came and the log line before it, and at most `points`
        (seconds, GiB) pairs, each the largest sample of its stretch of the run."""
        if not self.samples:
            return None
        t_peak, peak, size = max(self.samples, key=lambda x: x[1])
        text = self.log.read_bytes()[:size].decode(errors="replace") if self.log.is_file() else ""
        before = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
        step = -(-len(self.samples) // self.points)
        chunks = [self.samples[i : i + step] for i in range(0, len(self.samples), step)]
        return {"interval_s": self.interval, "peak_gib": round(peak / GIB, 3), "peak_at_s": round(t_peak, 1),
                "log_before_peak": before[-1][:200] if before else None,
                "points": [[round(c[0][0], 1), round(max(x[1] for x in c) / GIB, 3)] for c in chunks]}


def _commit() -> str:
    """The code a stage ran: the repository's HEAD (with '+changes' when the tree differs)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return head + ("+changes" if dirty.strip() else "")


def unique_params(art: Path) -> int:
    return int(json.loads((art / "manifest.json").read_text())["parameters"]["total"])


def rss_ratio(profile_json: Path, orig: Path, comp: Path) -> dict | None:
    """compressed/original peak RSS of the 512-token prefill, against the unique-parameter ratio."""
    if not profile_json.is_file():
        return None
    data = json.loads(profile_json.read_text())
    runs = {}
    for m in data["models"]:
        for r in m["runs"]:
            runs[Path(m["path"]).resolve()] = r  # `edgedelta profile --json`: models[].path, models[].runs[]
    o, c = runs.get(orig.resolve()), runs.get(comp.resolve())
    if o is None or c is None:
        return None
    rss = c["peak_rss_prefill_bytes"] / o["peak_rss_prefill_bytes"]
    params = unique_params(comp) / unique_params(orig)
    return {"rss_ratio": round(rss, 4), "unique_param_ratio": round(params, 4), "difference": round(rss - params, 4),
            "original_prefill_rss_gib": round(o["peak_rss_prefill_bytes"] / GIB, 3),
            "compressed_prefill_rss_gib": round(c["peak_rss_prefill_bytes"] / GIB, 3)}


def pipeline_inside(folder: Path) -> dict | None:
    """What `edgedelta pipeline` recorded inside its own run: each of its stages' seconds
    (stages.json) and the quality it measured of the original and compressed models."""
    path = folder / "stages.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    out = {"stages": [{"stage": name, "seconds": rec["seconds"]} for name, rec in state.items() if "seconds" in rec]}
    quality = state.get("evaluate", {}).get("result")
    if quality:
        out["quality"] = quality  # {original|compressed: {average, ppl: {text: perplexity}}}
    distill = state.get("distill", {}).get("result")
    if distill:
        out["distill"] = distill  # tokens, seconds, tokens_per_s, final_loss
    return out


def exports_inside(arts: dict[str, Path]) -> dict[str, dict]:
    """Where each export stage's time went, from its artifact's manifest: the phases of
    `timing_s` (load, graph with its calibration passes, write, check, parity, quality gate)."""
    out = {}
    for stage, art in arts.items():
        path = art / "manifest.json"
        if path.is_file():
            m = json.loads(path.read_text())
            out[stage] = {"timing_s": m.get("timing_s"), "calibration": m.get("calibration")}
    return out


def targets(res: dict) -> list[dict]:
    by = {r["stage"]: r for r in res["stages"]}
    out = []

    def add(target, measured, met, note=""):
        out.append({"target": target, "measured": measured, "met": bool(met), "note": note})

    if "compress" in by:
        c = by["compress"]
        add("compress <= 45 min", round(c["wall_s"] / 60, 1), c["exit_code"] == 0 and c["wall_s"] <= 45 * 60)
        add("compress peak RSS <= 16 GiB", c["peak_rss_gib"], c["exit_code"] == 0 and c["peak_rss_gib"] <= 16)
    for name in ("export-fp32", "export-int4", "export-original-fp32"):
        if name in by:
            e = by[name]
            add(f"{name} <= 10 min", round(e["wall_s"] / 60, 1), e["exit_code"] == 0 and e["wall_s"] <= 600)
    r = res.get("rss")
    if r:
        add("RSS after a 512-token prefill, compressed/original, within 0.03 of the unique-parameter ratio",
            r["difference"], abs(r["difference"]) <= 0.03, f"RSS {r['rss_ratio']}, parameters {r['unique_param_ratio']}")
    add("no stage killed, nothing swapped", sum(x["killed"] for x in res["stages"]),
        not any(x["killed"] or x["swapped_out_bytes"] for x in res["stages"]))
    add("every stage ran", sum(x["exit_code"] != 0 for x in res["stages"]) + len(res["skipped"]),
        all(x["exit_code"] == 0 for x in res["stages"]) and not res["skipped"])
    return out


def markdown(res: dict) -> str:
    lines = [f"# Every stage on {res['model']} (bench/stages.py)", "",
             f"Host: {res['host']}. Command: `{res['command']}`. Each stage is its own process; peak RSS is the "
             "stage's own high-water mark (wait4).", "",
             "| stage | exit | wall (min) | peak RSS (GiB) | swapped | code |", "|---|---:|---:|---:|---|---|"]
    for r in res["stages"]:
        lines.append(f"| {r['stage']} | {r['exit_code']} | {r['wall_s'] / 60:.1f} | {r['peak_rss_gib']:.2f} | "
                     f"{'yes' if r['swapped_out_bytes'] else 'no'} | {r.get('commit', '')} |")
    for s in res["skipped"]:
        lines.append(f"| {s['stage']} | skipped: {s['why']} | | | | |")
    peaks = peak_lines(res)
    if peaks:
        lines += ["", *peaks]
    if res.get("reruns"):
        lines += ["", "Reruns, in order (a row keeps the last measurement of it that finished; the code column "
                      "names the commit it ran):", *[f"- `{cmd}`" for cmd in res["reruns"]]]
    if res.get("rss"):
        r = res["rss"]
        lines += ["", f"RSS after a 512-token prefill: original {r['original_prefill_rss_gib']} GiB, compressed "
                      f"{r['compressed_prefill_rss_gib']} GiB, ratio {r['rss_ratio']} against a unique-parameter ratio of "
                      f"{r['unique_param_ratio']}."]
    if res.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in res["notes"]]]
    exports = export_lines(res.get("exports") or {})
    if exports:
        lines += ["", *exports]
    if res.get("pipeline"):
        lines += ["", *pipeline_lines(res["pipeline"])]
    return "\n".join(lines + [""] + targets_table(res["targets"])) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="a built-in model name, 'default' or a model directory")
    ap.add_argument("--target-params", default="0.88")
    ap.add_argument("--distill-tokens", type=int, default=4096, help="tokens of the short distillation run")
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--quick", action="store_true", help="fewer tokens everywhere (a check of the script)")
    ap.add_argument("--skip", default="", help="comma-separated stages to leave out (e.g. pipeline)")
    ap.add_argument("--rerun", default="", help="comma-separated stages to measure again into the existing JSON; "
                                                "the other rows (and the outputs they left in the work folder) are kept; "
                                                "'none' rewrites the report from the JSON and the work folder")
    ap.add_argument("--out", type=Path, default=None, help="output stem (default bench/results/stages_<model>)")
    ap.add_argument("--note", default="", help="a line kept with the results (e.g. where a rerun stage's input came from)")
    args = ap.parse_args(argv)
    if args.quick:
        args.distill_tokens, args.ppl_tokens = min(args.distill_tokens, 1024), min(args.ppl_tokens, 512)
    name = Path(args.model).name
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    comp, dist = work / "compressed", work / "distilled"
    arts = {k: work / f"art-{k}" for k in ("fp32", "int4", "original-fp32")}
    profile_json = work / "profile.json"
    export_arts = {f"export-{k}": v for k, v in arts.items()}
    plan = [
        ("compress", cli("compress", "--model", args.model, "--target-params", args.target_params, "--out", str(comp), "--force"), []),
        ("distill", cli("distill", str(comp), "--tokens", str(args.distill_tokens), "--out", str(dist), "--force", "--no-progress"),
         ["compress"]),
        ("eval", cli("eval", str(dist), "--tasks", "ppl", "--ppl-tokens", str(args.ppl_tokens), "--json", str(work / "eval.json"),
                     "--no-progress"), ["distill"]),
        ("export-fp32", cli("export", str(dist), "--out", str(arts["fp32"]), "--force"), ["distill"]),
        ("export-int4", cli("export", str(dist), "--quantize", "int4", "--out", str(arts["int4"]), "--force"), ["distill"]),
        ("export-original-fp32", cli("export", args.model, "--out", str(arts["original-fp32"]), "--force"), []),
        ("run", cli("run", str(arts["int4"]), "--prompt", "Write a Python function that checks a pump's pressure.",
                    "--max-new-tokens", "32"), ["export-int4"]),
        ("profile", cli("profile", str(arts["original-fp32"]), str(arts["fp32"]), "--context", "512", "--json", str(profile_json),
                        "--no-save-calibration"), ["export-fp32", "export-original-fp32"]),
        ("pipeline", cli("pipeline", "--model", args.model, "--quick", "--out", str(work / "pipeline")), []),
    ]
    skip = {s for s in args.skip.split(",") if s}
    rerun = {s for s in args.rerun.split(",") if s}
    unknown = (skip | rerun) - {p[0] for p in plan} - {"none"}
    if unknown:
        raise SystemExit(f"unknown stage(s): {', '.join(sorted(unknown))}; stages: {', '.join(p[0] for p in plan)}")
    command = " ".join(["python bench/stages.py", *(argv if argv is not None else sys.argv[1:])])
    out = args.out or RESULTS / f"stages_{name}"
    if rerun:  # the rows of an earlier run, each stage named here measured again in place
        if not _file(out, ".json").is_file():
            raise SystemExit(f"--rerun needs an earlier run's {_file(out, '.json')}")
        res = json.loads(_file(out, ".json").read_text())
        if rerun - {"none"}:
            res.setdefault("reruns", []).append(command)
        if args.note:
            res.setdefault("notes", []).append(args.note)
        for stage, cmd, needs in plan:
            if stage in rerun:
                row = run_stage(stage, cmd, work)
                rows = [r for r in res["stages"] if r["stage"] != stage]
                order = [p[0] for p in plan]
                res["stages"] = sorted(rows + [row], key=lambda r: order.index(r["stage"]))
                res["skipped"] = [r for r in res["skipped"] if r["stage"] != stage]
                save(res, out)
        recorded = {r["stage"] for r in res["stages"]} | {r["stage"] for r in res["skipped"]}
        res["skipped"] += [{"stage": p[0], "why": "not run"} for p in plan if p[0] not in recorded]
        # read again from the work folder; an earlier run's figures stay when its files are gone
        if any(r["stage"] == "profile" and r["exit_code"] == 0 for r in res["stages"]):
            res["rss"] = rss_ratio(profile_json, arts["original-fp32"], arts["fp32"]) or res.get("rss")
        if any(r["stage"] == "pipeline" and r["exit_code"] == 0 for r in res["stages"]):
            res["pipeline"] = pipeline_inside(work / "pipeline") or res.get("pipeline")
        res["exports"] = {**res.get("exports", {}), **exports_inside(export_arts)}
        save(res, out)
        return 0
    res = {"model": args.model, "command": command,
           "host": f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / GIB:.0f} GiB, {platform.machine()}",
           "args": {k: str(v) for k, v in vars(args).items()}, "stages": [], "skipped": []}
    ok: set[str] = set()
    for stage, cmd, needs in plan:
        if stage in skip:
            res["skipped"].append({"stage": stage, "why": "--skip"})
            continue
        missing = [n for n in needs if n not in ok]
        if missing:
            res["skipped"].append({"stage": stage, "why": f"needs {', '.join(missing)}"})
            continue
        row = run_stage(stage, cmd, work)
        res["stages"].append(row)
        if row["exit_code"] == 0:
            ok.add(stage)
        res["rss"] = rss_ratio(profile_json, arts["original-fp32"], arts["fp32"]) if "profile" in ok else None
        res["pipeline"] = pipeline_inside(work / "pipeline") if "pipeline" in ok else None
        res["exports"] = exports_inside({k: v for k, v in export_arts.items() if k in ok})
        save(res, out)  # after every stage: a long run leaves what it measured
    save(res, out)
    return 0


def _file(out: Path, ext: str) -> Path:
    return out.parent / (out.name + ext)  # not with_suffix: a model name such as qwen2.5-coder-1.5b has dots


def save(res: dict, out: Path) -> None:
    res["targets"] = targets(res)
    if any(r.get("rss_timeline") for r in res["stages"]):
        res["rss_chart"] = _file(out, "_rss.png").name
        plot_rss(res, _file(out, "_rss.png"))
    write_json_atomic(_file(out, ".json"), res)
    write_text_atomic(_file(out, ".md"), markdown(res))


def plot_rss(res: dict, path: Path) -> None:
    """RSS over each sampled stage's run, one line per stage, the host's RAM as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in res["stages"]:
        tl = r.get("rss_timeline")
        if tl and tl["points"]:
            t, g = zip(*tl["points"])
            ax.plot([x / 60 for x in t], g, label=f"{r['stage']} (peak {tl['peak_gib']:.1f} GiB)")
    ax.axhline(psutil.virtual_memory().total / GIB, color="grey", ls="--", lw=1, label="this host's RAM")
    ax.set_xlabel("minutes into the stage")
    ax.set_ylabel("RSS (GiB, process tree)")
    ax.set_title(f"{res['model']}: memory over each stage (bench/stages.py)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
