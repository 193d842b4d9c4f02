"""Fixtures: see tests/artifact_fixtures.py; and cuda_request, what Session.from_dir asks of
ONNX Runtime's CUDA provider (no GPU here: ORT is stopped at session creation)."""

import pytest

from ..artifact_fixtures import artifact_copy, edgedelta_artifacts, tiny_artifact, tiny_edgedelta  # noqa: F401  (pytest fixtures)


@pytest.fixture
def cuda_request(monkeypatch):
    """cuda_request(path, **from_dir kwargs) -> the providers list Session.from_dir passed to
    ORT for provider 'cuda', with CUDA taken as available and session creation refused."""
    import onnxruntime as ort

    import edgedelta.runtime.session as session_mod
    from edgedelta.errors import ModelLoadError
    from edgedelta.runtime import Session

    asked = []

    def refuse(path, sess_options=None, providers=None):
        asked.append(providers)
        raise RuntimeError("no GPU in this test")

    monkeypatch.setattr(session_mod, "resolve_provider", lambda p: "cuda")
    monkeypatch.setattr(ort, "InferenceSession", refuse)

    def request(path, **kw):
        with pytest.raises(ModelLoadError, match="no GPU in this test"):
            Session.from_dir(path, provider="cuda", tokenizer=None, **kw)
        return asked[-1]

    return request
