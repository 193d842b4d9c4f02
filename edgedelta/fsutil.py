"""Filesystem helpers: nothing half-written. Outputs are built in a temporary sibling
folder and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, OutputExistsError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    """The process's umask, read without changing it (Linux reports it in /proc)."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)  # elsewhere: set and restore
        os.umask(mask)
        return mask


def as_created(path: str | os.PathLike, mode: int) -> None:
    """Give a mkstemp/mkdtemp path (private: 0600/0700) the mode an ordinary open() or mkdir()
    would have given it, so an output renamed into place is readable as any other file of its
    user (a service account, a bundle copied to a device)."""
    os.chmod(path, mode & ~_umask())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and an atomic rename:
    an interrupted write never leaves a truncated file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        as_created(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to `path` atomically (see write_text_atomic)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_creatable(out: str | os.PathLike) -> Path:
    """Refuse at once an output that cannot be created: one of its folders is a file, or the
    nearest folder that exists is not writable (outputs are built in a sibling folder, so that
    one must be writable even when `out` exists). Commands call this before any long work."""
    out = Path(out)
    for parent in Path(os.path.abspath(out)).parents:  # nearest first
        if parent.is_dir():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"output '{out}' cannot be written: folder '{parent}' is not writable")
            break
        if parent.exists():
            raise ConfigError(f"output '{out}' cannot be created: '{parent}' is a file, not a folder")
    return out


def check_output_path(out: str | os.PathLike, force: bool) -> Path:
    """Refuse an output that cannot be created, or an existing one unless `force`; returns the path."""
    out = check_creatable(out)
    if out.exists() and not force:
        raise OutputExistsError(f"output '{out}' already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' exists and is not a directory")
    return out


def _remove_stale_partials(out: Path) -> None:
    """Temporary folders of earlier writes to `out` whose process is gone (killed with SIGKILL
    or by a power cut, so it could not clean up): each can be as large as the output."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        pid = p.name[len(f".{out.name}.partial-"):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue  # an older edgedelta's folder (no pid) or our own: leave it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out` atomically
    (the old folder, with --force, is removed only after the new one is complete).
    On any error or interrupt the temporary folder is deleted and `out` is untouched."""
    out = check_output_path(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        as_created(tmp, 0o777)
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
