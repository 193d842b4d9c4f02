"""bench/release_pages.py refuses bad input in one line before any work."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import release_pages  # noqa: E402


def test_a_folder_that_is_no_artifact_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not an exported artifact"):
        release_pages.main(["--artifact", str(tmp_path)])


def test_rounds_below_one_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--rounds 0"):
        release_pages.main(["--rounds", "0"])
