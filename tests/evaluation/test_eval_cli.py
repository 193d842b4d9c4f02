"""`edgedelta eval` on a tiny model directory: markdown to stdout, JSON out, bad input -> exit 2."""

import json

import pytest

from edgedelta.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tiny_tok):
    d = tmp_path_factory.mktemp("tiny")
    tiny_model.save_pretrained(d, safe_serialization=True)
    tiny_tok.save_pretrained(d)
    return d


def test_eval_cli_task_file_and_text(model_dir, tmp_path, capsys):
    tf = tmp_path / "plant.jsonl"
    tf.write_text(json.dumps({"question": "Which valve?", "choices": ["the red one", "the blue one"], "answer": 0}) + "\n")
    txt = tmp_path / "log.txt"
    txt.write_text("Maintenance log: replaced filter, cleaned sensor. " * 40)
    out = tmp_path / "r.json"
    rc = main(["eval", str(model_dir), "--tasks", "ppl,piqa", "--limit", "2", "--task-file", str(tf),
               "--text", str(txt), "--ppl-tokens", "512", "--json", str(out), "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| piqa |" in stdout and "| file:plant |" in stdout and "perplexity text:" in stdout and str(txt) in stdout
    res = json.loads(out.read_text())
    assert res["tasks"]["piqa"]["n"] == 2 and "acc_stderr" in res["tasks"]["piqa"]
    assert res["model"]["kind"] == "hf" and res["ppl"][str(txt)]["tokens"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["eval", "MODEL", "--tasks", "mmlu"], "unknown task(s) mmlu; known:"),
    (["eval", "MODEL", "--limit", "0"], "--limit must be a positive"),
    (["eval", "MODEL", "--limit", "-3"], "--limit must be a positive"),
    (["eval", "NOTAMODEL", "--tasks", "arc_easy"], "not a model directory"),
    (["eval", "MODEL", "--task-file", "/nonexistent.jsonl"], "does not exist"),
])
def test_eval_cli_bad_input(model_dir, tmp_path, capsys, argv, msg):
    argv = [a.replace("NOTAMODEL", str(tmp_path)).replace("MODEL", str(model_dir)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra,msg", [
    (["--target-params", "1.5"], "fraction in (0, 1)"),
    (["--methods", "shortgpt,slicegpt"], "unknown method(s) ['slicegpt']"),
    (["--limit", "0"], "--limit must be a positive"),
    (["--tasks", "mmlu"], "unknown task(s) mmlu"),
    (["--model", "NOTAMODEL"], "not a model directory"),
])
def test_compare_cli_bad_input(tmp_path, capsys, extra, msg):
    argv = ["compare", "--out", str(tmp_path / "out")] + [a.replace("NOTAMODEL", str(tmp_path)) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_compare_cli_refuses_existing_out(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["compare", "--model", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "--force" in capsys.readouterr().err


def test_compare_cli_tiny_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--model", str(model_dir), "--target-params", "0.8", "--methods", "deltallm,shortgpt",
               "--tasks", "arc_easy", "--limit", "3", "--calib-samples", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert res["budget_params"] == rows["deltallm"]["params"]  # the delta model sets the baselines' target
    assert rows["shortgpt"]["report"]["target_params"] == rows["deltallm"]["params"]
    assert rows["shortgpt"]["eval"]["tasks"]["arc_easy"]["n"] == 3
    md = (out / "results.md").read_text()
    assert "| deltallm |" in md and "| shortgpt |" in md
    assert "| shortgpt |" in capsys.readouterr().out
