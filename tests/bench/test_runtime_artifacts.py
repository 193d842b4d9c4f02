"""bench/runtime_artifacts.py: a built artifact is reused when its manifest records the config
asked for, with the fields left to auto (None) matching whatever they resolved to."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import runtime_artifacts  # noqa: E402

from edgedelta.export import GRAPH_REVISION, ExportConfig  # noqa: E402
from edgedelta.manifest import write_manifest  # noqa: E402


def _artifact(tmp_path, recorded: dict) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"x")
    write_manifest(tmp_path, "edgedelta-onnx", {"export_config": recorded, "graph_revision": GRAPH_REVISION})
    return tmp_path


def test_auto_fields_match_their_resolved_values_and_set_fields_must_be_equal(tmp_path):
    asked = ExportConfig(quantize="int4")  # symmetric and tune_steps auto
    art = _artifact(tmp_path, {**asked.to_dict(), "symmetric": True, "tune_steps": 50})
    assert runtime_artifacts._ok(art, asked)
    assert not runtime_artifacts._ok(art, ExportConfig(quantize="int4", tune_steps=0))  # set: must equal the record
    assert not runtime_artifacts._ok(art, ExportConfig(quantize="int8"))
    assert not runtime_artifacts._ok(tmp_path / "missing", asked)


def test_recorded_plan_or_none_with_a_note(tmp_path):
    import json

    with_plan = tmp_path / "a.json"
    with_plan.write_text(json.dumps({"artifacts": {"compress_plan": {"groups": [[1, 2]], "ranks": {"q": 8}, "ratio": 0.9}}}))
    assert runtime_artifacts.recorded_plan(with_plan) == {"groups": [[1, 2]], "ranks": {"q": 8}}
    without = tmp_path / "b.json"
    without.write_text(json.dumps({"artifacts": {"original": "x"}}))
    said = []
    assert runtime_artifacts.recorded_plan(without, log=said.append) is None
    assert "records no compress_plan" in said[0]
