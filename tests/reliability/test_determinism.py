"""Same inputs and seed, byte-identical artifacts: compress twice (CLI), export twice (CLI),
distil twice; every file the manifest lists has the same sha256."""

from __future__ import annotations

import contextlib
import io

import torch

from edgedelta.cli import main
from edgedelta.fsutil import sha256_file
from edgedelta.manifest import read_manifest

from ..tiny import tiny_model


def _cli(argv) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    assert code == 0, err.getvalue()


def _hashes(folder) -> dict[str, str]:
    return {rel: e["sha256"] for rel, e in read_manifest(folder)["files"].items()}


def test_compress_and_export_twice_are_byte_identical(plain_dir, tmp_path):
    for i in (1, 2):
        _cli(["compress", "--model", plain_dir, "--groups", "0-1,2-3", "--rank-attn", "2", "--rank-mlp", "3", "--calib-samples", "2",
              "--out", tmp_path / f"c{i}"])
        _cli(["export", tmp_path / f"c{i}", "--out", tmp_path / f"a{i}"])
    c1, c2 = _hashes(tmp_path / "c1"), _hashes(tmp_path / "c2")
    assert c1["model.safetensors"] == c2["model.safetensors"] == sha256_file(tmp_path / "c2" / "model.safetensors")
    assert c1 == c2
    a1, a2 = _hashes(tmp_path / "a1"), _hashes(tmp_path / "a2")
    assert a1["model.onnx"] == a2["model.onnx"] and a1["model.onnx.data"] == a2["model.onnx.data"]
    assert a1 == a2


def test_distill_twice_is_byte_identical(compressed_dir, tmp_path):
    from edgedelta.distill.api import distill
    from edgedelta.distill.config import DistillConfig

    cfg = DistillConfig(tokens=128, seq_len=16, batch_size=2, seed=3, checkpoint_every=0)
    rows = torch.randint(0, 128, (16, 16), generator=torch.Generator().manual_seed(0))
    for i in (1, 2):
        distill(str(compressed_dir), cfg, tmp_path / f"d{i}", teacher=tiny_model(), train_rows=rows, progress=False, device="cpu")
    assert sha256_file(tmp_path / "d1" / "model.safetensors") == sha256_file(tmp_path / "d2" / "model.safetensors")
