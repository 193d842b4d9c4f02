"""`edgedelta compare`: bad input -> one line, exit 2; end to end on a tiny model directory."""

import json

import pytest

from edgedelta.cli import main


@pytest.mark.parametrize("extra,msg", [
    (["--target-params", "1.5"], "fraction in (0, 1)"),
    (["--methods", "shortgpt,wanda"], "unknown method(s) ['wanda']"),
    (["--limit", "0"], "--limit must be a positive"),
    (["--tasks", "mmlu"], "unknown task(s) mmlu"),
    (["--model", "NOTAMODEL"], "not a model directory"),
    (["--recipe", "removal"], "argument --recipe: invalid choice: 'removal'"),
    (["--config", "DROP0"], "drop_layers must be a whole number >= 1 or 'auto', got 0"),
    (["--config", "UNKNOWN"], "unknown compare config field(s) ['heal_lr']"),
])
def test_compare_cli_bad_input(tmp_path, capsys, extra, msg):
    (tmp_path / "drop0.json").write_text('{"drop_layers": 0}')
    (tmp_path / "unknown.json").write_text('{"heal_lr": 0.001}')
    sub = {"NOTAMODEL": str(tmp_path), "DROP0": str(tmp_path / "drop0.json"), "UNKNOWN": str(tmp_path / "unknown.json")}
    argv = ["compare", "--out", str(tmp_path / "out")] + [sub.get(a, a) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_compare_cli_refuses_existing_out(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["compare", "--model", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "--force" in capsys.readouterr().err


def test_compare_cli_tiny_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    (tmp_path / "cfg.json").write_text('{"calib_samples": 2}')
    rc = main(["compare", "--model", str(model_dir), "--target-params", "0.8", "--methods", "deltallm,shortgpt",
               "--tasks", "arc_easy", "--limit", "3", "--config", str(tmp_path / "cfg.json"), "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert res["budget_params"] == rows["deltallm"]["params"]  # the delta model sets the baselines' target
    assert rows["shortgpt"]["report"]["target_params"] == rows["deltallm"]["params"]
    assert rows["shortgpt"]["eval"]["tasks"]["arc_easy"]["n"] == 3
    assert res["config"]["calib_samples"] == 2 and res["config"]["recipe"] == "drop-share"  # measured best at 0.8's nearest budget
    md = (out / "results.md").read_text()
    assert "| deltallm |" in md and "| shortgpt |" in md
    assert "| shortgpt |" in capsys.readouterr().out
