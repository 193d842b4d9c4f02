"""Outputs built in private temporary paths (mkstemp 0600, mkdtemp 0700) end up with the mode
an ordinary write would give them under the process's umask, so another account (a service
user, a device's runtime) can read an artifact or a JSON written by another."""

from __future__ import annotations

import os
import stat

import pytest

from edgedelta.fsutil import atomic_dir, write_json_atomic, write_text_atomic


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_writes_take_the_umask_mode(tmp_path, umask):
    write_text_atomic(tmp_path / "a.txt", "x")
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    with atomic_dir(tmp_path / "art") as tmp:
        (tmp / "f").write_text("y")
    plain = tmp_path / "plain.txt"
    plain.write_text("z")
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.json") == mode(plain) == 0o666 & ~umask
    assert mode(tmp_path / "art") == 0o777 & ~umask
    assert (tmp_path / "art" / "f").read_text() == "y"
