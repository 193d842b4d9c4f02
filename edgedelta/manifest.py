"""manifest.json: the facts of an output folder (configs, accounting, versions) and the
sha256 of every file in it, so tampering or truncation is detected before use."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from .errors import IntegrityError, ModelLoadError
from .fsutil import sha256_file, write_json_atomic

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped an artifact (recorded for reproducibility)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("edgedelta", "torch", "transformers", "onnx", "onnxruntime", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def file_table(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} for every file in `folder` except the manifest."""
    folder = Path(folder)
    table = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(folder).as_posix()
            table[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return table


def write_manifest(folder: str | os.PathLike, kind: str, facts: dict[str, Any]) -> dict[str, Any]:
    """Write manifest.json into `folder` (call last, after every other file is written)."""
    manifest = {
        "format": kind,
        "manifest_version": MANIFEST_VERSION,
        **facts,
        "versions": library_versions(),
        "files": file_table(folder),
    }
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"'{folder}' has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"'{path}' is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"'{path}' is malformed: missing 'files' table")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise IntegrityError(
            f"'{path}' has manifest_version {manifest.get('manifest_version')!r}; this edgedelta reads {MANIFEST_VERSION}"
        )
    return manifest


def verify_manifest(folder: str | os.PathLike, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every file listed in the manifest: present, right size, right sha256.
    Raises IntegrityError naming the first bad file."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    for rel, entry in manifest["files"].items():
        if not isinstance(entry, dict):
            raise IntegrityError(f"manifest of '{folder}' is malformed: entry for '{rel}' is not a {{bytes, sha256}} table")
        p = (folder / rel).resolve()
        if folder.resolve() not in p.parents:
            raise IntegrityError(f"manifest of '{folder}' names a path outside the folder: '{rel}'")
        if not p.is_file():
            raise IntegrityError(f"'{folder}': file '{rel}' listed in the manifest is missing")
        size = p.stat().st_size
        if size != entry.get("bytes"):
            raise IntegrityError(f"'{folder}': file '{rel}' has {size} bytes, manifest says {entry.get('bytes')} (truncated or modified)")
        if sha256_file(p) != entry.get("sha256"):
            raise IntegrityError(f"'{folder}': file '{rel}' does not match its sha256 in the manifest (modified or corrupt)")
    # a pickle dropped into the folder is never read (weights come from safetensors / ONNX only): say so
    stray = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.name not in manifest["files"])
    if stray:
        print(f"edgedelta: ignoring {', '.join(stray)} in '{folder}': not listed in its manifest (pickles are never read)", file=sys.stderr)
    return manifest
