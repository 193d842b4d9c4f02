"""Fixtures: see tests/artifact_fixtures.py."""

from ..artifact_fixtures import artifact_copy, edgedelta_artifacts, tiny_artifact, tiny_edgedelta  # noqa: F401  (pytest fixtures)
