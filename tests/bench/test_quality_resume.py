"""bench/quality.py --resume: it continues only a run measured with the same settings, and adds
healing to a built-only run but never mixes healing token counts."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import quality  # noqa: E402


def _write(out: Path, args: list[str], healed_tokens: int | None = None) -> None:
    rows = [{"method": "shortgpt", "stage": "built", "params": 10, "eval": {}}]
    if healed_tokens:
        rows.append({"method": "shortgpt", "stage": "healed", "params": 10, "eval": {}, "heal": {"tokens": healed_tokens}})
    res = {"args": vars(quality.parse_args(args)), "budgets": [{"target": 0.88, "rows": rows}], "seconds": 60.0,
           "original": {"eval": {}}}
    (out / "quality.json").write_text(json.dumps(res))


def test_resume_checks_the_earlier_settings(tmp_path):
    base = ["--model", "qwen2.5-coder-0.5b", "--limit", "100", "--out", str(tmp_path)]
    assert quality._earlier_run(tmp_path / "quality.json", quality.parse_args(base + ["--resume"])) is None  # nothing yet
    _write(tmp_path, base)
    res = quality._earlier_run(tmp_path / "quality.json", quality.parse_args(base + ["--resume", "--heal-tokens", "50000"]))
    assert res["budgets"][0]["rows"][0]["method"] == "shortgpt"
    with pytest.raises(SystemExit, match=r"limit 100 \(now 60\)"):
        quality._earlier_run(tmp_path / "quality.json", quality.parse_args(base[:2] + ["--out", str(tmp_path), "--resume"]))
    _write(tmp_path, base, healed_tokens=49920)
    quality._earlier_run(tmp_path / "quality.json", quality.parse_args(base + ["--resume", "--heal-tokens", "50000"]))
    with pytest.raises(SystemExit, match=r"healed on \[49920\] tokens, this run heals on 100000"):
        quality._earlier_run(tmp_path / "quality.json", quality.parse_args(base + ["--resume", "--heal-tokens", "100000"]))


def test_resume_keeps_the_budgets_it_does_not_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch

    import edgedelta.loading

    base = ["--model", "qwen2.5-coder-0.5b", "--limit", "100", "--out", str(tmp_path), "--methods", "shortgpt"]
    _write(tmp_path, base)
    lm = SimpleNamespace(model=torch.nn.Linear(2, 2), tokenizer=None, source={"name": "tiny"})
    monkeypatch.setattr(edgedelta.loading, "load_model", lambda name: lm)
    seen = {}

    def fake_compare(model, tok, cfg, previous=None, on_row=None, **kw):
        seen[cfg.target_params] = previous
        on_row({"method": "shortgpt", "stage": "built", "params": 5, "eval": {}})
        return {"budget_params": 5}

    monkeypatch.setattr(quality, "compare", fake_compare)
    monkeypatch.setattr(quality, "write_report", lambda res, out: (out / "quality.md").write_text("report"))
    assert quality.main(base + ["--resume", "--budgets", "0.75"]) == 0
    res = json.loads((tmp_path / "quality.json").read_text())
    assert [b["target"] for b in res["budgets"]] == [0.88, 0.75] and seen == {0.75: None}
    assert res["budgets"][0]["rows"][0]["params"] == 10  # the earlier budget as it was
    assert len(res["runs"]) == 2 and res["runs"][-1]["budgets"] == "0.75"
    assert quality.main(base + ["--resume", "--budgets", "0.88"]) == 0  # the kept row is handed to compare, then replaced
    assert seen[0.88][0]["params"] == 10
    res = json.loads((tmp_path / "quality.json").read_text())
    assert [(r["method"], r["params"]) for r in res["budgets"][0]["rows"]] == [("shortgpt", 5)]


def test_resume_heals_a_budget_with_one_recipe(tmp_path):
    base = ["--model", "qwen2.5-coder-0.5b", "--limit", "100", "--out", str(tmp_path), "--budgets", "0.88"]
    _write(tmp_path, base)  # built rows only: any recipe may heal them
    quality._earlier_run(tmp_path / "quality.json", quality.parse_args(base + ["--resume", "--heal-tokens", "50000",
                                                                              "--recipe", "deltallm"]))
    _write(tmp_path, base, healed_tokens=49920)  # healed by the default at keep 88% (drop-share)
    quality._earlier_run(tmp_path / "quality.json", quality.parse_args(base + ["--resume", "--heal-tokens", "50000",
                                                                              "--recipe", "drop-share"]))
    with pytest.raises(SystemExit, match=r"healed its rows at keep 0.88 with recipe drop-share; this run heals with deltallm"):
        quality._earlier_run(tmp_path / "quality.json", quality.parse_args(base + ["--resume", "--heal-tokens", "50000",
                                                                                  "--recipe", "deltallm"]))
