"""`edgedelta eval` on a tiny model directory: markdown to stdout, JSON out, bad input -> exit 2."""

import json

import pytest

from edgedelta.cli import main


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
