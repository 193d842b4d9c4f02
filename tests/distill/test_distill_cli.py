"""`edgedelta distill` on tiny on-disk models: success path and one-line errors."""

import json

import pytest
import torch

from edgedelta.cli import main
from edgedelta.delta.storage import load_compressed, save_compressed
from edgedelta.manifest import read_manifest
from edgedelta.recipes import DELTALLM, DROP_SHARE

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
    cfg = dirs / "cfg.json"
    cfg.write_text(json.dumps({"seq_len": 16, "schedule": "curriculum", "recon_tokens": 32, "recon_epochs": 1}))
    rc, so, se = _run(capsys, dirs / "student", "--tokens", 256, "--batch-size", 4, "--data", dirs / "text.txt",
                      "--config", cfg, "--lr", 3e-3, "--out", out, "--no-progress")
    assert rc == 0, se
    assert "distilled 256 tokens in 4 steps" in so and "reconstruction group [1, 2]" in so
    # no --recipe: the one measured best (the manifest records no budget: the default budget's)
    assert "recipe drop-share: measured best at keep 88%" in so
    m = read_manifest(out)
    c = m["distill"]["config"]
    assert c["schedule"] == "curriculum" and m["source"]["path"] == str(dirs / "teacher")  # the file over the recipe
    assert c["lr"] == 3e-3 and c["batch_size"] == 4  # the flags over the file
    assert c["trainable"] == list(DROP_SHARE.distill.trainable) and c["lora_rank"] == DROP_SHARE.distill.lora_rank
    assert load_compressed(out).model.edgedelta_spec.groups == [[1, 2]]
    # running again without --force refuses to overwrite
    rc, _, se = _run(capsys, dirs / "student", "--tokens", 256, "--config", cfg, "--data", dirs / "text.txt", "--out", out)
    assert rc == 2 and "already exists" in se and se.count("\n") == 1


def test_cli_recipe_sets_the_trainer(dirs, capsys):
    out = dirs / "out-deltallm"
    cfg = dirs / "cfg16.json"
    cfg.write_text(json.dumps({"seq_len": 16}))
    rc, _, se = _run(capsys, dirs / "student", "--recipe", "deltallm", "--tokens", 64, "--config", cfg, "--data", dirs / "text.txt",
                     "--out", out, "--no-progress")
    assert rc == 0, se
    c = read_manifest(out)["distill"]["config"]
    assert (c["trainable"], c["lr"], c["batch_size"], c["schedule"]) == (
        list(DELTALLM.distill.trainable), DELTALLM.distill.lr, DELTALLM.distill.batch_size, DELTALLM.distill.schedule)


@pytest.mark.parametrize("extra,msg", [
    (["--tokens", "0"], "must be > 0"),
    (["--tokens", "64", "--data", "EMPTY"], "no text found"),
    (["--tokens", "64", "--data", "sotu-recent"], "evaluation text set"),
    (["--tokens", "64", "--data", "TEXT", "--teacher", "OTHER"], "not made from this teacher"),
    (["--tokens", "64", "--config", "BADTRAIN"], "trainable"),
    (["--tokens", "64", "--recipe", "removal"], "invalid choice: 'removal'"),
    ([], "--tokens N is required"),
])
def test_cli_bad_input_is_one_line(dirs, capsys, extra, msg):
    (dirs / "badtrain.json").write_text(json.dumps({"trainable": ["deltas", "weights"]}))
    sub = {"EMPTY": str(dirs / "empty"), "TEXT": str(dirs / "text.txt"), "OTHER": str(dirs / "other"),
           "BADTRAIN": str(dirs / "badtrain.json")}
    extra = [sub.get(e, e) for e in extra]
    rc, _, se = _run(capsys, dirs / "student", "--out", dirs / "never", *extra)
    assert rc == 2 and msg in se and se.count("\n") == 1, se
    assert not (dirs / "never").exists() and not (dirs / "never.run").exists()


def test_distill_help_lists_about_twelve_flags(capsys):
    """Unmeasured knobs live in --config FILE; the flags are the measured ones."""
    assert main(["distill", "--help"]) == 0
    flags = {w.strip("[],.") for w in capsys.readouterr().out.split() if w.startswith(("--", "[--"))}
    assert flags == {"--help", "--tokens", "--recipe", "--config", "--data", "--lr", "--batch-size", "--out", "--resume",
                     "--force", "--teacher", "--device", "--no-progress"}
