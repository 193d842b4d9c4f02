"""Fixtures: see tests/bpe_tiny.py."""

from ..bpe_tiny import model_dir, tiny_model, tiny_tok  # noqa: F401  (pytest fixtures)
