"""A tiny random Llama and its ONNX artifact, built once per test session per exporter (~8 s);
shared by the runtime and devices tests through their conftests."""

import shutil

import pytest

_BUILT = {}


def _build(exporter, tmp_path_factory):
    if exporter not in _BUILT:
        from .tiny_artifact import build_tiny_artifact

        # edgedelta-gqa: hidden 64 gives head_dim 16, where the exporter emits GroupQueryAttention
        # with an in-place KV cache; hidden 32 (head_dim 8) keeps the plain attention graph
        kw = {"hidden": 64} if exporter == "edgedelta-gqa" else {}
        _BUILT[exporter] = build_tiny_artifact(tmp_path_factory.mktemp(f"tiny-{exporter}"), exporter=exporter.split("-")[0], **kw)
    return _BUILT[exporter]


@pytest.fixture(scope="session", params=["edgedelta", "edgedelta-gqa", "optimum"])
def tiny_artifact(request, tmp_path_factory):
    """(model_dir, artifact_dir) of a 4-layer Llama with a BPE tokenizer and chat template,
    exported by edgedelta.export (hidden 32: plain attention; hidden 64: GroupQueryAttention)
    and by optimum's exporter (the runtime takes all three)."""
    return _build(request.param, tmp_path_factory)


@pytest.fixture(scope="session", params=["edgedelta", "edgedelta-gqa"])
def edgedelta_artifacts(request, tmp_path_factory):
    """Both edgedelta.export graphs: plain attention and GroupQueryAttention (in-place KV cache)."""
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
