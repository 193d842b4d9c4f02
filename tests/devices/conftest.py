"""A tiny random Llama and its ONNX artifact, built once per test session (~8 s)."""

import shutil

import pytest


@pytest.fixture(scope="session", params=["edgedelta", "optimum"])
def tiny_artifact(request, tmp_path_factory):
    """(model_dir, artifact_dir) of a 4-layer hidden-32 Llama with a BPE tokenizer and chat
    template, exported by edgedelta.export and by optimum's exporter (the runtime takes both)."""
    from edgedelta.runtime.tiny import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("tiny"), exporter=request.param)


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    """A private copy of the artifact that a test may modify."""
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact[1], dst)
    return dst
