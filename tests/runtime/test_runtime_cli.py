"""CLI: run streams and reports tok/s; devices lists; plan/profile tables and report; bad
input is one line on stderr and a non-zero exit."""

import pytest

from edgedelta.cli import main


def test_run_streams(tiny_edgedelta, capsys):
    assert main(["run", str(tiny_edgedelta[1]), "--prompt", "Hello", "--max-new-tokens", "8", "--provider", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "tok/s" in err and "8 tokens" in err


def test_devices_lists(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "rpi5-8gb" in out and "jetson-agx-orin-64gb" in out and "h200" in out


def test_plan_side_by_side(tiny_edgedelta, tmp_path, capsys):
    art = str(tiny_edgedelta[1])
    assert main(["plan", art, art, "--device", "rpi5-4gb", "--context", "64", "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "rpi5-4gb" in out and "fits" in out and "re-read" in out
    assert (tmp_path / "p.json").is_file()


def test_profile_report(tiny_edgedelta, tmp_path, capsys):
    rep = tmp_path / "rep"
    assert main(["profile", str(tiny_edgedelta[1]), "--device", "rpi5-4gb,h200", "--context", "40", "--new-tokens", "4",
                 "--report", str(rep), "--json", str(tmp_path / "prof.json"), "--no-save-calibration"]) == 0
    for f in ("report.md", "report.html", "memory_per_device.png", "context_memory.png", "host_measured.png"):
        assert (rep / f).stat().st_size > 0
    text = (rep / "report.md").read_text()
    assert "re-read" in text and "| rpi5-4gb |" in text


@pytest.mark.parametrize("argv,msg", [
    (["plan", "{art}", "--device", "nope", "--context", "64"], "unknown device 'nope'; known:"),
    (["plan", "{art}", "--device", "rpi5-4gb", "--context", "0"], "positive integer"),
    (["plan", "{art}", "--device", "rpi5-4gb", "--context", "100000"], "exceeds the model's maximum"),
    (["run", "{art}", "--prompt", ""], "the prompt is empty"),
    (["run", "{missing}", "--prompt", "hi"], "does not exist"),
    (["profile", "{art}", "--context", "x"], "positive integers"),
])
def test_bad_input_one_line(tiny_edgedelta, tmp_path, capsys, argv, msg):
    argv = [a.format(art=tiny_edgedelta[1], missing=tmp_path / "missing") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_checksum_mismatch_one_line(artifact_copy, capsys):
    with open(artifact_copy / "model.onnx.data", "r+b") as f:
        f.seek(10)
        f.write(b"\x00\x01\x02")
    assert main(["run", str(artifact_copy), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx.data" in err and err.count("\n") == 1
