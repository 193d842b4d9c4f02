"""bench/gram_precision.py on a tiny model: both Grams gathered from the same inputs, a
bfloat16 Hessian close to the float32 one, and GPTQ judged by the float32 Hessian."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gram_precision  # noqa: E402
from tiny_compressed import tiny_model_dir  # noqa: E402


def test_measures_both_grams_and_writes_json_and_md(tmp_path):
    src = tiny_model_dir(tmp_path / "tiny", "llama", hidden=64)
    assert gram_precision.main(["--model", str(src), "--layer", "1", "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "gram_precision_tiny.json").read_text())
    assert [r["projection"] for r in res["rows"]] == list(gram_precision.PROJECTIONS)
    for r in res["rows"]:
        assert 0 < r["hessian_rel_diff"] < 0.02  # bfloat16 products: near, never identical
        assert 0 < r["gptq_output_err"]["fp32"] < 1 and 0.8 < r["gptq_output_err_ratio"] < 1.25
        assert r["seconds"]["fp32"] > 0 and r["seconds"]["bf16"] > 0
    assert "| mlp.down_proj |" in (tmp_path / "out" / "gram_precision_tiny.md").read_text()
