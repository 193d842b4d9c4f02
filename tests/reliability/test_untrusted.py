"""Untrusted files: nothing is ever unpickled, a pickle in a model folder is refused or ignored
with a warning (and never executed), and the manifest check runs before any weight is used."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import pickle
from pathlib import Path

import pytest

from edgedelta.cli import main

from .conftest import copy_of

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("edgedelta", "export", "runtime", "devices", "bench", "scripts", "tests")


def _python_files():
    for d in SOURCE_DIRS:
        for p in sorted((REPO / d).rglob("*.py")):
            if "_work" not in p.parts and "results" not in p.parts:
                yield p


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def test_no_unpickling_anywhere_in_the_code():
    """Every torch.load passes weights_only=True; nothing calls pickle/dill/joblib loaders,
    np.load(allow_pickle=True), torch.jit.load or from_pretrained(trust_remote_code=True)."""
    problems, torch_loads = [], 0
    forbidden = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "dill.loads", "joblib.load",
                 "cloudpickle.load", "cloudpickle.loads", "pandas.read_pickle", "pd.read_pickle", "torch.jit.load", "marshal.loads",
                 "shelve.open"}
    for path in _python_files():
        if path == Path(__file__).resolve():
            continue  # this file builds a (harmless) pickle on purpose
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve") for n in names):
                    problems.append(f"{rel}:{node.lineno}: imports a pickle module")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name in forbidden:
                problems.append(f"{rel}:{node.lineno}: {name}(...)")
            if name.endswith("torch.load"):
                torch_loads += 1
                if _kw(node, "weights_only") is not True:
                    problems.append(f"{rel}:{node.lineno}: torch.load without weights_only=True")
            if name.endswith("np.load") or name.endswith("numpy.load"):
                if _kw(node, "allow_pickle") not in (None, False):
                    problems.append(f"{rel}:{node.lineno}: np.load(allow_pickle=...)")
            if _kw(node, "trust_remote_code") not in (None, False):
                problems.append(f"{rel}:{node.lineno}: trust_remote_code")
    assert not problems, "\n".join(problems)
    # and the plain-text grep agrees (catches `from torch import load` style too)
    for path in _python_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line and path != Path(__file__).resolve():
                problems.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not problems, "\n".join(problems)


class _Evil:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _evil_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Evil(marker)))


def _cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "training_args.pkl", "optimizer.ckpt"])
def test_pickle_beside_safetensors_is_ignored_with_a_warning(plain_dir, tmp_path, name):
    from edgedelta.loading import load_model

    d = copy_of(plain_dir, tmp_path / "m")
    marker = tmp_path / "PWNED"
    _evil_pickle(d / name, marker)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        lm = load_model(d)
    assert lm.model is not None and not marker.exists()
    assert "ignoring pickle" in err.getvalue() and name in err.getvalue()


def test_pickle_only_model_is_refused(plain_dir, tmp_path):
    d = copy_of(plain_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    _evil_pickle(d / "pytorch_model.bin", marker)
    for argv in (["compress", "--model", d, "--groups", "0-1", "--out", tmp_path / "o"], ["export", d, "--out", tmp_path / "o"],
                 ["eval", d, "--tasks", "ppl"]):
        code, err = _cli(argv)
        assert code == 2 and "never unpickles" in err, err
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["compressed", "artifact"])
def test_pickle_in_compressed_or_artifact_folder_is_never_read(compressed_dir, artifact_dir, tmp_path, kind):
    """A pickle dropped into a compressed model or an artifact (not in its manifest): the folder
    still loads from safetensors / ONNX only, the pickle is never executed, and a warning names it."""
    src = compressed_dir if kind == "compressed" else artifact_dir
    d = copy_of(src, tmp_path / kind)
    marker = tmp_path / "PWNED"
    _evil_pickle(d / "pytorch_model.bin", marker)
    argv = ["export", d, "--out", tmp_path / "o"] if kind == "compressed" else ["run", d, "--provider", "cpu", "--prompt", "hi", "--max-new-tokens", "2"]
    code, err = _cli(argv)
    assert code == 0, err
    assert not marker.exists()
    assert "pytorch_model.bin" in err and "not listed in" in err


def test_distill_checkpoints_hold_no_pickle(compressed_dir, tmp_path):
    """A distillation run folder: tensors in safetensors, state in JSON; nothing else."""
    import torch

    from edgedelta.distill.api import distill
    from edgedelta.distill.config import DistillConfig

    from ..tiny import tiny_model

    cfg = DistillConfig(tokens=64, seq_len=16, batch_size=2, checkpoint_every=1, keep_checkpoints=2)
    rows = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    distill(str(compressed_dir), cfg, None, teacher=tiny_model(), train_rows=rows, run_dir=tmp_path / "run", progress=False,
            stop_after=2)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json", ".jsonl") for p in files), files


def test_manifest_check_runs_before_any_weight_is_read(compressed_dir, artifact_dir, tmp_path, monkeypatch):
    """Order of events when loading: verify_manifest first, then safetensors / ONNX Runtime."""
    import onnxruntime

    import edgedelta.delta.storage as storage
    import edgedelta.runtime.artifact as artifact

    events: list[str] = []

    def spy(name, fn):
        def wrapped(*a, **k):
            events.append(name)
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(storage, "verify_manifest", spy("verify", storage.verify_manifest))
    monkeypatch.setattr(storage, "load_file", spy("weights", storage.load_file))
    storage.load_compressed(compressed_dir)
    assert events and events[0] == "verify" and "weights" in events, events

    events.clear()
    monkeypatch.setattr(artifact, "verify_manifest", spy("verify", artifact.verify_manifest))
    monkeypatch.setattr(onnxruntime, "InferenceSession", spy("weights", onnxruntime.InferenceSession))
    from edgedelta.runtime import Session

    Session.from_dir(artifact_dir, provider="cpu")
    assert events[:1] == ["verify"] and "weights" in events, events

    # a tampered weight: the refusal comes from the checksum, never from a half-used tensor
    comp = copy_of(compressed_dir, tmp_path / "comp")
    data = bytearray((comp / "model.safetensors").read_bytes())
    data[-4] ^= 0x01  # a value bit, not the header: only the checksum can tell
    (comp / "model.safetensors").write_bytes(bytes(data))
    events.clear()
    for argv in (["export", comp, "--out", tmp_path / "o"], ["distill", comp, "--tokens", "64", "--out", tmp_path / "o"],
                 ["eval", comp, "--tasks", "ppl"]):
        code, err = _cli(argv)
        assert code == 2 and "sha256" in err, err
    assert "weights" not in events and not (tmp_path / "o").exists()
