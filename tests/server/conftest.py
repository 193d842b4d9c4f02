"""Fixtures: the serve tests' tiny artifact and a shared live server (tests/server/live.py)."""

import pytest

from .live import API_KEY, Server


@pytest.fixture(scope="session")
def serve_artifact(tmp_path_factory):
    """A 4-layer hidden-64 Llama with a 2,048-token context as an artifact: head_dim 16, so its
    graph uses GroupQueryAttention with an in-place KV cache and the server batches
    continuously, as on a real model."""
    from ..tiny_artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("serve"), exporter="edgedelta", hidden=64, max_positions=2048)[1]


@pytest.fixture(scope="session")
def plain_serve_artifact(tmp_path_factory):
    """The same model at hidden 32 (head_dim 8): a plain attention graph whose KV cache is
    concatenated, which the server batches statically."""
    from ..tiny_artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("serve-plain"), exporter="edgedelta", max_positions=2048)[1]


@pytest.fixture(scope="module")
def server(serve_artifact, tmp_path_factory):
    """A server shared by a module's tests, with an API key."""
    srv = Server(serve_artifact, tmp_path_factory.mktemp("srv"), "--api-key", API_KEY).wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()
