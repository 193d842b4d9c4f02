"""Every CLI argument's invalid forms: one line on stderr, exit code 2 (a user error, never an
'internal error' or a traceback), and nothing written or overwritten anywhere.

Placeholders in argv: PLAIN (tiny HF folder), COMP (tiny compressed folder), ART (tiny ONNX
artifact), EXISTS (an output folder that already exists, holding a sentinel), NEW (an output
path that does not exist), MISSING (a path that does not exist), FILE (a plain text file),
EMPTY (an empty folder), LIST (a JSON file holding a list), BADJSON (a file that is not JSON)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedelta.cli import main

from .conftest import snapshot

HYP = settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def ws(rel_root, plain_dir, compressed_dir, artifact_dir):
    """The workspace: every placeholder's path. The whole of rel_root is snapshotted around
    each call, so a write anywhere (not just at --out) is caught."""
    (rel_root / "exists").mkdir(exist_ok=True)
    (rel_root / "exists" / "sentinel.txt").write_text("keep me\n")
    (rel_root / "empty").mkdir(exist_ok=True)
    (rel_root / "file.txt").write_text("not a model\n")
    (rel_root / "list.json").write_text("[1, 2, 3]\n")
    (rel_root / "bad.json").write_text("{not json")
    return {"ROOT": rel_root, "PLAIN": plain_dir, "COMP": compressed_dir, "ART": artifact_dir, "EXISTS": rel_root / "exists",
            "NEW": rel_root / "new-out", "MISSING": rel_root / "no-such-thing", "FILE": rel_root / "file.txt",
            "EMPTY": rel_root / "empty", "LIST": rel_root / "list.json", "BADJSON": rel_root / "bad.json"}


def run_cli(argv: list[str], ws: dict) -> tuple[int, list[str]]:
    """main(argv) with placeholders filled; (exit code, non-empty stderr lines)."""
    argv = [str(ws.get(a, a)) for a in argv]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def assert_user_error(argv: list[str], ws: dict, match: str | None = None) -> str:
    before = snapshot(ws["ROOT"])
    code, err = run_cli(argv, ws)
    assert code == 2, f"{argv}: exit {code}, stderr {err}"
    # progress lines may precede it (e.g. 'compressing ...'), but the error is one line, the last
    errors = [line for line in err if "error" in line.lower() or "Traceback" in line or line.startswith(" ")]
    assert errors == err[-1:], f"{argv}: expected one error line on stderr, got {err}"
    assert "internal error" not in err[-1], err[-1]
    if match:
        assert match in err[-1], err[-1]
    assert snapshot(ws["ROOT"]) == before, f"{argv}: something was written"
    return err[-1]


# --- one table of invalid forms, every subcommand -----------------------------------------------
CASES = [
    # compress
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--rank-attn", "-1", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--rank-mlp", "two", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--calib-samples", "0", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--init", "magic", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--base", "median", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--attn-only", "--mlp-only", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--target-params", "0.9", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--groups", "0-9", "--out", "NEW"],  # beyond the 4 layers
    ["compress", "--model", "PLAIN", "--groups", "0-1,1-2", "--out", "NEW"],  # overlapping
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--out", "EXISTS"],
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--out", "FILE", "--force"],
    ["compress", "--model", "MISSING", "--groups", "0-1", "--out", "NEW"],
    ["compress", "--model", "FILE", "--groups", "0-1", "--out", "NEW"],
    ["compress", "--model", "EMPTY", "--groups", "0-1", "--out", "NEW"],
    ["compress", "--model", "MISSING.gguf", "--groups", "0-1", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--config", "MISSING", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--config", "BADJSON", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--config", "LIST", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--config", "EMPTY", "--out", "NEW"],  # a folder
    ["compress", "--model", "PLAIN", "--config", "FILE", "--out", "NEW"],
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--no-such-flag", "--out", "NEW"],
    # distill
    ["distill", "COMP", "--tokens", "0", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "many", "--out", "NEW"],
    ["distill", "COMP", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--lr", "fast", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--lr", "0", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--batch-size", "0", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--recipe", "removal", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--device", "tpu", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--config", "BADJSON", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--config", "LIST", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--config", "MISSING", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--data", "MISSING", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--resume", "--out", "NEW"],
    ["distill", "COMP", "--tokens", "64", "--out", "EXISTS"],
    ["distill", "MISSING", "--tokens", "64", "--out", "NEW"],
    ["distill", "PLAIN", "--tokens", "64", "--out", "NEW"],  # not compressed
    ["distill", "COMP", "--tokens", "64", "--teacher", "MISSING", "--out", "NEW"],
    # eval
    ["eval", "PLAIN", "--tasks", "ppl", "--limit", "0"],
    ["eval", "PLAIN", "--tasks", "no_such_task"],
    ["eval", "PLAIN", "--tasks", "ppl", "--ppl-tokens", "0"],
    ["eval", "PLAIN", "--tasks", "ppl", "--batch-tokens", "0"],
    ["eval", "PLAIN", "--tasks", "ppl", "--text", "MISSING"],
    ["eval", "PLAIN", "--tasks", "arc_easy", "--task-file", "MISSING"],
    ["eval", "PLAIN", "--tasks", "arc_easy", "--task-file", "BADJSON"],
    ["eval", "PLAIN", "--tasks", "ppl", "--provider", "tpu"],
    ["eval", "MISSING", "--tasks", "ppl"],
    ["eval", "EMPTY", "--tasks", "ppl"],
    # compare
    ["compare", "--model", "PLAIN", "--target-params", "1.5", "--out", "NEW"],
    ["compare", "--model", "PLAIN", "--methods", "magic", "--out", "NEW"],
    ["compare", "--model", "PLAIN", "--tokens", "-1", "--out", "NEW"],
    ["compare", "--model", "PLAIN", "--limit", "0", "--out", "NEW"],
    ["compare", "--model", "PLAIN", "--out", "EXISTS"],
    ["compare", "--model", "PLAIN", "--recipe", "fast", "--out", "NEW"],
    ["compare", "--model", "PLAIN", "--config", "LIST", "--out", "NEW"],
    ["compare", "--model", "PLAIN", "--config", "BADJSON", "--out", "NEW"],
    # export
    ["export", "COMP", "--out", "NEW", "--dtype", "fp8"],
    ["export", "COMP", "--out", "NEW", "--quantize", "int3"],
    ["export", "COMP", "--out", "NEW", "--quantize", "int4", "--block-size", "7"],
    ["export", "COMP", "--out", "NEW", "--block-size", "x"],
    ["export", "COMP", "--out", "NEW", "--quantize", "int4", "--tune-steps", "-1"],
    ["export", "COMP", "--out", "NEW", "--tune-steps", "5"],
    ["export", "COMP", "--out", "EXISTS"],
    ["export", "MISSING", "--out", "NEW"],
    ["export", "EMPTY", "--out", "NEW"],
    ["export", "FILE", "--out", "NEW"],
    # inspect
    ["inspect", "MISSING"],
    ["inspect", "EMPTY"],
    ["inspect", "FILE"],
    # run
    ["run", "ART", "--provider", "cpu", "--prompt", ""],
    ["run", "ART", "--provider", "cpu", "--prompt", "hi", "--max-new-tokens", "0"],
    ["run", "ART", "--provider", "cpu", "--prompt", "hi", "--sample", "--temperature", "0"],
    ["run", "ART", "--provider", "cpu", "--prompt", "hi", "--sample", "--temperature", "nan"],
    ["run", "ART", "--provider", "cpu", "--prompt", "hi", "--top-k", "-1"],
    ["run", "ART", "--provider", "cpu", "--prompt", "hi", "--top-p", "1.5"],
    ["run", "ART", "--provider", "cpu", "--prompt", "hi", "--threads", "0"],
    ["run", "ART", "--provider", "tpu", "--prompt", "hi"],
    ["run", "MISSING", "--provider", "cpu", "--prompt", "hi"],
    ["run", "PLAIN", "--provider", "cpu", "--prompt", "hi"],
    # profile
    ["profile", "ART", "--no-measure", "--context", "0"],
    ["profile", "ART", "--no-measure", "--context", "abc"],
    ["profile", "ART", "--no-measure", "--new-tokens", "0"],
    ["profile", "ART", "--provider", "tpu"],
    ["profile", "ART", "--no-measure", "--device", "toaster-9000"],
    ["profile", "ART", "--no-measure", "--devices-dir", "MISSING"],
    ["profile", "MISSING", "--no-measure"],
    # devices
    ["devices", "--devices-dir", "MISSING"],
    ["devices", "--devices-dir", "FILE"],
    # plan
    ["plan", "ART", "--context", "abc"],
    ["plan", "ART", "--context", ","],
    ["plan", "ART", "--batch", "0"],
    ["plan", "ART", "--calibration", "MISSING"],
    ["plan", "ART", "--calibration", "BADJSON"],
    ["plan", "ART", "--calibration", "LIST"],
    ["plan", "ART", "--device", "toaster-9000"],
    ["plan", "ART", "--json", "EMPTY"],
    ["plan", "PLAIN"],
    ["plan", "MISSING"],
    # pipeline
    ["pipeline", "--model", "MISSING", "--quick", "--out", "NEW"],
    ["pipeline", "--model", "FILE", "--quick", "--out", "NEW"],
    ["pipeline", "--model", "PLAIN", "--quick", "--out", "FILE"],
    ["pipeline", "--model", "PLAIN", "--quick", "--devices", "", "--out", "NEW"],
    ["pipeline", "--model", "PLAIN", "--quick", "--contexts", "a,b", "--out", "NEW"],
    ["pipeline", "--model", "PLAIN", "--quick", "--recipe", "removal", "--out", "NEW"],
    ["pipeline", "--model", "PLAIN", "--quick", "--config", "LIST", "--out", "NEW"],
    ["pipeline", "--model", "PLAIN", "--quick", "--config", "MISSING", "--out", "NEW"],
    # no subcommand / unknown subcommand
    ["frobnicate"],
]


@pytest.mark.parametrize("argv", CASES, ids=lambda a: " ".join(a))
def test_invalid_argument_is_one_line_and_writes_nothing(argv, ws):
    assert_user_error(argv, ws)


def test_existing_output_is_not_overwritten(ws):
    """A refused run leaves the existing output exactly as it was (content and mtime)."""
    for argv in (["compress", "--model", "PLAIN", "--groups", "0-1", "--out", "EXISTS"], ["export", "COMP", "--out", "EXISTS"],
                 ["distill", "COMP", "--tokens", "64", "--out", "EXISTS"]):
        assert_user_error(argv, ws, match="already exists")
    assert (ws["EXISTS"] / "sentinel.txt").read_text() == "keep me\n"


# --- property-based: numbers, lists, paths --------------------------------------------------
def _num_text(x: float) -> str:
    return repr(x) if not math.isnan(x) else "nan"


not_a_fraction = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 0 < x < 1).map(_num_text),
    st.text(alphabet=string.ascii_letters + "%,_ ", min_size=1, max_size=8).filter(lambda s: s.strip() and not s.strip().lower().startswith(("nan", "inf"))),
)
not_positive = st.one_of(st.integers(max_value=0).map(str), st.floats(allow_nan=False).filter(lambda x: x != int(x) if math.isfinite(x) else True).map(repr),
                         st.sampled_from(["", "ten", "1e3x", "0x", "-"]))  # "--" itself: argparse turns "--opt=--" into [] (CPython quirk)


@HYP
@given(v=not_a_fraction)
def test_fractions(ws, v):
    for cmd in (["compress", "--model", "PLAIN"], ["pipeline", "--model", "PLAIN", "--quick"], ["compare", "--model", "PLAIN"]):
        assert_user_error(cmd + [f"--target-params={v}", "--out", "NEW"], ws)


@HYP
@given(v=not_positive)
def test_positive_integers(ws, v):
    for argv in (["compress", "--model", "PLAIN", "--groups", "0-1", f"--calib-samples={v}", "--out", "NEW"],
                 ["distill", "COMP", f"--tokens={v}", "--out", "NEW"],
                 ["run", "ART", "--provider", "cpu", "--prompt", "hi", f"--max-new-tokens={v}"],
                 ["plan", "ART", f"--batch={v}"],
                 ["eval", "PLAIN", "--tasks", "ppl", f"--limit={v}"],
                 ["profile", "ART", "--no-measure", f"--new-tokens={v}"]):
        assert_user_error(argv, ws)


@HYP
@given(v=st.one_of(st.integers(max_value=-1).map(str), st.text(alphabet="xyz.-", min_size=1, max_size=5)))
def test_ranks(ws, v):
    for flag in ("--rank-attn", "--rank-mlp"):
        assert_user_error(["compress", "--model", "PLAIN", "--groups", "0-1", f"{flag}={v}", "--out", "NEW"], ws)


def _bad_groups():
    """Text that is not a valid sharing plan for a 4-layer model."""
    pair = st.tuples(st.integers(-3, 12), st.integers(-3, 12))
    well_formed_but_wrong = st.lists(pair, min_size=1, max_size=3).map(lambda ps: ",".join(f"{a}-{b}" for a, b in ps)).filter(
        lambda s: not _valid_groups(s))
    junk = st.text(alphabet="0123456789-,; a", min_size=0, max_size=8).filter(lambda s: not _valid_groups(s))
    return st.one_of(well_formed_but_wrong, junk)


def _valid_groups(text: str) -> bool:
    try:
        groups = [tuple(int(x) for x in part.split("-")) for part in text.split(",")]
    except ValueError:
        return False
    used = set()
    for g in groups:
        if len(g) != 2 or not 0 <= g[0] < g[1] <= 3:
            return False
        span = set(range(g[0], g[1] + 1))
        if used & span:
            return False
        used |= span
    return True


@HYP
@given(v=_bad_groups())
def test_groups(ws, v):
    assert_user_error(["compress", "--model", "PLAIN", f"--groups={v}", "--out", "NEW"], ws)


bad_int_list = st.one_of(
    st.lists(st.integers(-5, 4096), min_size=1, max_size=4).filter(lambda xs: any(x <= 0 for x in xs)).map(lambda xs: ",".join(map(str, xs))),
    st.text(alphabet="abc,.; ", min_size=1, max_size=6),
)


@HYP
@given(v=bad_int_list)
def test_context_lists(ws, v):
    assert_user_error(["plan", "ART", f"--context={v}"], ws)
    assert_user_error(["pipeline", "--model", "PLAIN", "--quick", f"--contexts={v}", "--out", "NEW"], ws)


path_part = st.text(alphabet=string.ascii_letters + string.digits + "._- ", min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@HYP
@given(parts=st.lists(path_part, min_size=1, max_size=3))
def test_missing_paths(ws, parts):
    """Any path that does not exist, in every positional or --model/--config slot."""
    p = str(Path(ws["MISSING"], *parts))
    for argv in (["compress", "--model", p, "--groups", "0-1", "--out", "NEW"],
                 ["compress", "--model", "PLAIN", "--config", p, "--out", "NEW"],
                 ["distill", p, "--tokens", "64", "--out", "NEW"],
                 ["export", p, "--out", "NEW"],
                 ["inspect", p], ["plan", p], ["run", p, "--provider", "cpu", "--prompt", "hi"],
                 ["eval", p, "--tasks", "ppl"]):
        assert_user_error(argv, ws)


@HYP
@given(content=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode),
                         st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                      lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                      max_leaves=6).map(lambda o: json.dumps(o).encode())))
def test_malformed_config_files(ws, content):
    """A compress or distill --config file with arbitrary bytes or arbitrary JSON: refused as a user error.
    A config file that happens to be valid (e.g. {}) is still refused: compress for lack of a plan,
    distill because --tokens=0 (a valid distill config file alone would start training)."""
    with tempfile.NamedTemporaryFile(suffix=".json", dir=ws["ROOT"].parent, delete=False) as f:
        f.write(content)
    try:
        assert_user_error(["compress", "--model", "PLAIN", "--config", f.name, "--out", "NEW"], ws)
        assert_user_error(["distill", "COMP", "--config", f.name, "--tokens=0", "--out", "NEW"], ws)
    finally:
        Path(f.name).unlink()


DISTILL_FLOATS = ["lr", "recon_lr", "min_lr_ratio", "warmup_frac", "p0", "ramp_frac", "weight_decay", "clip", "temperature",
                  "kl_weight", "hidden_weight", "lm_weight"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1"])
def test_distill_floats_must_be_finite(ws, value):
    """Every float of DistillConfig, in a --config file (and --lr as a flag): a non-finite or
    negative value is refused before training (an infinite kl_weight or temperature once
    trained a model of NaNs and saved it, exit 0)."""
    assert_user_error(["distill", "COMP", "--tokens", "64", f"--lr={value}", "--out", "NEW"], ws)
    for name in DISTILL_FLOATS:
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=ws["ROOT"].parent, delete=False) as f:
            f.write(f'{{"{name}": {value if value != "nan" else "NaN"}}}'.replace("inf", "Infinity"))
        try:
            assert_user_error(["distill", "COMP", "--tokens", "64", "--config", f.name, "--out", "NEW"], ws)
        finally:
            Path(f.name).unlink()


def test_diverged_training_writes_no_model(ws, tmp_path):
    """A finite but absurd learning rate (1e30: Adam steps of ~1e30 overflow float32 activations)
    makes the weights non-finite: refused, no output folder."""
    out, text = tmp_path / "out", tmp_path / "text.txt"
    text.write_text("Check the pump bearing before the motor overheats. " * 20)
    (tmp_path / "seq16.json").write_text('{"seq_len": 16}')
    code, err = run_cli(["distill", "COMP", "--tokens", "64", "--config", str(tmp_path / "seq16.json"), "--batch-size", "2", "--data", str(text),
                         "--lr", "1e30", "--no-progress", "--out", str(out)], ws)
    assert code == 2 and "diverged" in err[-1], err
    assert not out.exists()
