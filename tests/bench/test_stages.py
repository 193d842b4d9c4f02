"""bench/stages.py's parts that do not need a real model: a stage's own peak RSS and exit code
(os.wait4), a killed stage, the RSS ratio against the unique-parameter ratio, and the targets."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import stages  # noqa: E402


def test_a_stage_reports_its_own_peak_rss_and_exit_code(tmp_path):
    # this process past 1 GiB first: a launcher's own high-water mark must not reach the stage's figure
    held = bytearray(1100 * 2**20)
    held[::4096] = b"x" * len(held[::4096])
    grow = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"  # 300 MiB, every page touched
    row = stages.run_stage("grow", [sys.executable, "-c", grow], tmp_path)
    assert row["exit_code"] == 0 and not row["killed"]
    assert 0.29 <= row["peak_rss_gib"] < 1.0  # the child's high-water mark, not this process's
    # where the peak falls: after the line the stage logged before allocating, in a sampled timeline
    grow_slowly = ("import time; print('loading', flush=True); time.sleep(1.5); b = bytearray(300 * 2**20); "
                   "b[::4096] = b'x' * len(b[::4096]); print('grown', flush=True); time.sleep(2.5); del b; "
                   "print('released', flush=True); time.sleep(1.5)")
    row = stages.run_stage("grow-slowly", [sys.executable, "-c", grow_slowly], tmp_path)
    tl = row["rss_timeline"]
    assert 0.29 <= tl["peak_gib"] <= row["peak_rss_gib"] + 0.01 and 1.0 < tl["peak_at_s"] < 5.0
    assert tl["log_before_peak"] == "grown"
    assert tl["points"][-1][1] < 0.29 < max(g for _, g in tl["points"])  # released before the end
    bad = stages.run_stage("bad", [sys.executable, "-c", "print('refused'); raise SystemExit(2)"], tmp_path)
    assert bad["exit_code"] == 2 and bad["log_tail"] == ["refused"]
    killed = stages.run_stage("oom", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], tmp_path)
    assert killed["killed"] and killed["exit_code"] == -9
    missing = stages.run_stage("missing", ["edgedelta-no-such-command"], tmp_path)
    assert missing["exit_code"] == 127 and "cannot run 'edgedelta-no-such-command'" in missing["log_tail"][-1]
    del held


def _artifact(path: Path, params: int) -> Path:
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"parameters": {"total": params}}))
    return path


def test_rss_ratio_and_targets(tmp_path):
    orig, comp = _artifact(tmp_path / "o", 1000), _artifact(tmp_path / "c", 880)
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps({"models": [  # the shape `edgedelta profile --json` writes (runtime/profiler.py)
        {"name": "o", "path": str(orig), "runs": [{"peak_rss_prefill_bytes": 10 * 2**30}]},
        {"name": "c", "path": str(comp), "runs": [{"peak_rss_prefill_bytes": 9 * 2**30}]}]}))
    r = stages.rss_ratio(prof, orig, comp)
    assert r["rss_ratio"] == 0.9 and r["unique_param_ratio"] == 0.88 and r["difference"] == 0.02
    ok = {"exit_code": 0, "killed": False, "swapped_out_bytes": 0}
    res = {"stages": [{**ok, "stage": "compress", "wall_s": 50 * 60, "peak_rss_gib": 12.0},
                      {**ok, "stage": "export-fp32", "wall_s": 300, "peak_rss_gib": 8.0},
                      {**ok, "stage": "export-int4", "exit_code": 1, "wall_s": 30, "peak_rss_gib": 3.0}],
           "skipped": [{"stage": "run", "why": "needs export-int4"}], "rss": r}
    got = {t["target"]: t["met"] for t in stages.targets(res)}
    assert got["compress <= 45 min"] is False and got["compress peak RSS <= 16 GiB"] is True
    assert got["export-fp32 <= 10 min"] is True and got["export-int4 <= 10 min"] is False  # it failed
    assert got["no stage killed, nothing swapped"] is True and got["every stage ran"] is False
    assert next(v for k, v in got.items() if k.startswith("RSS after")) is True
    md = stages.markdown({**res, "model": "m", "host": "h", "command": "c", "targets": stages.targets(res)})
    assert "| run | skipped: needs export-int4 |" in md and "**missed**" in md


def test_rerun_measures_named_stages_again_and_keeps_the_other_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "WORK", tmp_path / "work")
    ran = []

    def fake_run(name, cmd, log_dir):
        ran.append(name)
        return {"stage": name, "exit_code": 0, "killed": False, "wall_s": 60.0, "peak_rss_gib": 1.5, "swapped_out_bytes": 0}

    monkeypatch.setattr(stages, "run_stage", fake_run)
    stem = tmp_path / "stages_qwen2.5-coder-1.5b"  # dots in the name: the suffix is added, not replaced
    old = {"exit_code": 0, "killed": False, "wall_s": 100.0, "peak_rss_gib": 19.0, "swapped_out_bytes": 0}
    (tmp_path / "stages_qwen2.5-coder-1.5b.json").write_text(json.dumps({
        "model": "m", "command": "first", "host": "h", "args": {}, "rss": None,
        "stages": [{**old, "stage": "compress"}, {**old, "stage": "distill"}],
        "skipped": [{"stage": "pipeline", "why": "--skip"}]}))
    assert stages.main(["--model", "m", "--rerun", "compress", "--out", str(stem)]) == 0
    res = json.loads((tmp_path / "stages_qwen2.5-coder-1.5b.json").read_text())
    assert ran == ["compress"] and res["reruns"] == ["python bench/stages.py --model m --rerun compress --out " + str(stem)]
    assert [(r["stage"], r["peak_rss_gib"]) for r in res["stages"]] == [("compress", 1.5), ("distill", 19.0)]
    assert res["skipped"][0] == {"stage": "pipeline", "why": "--skip"}
    assert {"stage": "export-int4", "why": "not run"} in res["skipped"]  # a stage with no row is named, never "ran"
    assert "compress" in (tmp_path / "stages_qwen2.5-coder-1.5b.md").read_text()
    # a report rewritten where the work folder is gone keeps the figures measured from it
    res["stages"].append({**old, "stage": "profile"})
    res["rss"] = {"rss_ratio": 0.9, "unique_param_ratio": 0.88, "difference": 0.02, "original_prefill_rss_gib": 1.0,
                  "compressed_prefill_rss_gib": 0.9}
    (tmp_path / "stages_qwen2.5-coder-1.5b.json").write_text(json.dumps(res))
    assert stages.main(["--model", "m", "--rerun", "none", "--out", str(stem), "--note", "input from elsewhere"]) == 0
    again = json.loads((tmp_path / "stages_qwen2.5-coder-1.5b.json").read_text())
    assert again["rss"] == res["rss"] and again["notes"] == ["input from elsewhere"]
    assert "- input from elsewhere" in (tmp_path / "stages_qwen2.5-coder-1.5b.md").read_text()


def test_the_pipeline_stage_reports_its_own_stages_and_quality(tmp_path):
    assert stages.pipeline_inside(tmp_path) is None  # no stages.json: nothing claimed
    (tmp_path / "stages.json").write_text(json.dumps({  # the shape edgedelta/pipeline.py's Stages writes
        "compress": {"key": "k", "output": "compressed", "seconds": 600.0, "result": {}},
        "distill": {"key": "k", "output": "distilled", "seconds": 1200.0,
                    "result": {"tokens": 32768, "seconds": 1190.0, "tokens_per_s": 27.5, "final_loss": 0.61}},
        "evaluate": {"key": "k", "output": "quality.json", "seconds": 300.0, "result": {
            "original": {"average": 0.5, "ppl": {"python-docs": 9.5}},
            "compressed": {"average": 0.45, "ppl": {"python-docs": 12.25}}}}}))
    inside = stages.pipeline_inside(tmp_path)
    assert [(r["stage"], r["seconds"]) for r in inside["stages"]] == [("compress", 600.0), ("distill", 1200.0), ("evaluate", 300.0)]
    md = "\n".join(stages.pipeline_lines(inside))
    assert "| distill | 20.0 |" in md and "32,768 tokens at 27.5 tokens/s" in md
    assert "| compressed | 0.4500 | 12.25 |" in md and "ppl python-docs" in md


def test_export_stages_report_their_phases_from_the_manifest(tmp_path):
    arts = {"export-int4": tmp_path / "art-int4", "export-fp32": tmp_path / "art-fp32", "export-old": tmp_path / "art-old"}
    arts["export-int4"].mkdir()
    timing = {"load": 14.0, "build_and_check": 500.0, "calibration_passes": 120.4, "total": 520.0,
              "phases": {"graph": 380.0, "write": 20.0, "check": 5.0, "parity": 40.0, "quality_gate": 55.0}}
    (arts["export-int4"] / "manifest.json").write_text(json.dumps({"timing_s": timing, "calibration": {"forward_passes": 4}}))
    arts["export-old"].mkdir()  # an artifact whose manifest predates the phases: kept, but no line claimed
    (arts["export-old"] / "manifest.json").write_text(json.dumps({"timing_s": {"load": 1.0, "total": 2.0}}))
    inside = stages.exports_inside(arts)
    assert set(inside) == {"export-int4", "export-old"}  # export-fp32 has no artifact: nothing claimed
    assert inside["export-int4"] == {"timing_s": timing, "calibration": {"forward_passes": 4}}
    lines = stages.export_lines(inside)
    assert lines == ["Inside the export stages (seconds):",
                     "- export-int4: load 14, graph 380 (calibration passes 120), write 20, check 5, parity 40, "
                     "quality gate 55; total 520 s (the artifact's manifest)"]


def test_the_report_places_each_sampled_peak_and_draws_the_timelines(tmp_path):
    tl = {"interval_s": 1.0, "peak_gib": 19.1, "peak_at_s": 547.4, "log_before_peak": "edgedelta export: graph written (432.0 s)",
          "points": [[0.0, 0.3], [300.0, 14.0], [547.4, 19.1]]}
    res = {"model": "m", "command": "c", "host": "h", "args": {}, "skipped": [], "rss": None,
           "stages": [{"stage": "export-int4", "exit_code": 0, "killed": False, "wall_s": 550.0, "peak_rss_gib": 19.3,
                       "swapped_out_bytes": 0, "rss_timeline": tl},
                      {"stage": "eval", "exit_code": 0, "killed": False, "wall_s": 60.0, "peak_rss_gib": 12.0, "swapped_out_bytes": 0}]}
    stages.save(res, tmp_path / "stages_m")
    md = (tmp_path / "stages_m.md").read_text()
    assert "- export-int4: 19.10 GiB at 547 s, after the log line `edgedelta export: graph written (432.0 s)`" in md
    assert "chart: [stages_m_rss.png](stages_m_rss.png)" in md and (tmp_path / "stages_m_rss.png").stat().st_size > 1000
    assert "- eval:" not in md  # measured before sampling: nothing claimed
