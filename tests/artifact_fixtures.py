"""A tiny random Llama and its ONNX artifact, built once per test session per exporter (~8 s);
shared by the runtime and devices tests through their conftests."""

import shutil

import pytest

_BUILT = {}


def _build(exporter, tmp_path_factory):
    if exporter not in _BUILT:
        from edgedelta.runtime.tiny import build_tiny_artifact

        _BUILT[exporter] = build_tiny_artifact(tmp_path_factory.mktemp(f"tiny-{exporter}"), exporter=exporter)
    return _BUILT[exporter]


@pytest.fixture(scope="session", params=["edgedelta", "optimum"])
def tiny_artifact(request, tmp_path_factory):
    """(model_dir, artifact_dir) of a 4-layer hidden-32 Llama with a BPE tokenizer and chat
    template, exported by edgedelta.export and by optimum's exporter (the runtime takes both)."""
    return _build(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_edgedelta(tmp_path_factory):
    """The same, exported by edgedelta.export only (for tests that need one artifact)."""
    return _build("edgedelta", tmp_path_factory)


@pytest.fixture
def artifact_copy(tiny_edgedelta, tmp_path):
    """A private copy of the artifact that a test may modify."""
    dst = tmp_path / "art"
    shutil.copytree(tiny_edgedelta[1], dst)
    return dst
