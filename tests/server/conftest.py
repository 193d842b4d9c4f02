"""Fixtures: the serve tests' tiny artifact and a shared live server (tests/server/live.py)."""

import pytest

from .live import API_KEY, Server


@pytest.fixture(scope="session")
def serve_artifact(tmp_path_factory):
    """A 4-layer hidden-32 Llama (tests/artifact_fixtures.py's, with a 2,048-token context) as an artifact."""
    from ..tiny_artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("serve"), exporter="edgedelta", max_positions=2048)[1]


@pytest.fixture(scope="module")
def server(serve_artifact, tmp_path_factory):
    """A server shared by a module's tests, with an API key."""
    srv = Server(serve_artifact, tmp_path_factory.mktemp("srv"), "--api-key", API_KEY).wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()
