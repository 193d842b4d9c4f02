"""bench/arena.py's summary: per-setting medians and same-round on/off ratios, and its table."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import arena  # noqa: E402


def _row(prefill: float, peak: float) -> dict:
    return {"decode_ms": 5.0, "decode_peak_mib": 100.0, "prefill_tok_s": prefill, "prefill_peak_mib": peak,
            "rss_after_prefill_mib": 110.0}


def test_ratios_are_medians_of_same_round_ratios():
    # round 2 is slow for both settings: same-round ratios 1.5, 1.5, 1.25 -> 1.5; the medians' ratio would be 400/300
    rows = {"int4@512": {"off": [_row(300, 200), _row(100, 200), _row(400, 200)],
                         "on": [_row(450, 220), _row(150, 230), _row(500, 240)]}}
    s = arena.summarize_rows(rows)["int4@512"]
    assert s["on_over_off"]["prefill_tok_s"] == 1.5
    assert s["median"]["on"]["prefill_tok_s"] == 450 and s["median"]["off"]["prefill_tok_s"] == 300
    assert abs(s["on_over_off"]["prefill_peak_mib"] - 1.15) < 1e-9
    res = {"model": "default", "threads": 2, "rounds": 3, "onnxruntime": "x", "summary": {"int4@512": s}}
    md = arena.report(res)
    assert "| int4@512 | 300 | 450 | 1.500 | 200 | 230 | 1.150 | 1.000 | 1.000 | 1.000 |" in md


def test_huge_pages_shares_the_table_and_adds_load_time(tiny_edgedelta):
    import huge_pages

    _, art = tiny_edgedelta
    on, off = huge_pages.worker(str(art), "on", 8, 1), huge_pages.worker(str(art), "off", 8, 1)
    assert on["load_s"] > 0 and on["decode_ms"] > 0 and on["prefill_peak_mib"] > 0
    rows = {"fp32@8": {"off": [off], "on": [on]}}
    res = {"model": "default", "threads": 1, "rounds": 1, "onnxruntime": "x", "summary": arena.summarize_rows(rows)}
    md = huge_pages.report(res)
    assert md.startswith("# Prepacked weights on transparent huge pages") and "load on/off |" in md
    assert f" {on['load_s'] / off['load_s']:.2f} |" in md
    assert "load on/off" not in arena.report({**res, "summary": {k: {**v, "on_over_off": {m: x for m, x in v["on_over_off"].items() if m != "load_s"}}
                                                                  for k, v in res["summary"].items()}})


def test_alternate_runs_a_fresh_process_per_label_reversing_the_order_on_odd_rounds(tmp_path):
    log, worker = tmp_path / "order", tmp_path / "worker.py"
    worker.write_text(f"import json, sys\nif sys.argv[2] == 'bad':\n    raise SystemExit(3)\n"
                      f"open({str(log)!r}, 'a').write(sys.argv[2])\nprint('noise')\nprint(json.dumps({{'x': sys.argv[2]}}))\n")

    def command(label):  # as the benchmarks call their workers: python SCRIPT --worker ARGS...
        return [sys.executable, str(worker), "--worker", label]

    assert arena.alternate(("on", "off"), 0, command) == {"on": {"x": "on"}, "off": {"x": "off"}}
    arena.alternate(("on", "off"), 1, command)
    assert log.read_text() == "onoffoffon"
    with pytest.raises(SystemExit, match="worker bad failed"):
        arena.alternate(("bad",), 0, command)
