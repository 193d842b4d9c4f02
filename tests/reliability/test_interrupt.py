"""Interruption, fast and representative (the random kill loop over compress / distill / export /
pipeline is bench/faults.py): `edgedelta export` in a subprocess is killed while its output is
half-built. SIGTERM unwinds and removes the temporary folder; SIGKILL cannot, but the output
path stays absent (never half-written) and the next run completes cleanly and removes the
dead run's temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedelta.manifest import verify_manifest

REPO = Path(__file__).resolve().parents[2]


def _cli(*argv) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "edgedelta.cli", *map(str, argv)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


def _kill_when_half_built(proc: subprocess.Popen, out: Path, sig: int, timeout: float = 240) -> None:
    """Send `sig` as soon as the temporary output folder has a file in it (mid-write)."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if any(any(p.iterdir()) for p in _partials(out) if p.is_dir()):
            proc.send_signal(sig)
            return
        time.sleep(0.01)
    pytest.fail(f"export finished or hung before it could be interrupted: rc={proc.poll()}")


def test_export_killed_mid_write_leaves_no_half_artifact(compressed_dir, tmp_path):
    """SIGTERM then SIGKILL, each while the artifact is half-built, then a clean run."""
    out = tmp_path / "art"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = _cli("export", compressed_dir, "--out", out)
        _kill_when_half_built(proc, out, sig)
        _, err = proc.communicate(timeout=120)
        assert not out.exists(), f"{sig.name}: a half-written artifact at the output path"
        if sig == signal.SIGTERM:
            assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err)
            assert _partials(out) == [], "SIGTERM must remove the temporary folder"
        else:
            assert proc.returncode == -signal.SIGKILL
            assert _partials(out), "SIGKILL cannot clean up: its temporary folder stays (hidden, beside the output)"
    # the next run completes cleanly, whatever SIGKILL left behind
    proc = _cli("export", compressed_dir, "--out", out, "--no-validate")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    verify_manifest(out)
    assert _partials(out) == [], "the next run removes the dead run's temporary folder"
