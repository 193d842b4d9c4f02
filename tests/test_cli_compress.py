"""`edgedelta compress` from the command line: a real run on a tiny model, and every bad
input as one line on stderr, exit code 2, nothing written."""

import json
import re

import pytest

from edgedelta.cli import main

from .tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m") / "tiny"
    tiny_model("llama", layers=6).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def _one_line_error(capsys, code):
    """Exit 2, no traceback, and exactly one error line, the last one (progress output
    before it, e.g. a calibration bar, is allowed)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert not any("Traceback" in line for line in err), err
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and err[-1] == errors[0], err
    return errors[0]


def test_compress_groups_and_reload(model_dir, tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["compress", "--model", str(model_dir), "--groups", "1-2,3-4", "--rank-attn", "2", "--rank-mlp", "4", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(r"groups \(2\): \[1\*?,2\*?\] \[3\*?,4\*?\]  \(\* = anchor", printed) and "unique parameters" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["compress_config"]["groups"] == [[1, 2], [3, 4]]
    assert manifest["source"]["kind"] == "hf"
    from edgedelta.loading import load_model

    assert load_model(out).source["kind"] == "compressed"


def test_compress_target_params(model_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compress", "--model", str(model_dir), "--target-params", "0.9", "--calib-samples", "2", "--out", str(out)]) == 0
    plan = json.loads((out / "manifest.json").read_text())["plan"]
    assert plan["compressed_params"] <= 0.9 * plan["original_params"]


def test_compress_drop_layers_prints_original_numbering(model_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compress", "--model", str(model_dir), "--groups", "1-2", "--drop-layers", "2", "--rank-attn", "2",
                 "--rank-mlp", "2", "--calib-samples", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / "manifest.json").read_text())["plan"]
    assert len(plan["removed_layers"]) == 2 and not {1, 2} & set(plan["removed_layers"])
    assert f"removed layers (2): {plan['removed_layers'][0]}, {plan['removed_layers'][1]}" in printed
    assert re.search(r"groups \(1\): \[1\*?,2\*?\]", printed)  # the original layers, not the renumbered ones


def test_compress_drop_layers_auto_prints_the_search(model_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compress", "--model", str(model_dir), "--target-params", "0.8", "--drop-layers", "auto", "--rank-attn", "2",
                 "--rank-mlp", "2", "--calib-samples", "2", "--out", str(out)]) == 0
    search = json.loads((out / "manifest.json").read_text())["plan"]["drop_search"]
    assert search["kl"]["0"] >= search["kl"][str(search["chosen"])] and len(search["kl"]) >= 2
    assert f"; kept {search['chosen']}" in capsys.readouterr().out


@pytest.mark.parametrize("extra, match", [
    (["--groups", "1-2", "--rank-attn", "999"], "exceeds"),
    (["--groups", "1-2,2-3"], "overlap"),
    (["--groups", "4-9"], "out of range"),
    (["--groups", "3-2"], "at least 2 layers"),
    (["--groups", "a-b"], "START-END"),
    (["--target-params", "0"], "between 0 and 1"),
    (["--target-params", "0.01"], "cannot be reached"),
    (["--target-params", "0.9", "--groups", "1-2"], "either"),
    (["--groups", "1-2", "--drop-layers", "-1"], "'-1' is not a layer count >= 0 or 'auto'"),
    (["--groups", "1-2", "--drop-layers", "many"], "'many' is not a layer count >= 0 or 'auto'"),
    (["--groups", "1-2", "--drop-layers", "auto"], "drop_layers 'auto' needs target_params"),
    (["--groups", "1-2", "--drop-layers", "5"], "drop_layers 5 is too many"),
    (["--target-params", "0.9", "--drop-layers", "2"], "lower drop_layers"),
    ([], "no plan"),
    (["--groups", "1-2", "--init", "pca"], "invalid choice"),
    (["--groups", "1-2", "--calib-text", "python-docs"], "evaluation text set"),
    (["--groups", "1-2", "--calib-text", "/no/such/manuals"], "neither a known training text set"),
])
def test_bad_compress_input(model_dir, tmp_path, capsys, extra, match):
    out = tmp_path / "c"
    code = main(["compress", "--model", str(model_dir), "--out", str(out), "--calib-samples", "2"] + extra)
    assert match in _one_line_error(capsys, code)
    assert not out.exists()


def test_existing_out_refused_before_work(model_dir, tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["compress", "--model", str(model_dir), "--groups", "1-2", "--out", str(out)])
    assert "already exists" in _one_line_error(capsys, code)
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_model_inputs(tmp_path, capsys, model_dir):
    out = tmp_path / "c"
    code = main(["compress", "--model", str(tmp_path / "nope"), "--groups", "1-2", "--out", str(out)])
    assert "does not exist" in _one_line_error(capsys, code)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bad / "model.safetensors").write_bytes(b"x")
    code = main(["compress", "--model", str(bad), "--groups", "1-2", "--out", str(out)])
    assert "unsupported architecture 'bert'" in _one_line_error(capsys, code)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in model_dir.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    code = main(["compress", "--model", str(corrupt), "--groups", "1-2", "--out", str(out)])
    assert "cannot load the weights" in _one_line_error(capsys, code)
    assert not out.exists()


def test_bad_config_file(model_dir, tmp_path, capsys):
    cfg = tmp_path / "plan.json"
    cfg.write_text('{"groups": [[1, 2]], "rank_atn": 4}')
    code = main(["compress", "--model", str(model_dir), "--config", str(cfg), "--out", str(tmp_path / "c")])
    assert "unknown compress config field" in _one_line_error(capsys, code)
    cfg.write_text("{not json")
    code = main(["compress", "--model", str(model_dir), "--config", str(cfg), "--out", str(tmp_path / "c")])
    assert "not valid JSON" in _one_line_error(capsys, code)
