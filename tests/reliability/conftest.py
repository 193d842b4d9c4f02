"""Shared tiny inputs for the reliability suite: a plain model folder, a compressed one and an
ONNX artifact, each built once per session (read-only: tests that tamper copy them first)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..tiny import tiny_ids, tiny_model, tiny_tokenizer



@pytest.fixture(scope="session")
def rel_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def plain_dir(rel_root) -> Path:
    d = rel_root / "plain"
    tiny_model().save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def compressed_dir(rel_root) -> Path:
    from edgedelta.delta.compress import compress
    from edgedelta.delta.config import CompressConfig
    from edgedelta.delta.storage import save_compressed

    res = compress(tiny_model(), CompressConfig(groups=[[0, 1]], rank_attn=2, rank_mlp=2), calib_ids=tiny_ids(), progress=False)
    facts = {"source": {"kind": "hf", "path": str(rel_root / "plain")}}
    return save_compressed(res.model, rel_root / "compressed", tokenizer=tiny_tokenizer(), manifest_facts=facts)


@pytest.fixture(scope="session")
def artifact_dir(rel_root, compressed_dir) -> Path:
    from edgedelta.export import ExportConfig, export_onnx

    return Path(export_onnx(compressed_dir, ExportConfig(), rel_root / "artifact"))


def copy_of(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of everything under `folder`: 'nothing written or
    overwritten' is snapshot(before) == snapshot(after)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}
