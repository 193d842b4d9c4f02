"""Tiny model directories and their artifacts, built once per test module."""

import pytest

from tests.tiny_compressed import tiny_compressed_dir, tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """{'plain': dir, 'compressed': dir} for a tiny Llama (tied embeddings, GQA 4/2)."""
    root = tmp_path_factory.mktemp("tiny_src")
    return {"plain": tiny_model_dir(root / "plain", "llama"), "compressed": tiny_compressed_dir(root / "comp", "llama")}


@pytest.fixture(scope="module")
def compressed_artifact(tiny_dirs, tmp_path_factory):
    from edgedelta.export import ExportConfig, export_onnx

    return export_onnx(tiny_dirs["compressed"], ExportConfig(), tmp_path_factory.mktemp("art") / "art")

