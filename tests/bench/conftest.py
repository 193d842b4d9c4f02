"""Fixtures: see tests/artifact_fixtures.py."""

from ..artifact_fixtures import tiny_edgedelta  # noqa: F401  (pytest fixture)
