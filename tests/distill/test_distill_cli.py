"""`edgedelta distill` on tiny on-disk models: success path and one-line errors."""

import pytest
import torch

from edgedelta.cli import main
from edgedelta.delta.storage import load_compressed, save_compressed
from edgedelta.manifest import read_manifest

from .common import make_pair, make_text, make_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = make_tokenizer()
    teacher, student = make_pair()
    tdir, sdir, odir = root / "teacher", root / "student", root / "other"
    for model, d in ((teacher, tdir), (make_pair(seed=9)[0], odir)):
        model.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
    save_compressed(student, sdir, tokenizer=tok, manifest_facts={"source": {"kind": "hf", "path": str(tdir)}})
    (root / "text.txt").write_text(make_text())
    (root / "empty").mkdir()
    return root


def _run(capsys, *argv):
    rc = main(["distill", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_distills_with_user_text(dirs, capsys):
    out = dirs / "out"
    rc, so, se = _run(capsys, dirs / "student", "--tokens", 256, "--seq-len", 16, "--batch-size", 4, "--data", dirs / "text.txt",
                      "--schedule", "curriculum", "--recon-tokens", 32, "--recon-epochs", 1, "--lr", 3e-3, "--out", out, "--no-progress")
    assert rc == 0, se
    assert "distilled 256 tokens in 4 steps" in so and "reconstruction group [1, 2]" in so
    m = read_manifest(out)
    assert m["distill"]["config"]["schedule"] == "curriculum" and m["source"]["path"] == str(dirs / "teacher")
    assert load_compressed(out).model.edgedelta_spec.groups == [[1, 2]]
    # running again without --force refuses to overwrite
    rc, _, se = _run(capsys, dirs / "student", "--tokens", 256, "--seq-len", 16, "--data", dirs / "text.txt", "--out", out)
    assert rc == 2 and "already exists" in se and se.count("\n") == 1


@pytest.mark.parametrize("extra,msg", [
    (["--tokens", "0"], "tokens must be > 0"),
    (["--tokens", "64", "--data", "EMPTY"], "no text found"),
    (["--tokens", "64", "--data", "sotu-recent"], "evaluation text set"),
    (["--tokens", "64", "--data", "TEXT", "--teacher", "OTHER"], "not made from this teacher"),
    (["--tokens", "64", "--trainable", "deltas,weights"], "trainable"),
    ([], "--tokens N is required"),
])
def test_cli_bad_input_is_one_line(dirs, capsys, extra, msg):
    sub = {"EMPTY": str(dirs / "empty"), "TEXT": str(dirs / "text.txt"), "OTHER": str(dirs / "other")}
    extra = [sub.get(e, e) for e in extra]
    rc, _, se = _run(capsys, dirs / "student", "--seq-len", 16, "--out", dirs / "never", *extra)
    assert rc == 2 and msg in se and se.count("\n") == 1, se
    assert not (dirs / "never").exists() and not (dirs / "never.run").exists()
