"""bench/planner_check.py: the uncalibrated prediction against a measured run, and its table;
a missing artifact is a one-line error before anything runs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import planner_check  # noqa: E402


def test_rows_compare_the_uncalibrated_plan_with_the_measured_peak(tiny_edgedelta):
    from edgedelta.devices.host import host_device
    from edgedelta.devices.planner import DEFAULT_OVERHEAD_BYTES, facts_of, plan_facts
    from edgedelta.runtime.artifact import Artifact

    art = Path(tiny_edgedelta[1])
    rows = planner_check.check([art], [16])
    (r,) = rows
    assert r["context"] == 16 and r["peak_rss_bytes"] > 0 and r["terms"]["overhead"] == DEFAULT_OVERHEAD_BYTES
    expect = plan_facts(facts_of(Artifact.open(art)), host_device(), 16, prefill=r["prompt_tokens"]).predicted_peak_bytes
    assert r["predicted_peak_bytes"] == expect and abs(r["error"] - (expect / r["peak_rss_bytes"] - 1)) < 1e-12
    md = planner_check.report({"machine": "x", "onnxruntime": "v", "new_tokens": 8, "rows": rows})
    assert f"| 16 | {r['peak_rss_bytes'] / 2**20:.0f} | {expect / 2**20:.0f} | {r['error']:+.1%} |" in md


def test_missing_artifact_is_one_line_before_work(tmp_path, capsys):
    assert planner_check.main(["--artifacts", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no artifact at" in err[0] and "nope" in err[0]
