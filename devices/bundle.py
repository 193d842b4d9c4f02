"""A device bundle: one folder to carry to an offline device, with all it needs to run artifacts.

    OUT/
      wheels/           edgedelta and its core dependencies (no torch: edgedelta/extras.py),
                        built for the device's CPU and Python by `pip download --platform`
      requirements.txt  every wheel pinned with its sha256 (pip --require-hashes)
      artifacts/NAME/   each artifact's manifest and the files it lists, checked before and
                        after the copy
      install.sh        python3 -m venv, then pip install --no-index from wheels/
      bundle.json       the facts: CPU, Python, platform tags, versions, checksums
      README.md         for the person at the device
      edgedelta-serve.service.in, serve.env   with `service=True`: a systemd unit for
                        `edgedelta serve` on the first artifact; install.sh fills in the
                        bundle's path and user and says how to enable it

The device then runs `edgedelta run/serve/profile/plan/devices/inspect` with no network. The wheels
are manylinux 2.28 or older: the device needs glibc >= 2.28 (ONNX Runtime 1.32's own floor)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from edgedelta.errors import ConfigError, EdgeDeltaError
from edgedelta.export.config import CPU_ARCHS
from edgedelta.fsutil import atomic_dir, sha256_file
from edgedelta.manifest import read_manifest, verify_manifest

from .host import MACHINE_OF_ARCH

BUNDLE_FORMAT = "edgedelta-bundle"
BUNDLE_VERSION = 1
GLIBC_MINOR = 28  # newest manylinux tag taken (ONNX Runtime 1.32's wheels need 2.28)
MIN_PYTHON_MINOR = 10  # pyproject requires-python
PACKAGED = ("pyproject.toml", "README.md", "edgedelta", "export", "runtime", "devices")  # what the wheel is built from


@dataclass(frozen=True)
class BundleConfig:
    cpu_arch: str  # one of CPU_ARCHS: the device's CPU family
    python: str = "3.11"  # the device's python3, as X.Y (Raspberry Pi OS 12: 3.11; Ubuntu 22.04/JetPack 6: 3.10)
    service: bool = False  # add a systemd unit that runs `edgedelta serve` on the first artifact

    def __post_init__(self):
        if self.cpu_arch not in CPU_ARCHS:
            raise ConfigError(f"cpu_arch '{self.cpu_arch}' is not one of {', '.join(CPU_ARCHS)}")
        m = re.fullmatch(r"3\.(\d+)", self.python)
        if m is None or int(m.group(1)) < MIN_PYTHON_MINOR:
            raise ConfigError(f"python '{self.python}' is not a Python version 3.{MIN_PYTHON_MINOR} or newer, "
                              f"written as X.Y (e.g. 3.11)")

    @property
    def platform_tags(self) -> list[str]:
        """manylinux tags from glibc 2.28 down to 2.17 (pip 23 takes only the tags it is given)."""
        machine = MACHINE_OF_ARCH[self.cpu_arch]
        return [f"manylinux_2_{m}_{machine}" for m in range(GLIBC_MINOR, 16, -1)] + [f"manylinux2014_{machine}"]


def project_root() -> Path:
    """The source tree edgedelta runs from (its wheel is built from there)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"a bundle is built from edgedelta's source tree (pyproject.toml), not found at '{root}'")
    return root


def fetch_wheels(cfg: BundleConfig, dest: Path) -> None:
    """edgedelta's wheel and its core dependencies' wheels for the device, into `dest`."""
    pip = [sys.executable, "-m", "pip"]
    root = project_root()
    with tempfile.TemporaryDirectory(prefix="edgedelta-wheel-") as tmp:
        # built from a copy of what the wheel holds: setuptools would leave build/ in the source
        # tree, and a stale build/lib can slip old modules into the next wheel
        src = Path(tmp) / "src"
        src.mkdir()
        for name in PACKAGED:
            if (root / name).is_dir():
                shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(root / name, src / name)
        _pip(pip + ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(src)])
    ours = sorted(dest.glob("edgedelta-*.whl"))
    if len(ours) != 1:
        raise EdgeDeltaError(f"pip wheel left {len(ours)} edgedelta wheels in '{dest}'")
    tags = [a for t in cfg.platform_tags for a in ("--platform", t)]
    _pip(pip + ["download", "--quiet", "--only-binary=:all:", *tags, "--python-version", cfg.python,
                "--implementation", "cp", "--dest", str(dest), str(ours[0])])


def _pip(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit code {proc.returncode}")
        raise EdgeDeltaError(f"'pip {cmd[3]}' failed: {last.strip()}")


def _wheel_pin(path: Path, sha256: str) -> str:
    """'name==version --hash=sha256:…' from a wheel's file name (name-version-tags.whl)."""
    name, version = path.name.split("-")[:2]
    return f"{name.replace('_', '-').lower()}=={version} --hash=sha256:{sha256}"


def build_bundle(artifacts: list[str | Path], out: str | Path, cfg: BundleConfig, force: bool = False,
                 log: Callable[[str], None] = lambda m: None, fetch: Callable[[BundleConfig, Path], None] = fetch_wheels) -> Path:
    """Write the bundle for `artifacts` into `out` (atomically); returns `out`."""
    if not artifacts:
        raise ConfigError("no artifact given: a bundle carries at least one")
    sources = [Path(a) for a in artifacts]
    names = [p.resolve().name for p in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"artifact folder names must differ (each becomes artifacts/NAME): {', '.join(names)}")
    manifests = []
    for src in sources:  # every artifact checked before anything is written
        manifest = read_manifest(src)
        verify_manifest(src, manifest)
        manifests.append(manifest)
        laid_out = (manifest.get("layouts") or {}).get("cpu_arch")
        if laid_out and laid_out != cfg.cpu_arch:
            log(f"note: '{src}' lays its shared and tied weights out for {laid_out}; it runs on {cfg.cpu_arch}, but "
                f"ONNX Runtime copies them on every token there (bench/results/arm64_layout_counts.md): re-export "
                f"with --cpu-arch {cfg.cpu_arch}")
    with atomic_dir(out, force) as tmp:
        log(f"wheels for {cfg.cpu_arch}, Python {cfg.python} (pip download) ...")
        (tmp / "wheels").mkdir()
        fetch(cfg, tmp / "wheels")
        wheels = {w: sha256_file(w) for w in sorted((tmp / "wheels").glob("*.whl"))}
        # plain writes: the whole folder appears at once (atomic_dir)
        (tmp / "requirements.txt").write_text("".join(_wheel_pin(w, digest) + "\n" for w, digest in wheels.items()))
        for src, name, manifest in zip(sources, names, manifests):
            log(f"artifact {name} ...")
            dst = tmp / "artifacts" / name
            for rel in ["manifest.json", *manifest["files"]]:
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, dst / rel)
            verify_manifest(dst, manifest)
        facts = _facts(cfg, wheels, names, manifests)
        (tmp / "bundle.json").write_text(json.dumps(facts, indent=2) + "\n")
        (tmp / "install.sh").write_text(_install_sh(cfg) + (_install_service_sh() if cfg.service else ""))
        if cfg.service:
            (tmp / SERVICE_UNIT).write_text(_service_unit(names[0]))
            (tmp / "serve.env").write_text(_SERVE_ENV)
        (tmp / "install.sh").chmod(0o755)
        (tmp / "README.md").write_text(_readme(facts))
    return Path(out)


def _facts(cfg: BundleConfig, wheels: dict[Path, str], names: list[str], manifests: list[dict]) -> dict:
    from edgedelta import __version__

    return {
        "format": BUNDLE_FORMAT, "bundle_version": BUNDLE_VERSION, "edgedelta_version": __version__,
        **asdict(cfg), "machine": MACHINE_OF_ARCH[cfg.cpu_arch], "platform_tags": cfg.platform_tags,
        "wheels": [{"file": w.name, "bytes": w.stat().st_size, "sha256": digest} for w, digest in wheels.items()],
        "artifacts": [{"name": n, "layout_cpu_arch": (m.get("layouts") or {}).get("cpu_arch"),
                       "graph_revision": m.get("graph_revision"), "files": len(m["files"]),
                       "bytes": sum(int(e.get("bytes", 0)) for e in m["files"].values())}
                      for n, m in zip(names, manifests)],
    }


def _install_sh(cfg: BundleConfig) -> str:
    machine = MACHINE_OF_ARCH[cfg.cpu_arch]
    return f"""#!/bin/sh
# Installs edgedelta's device runtime from this folder into ./venv; no network is used.
# Needs python{cfg.python} with its venv module (Debian/Raspberry Pi OS: apt install python3-venv).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${{PYTHON:-python3}}
machine=$(uname -m)
if [ "$machine" != "{machine}" ]; then echo "install.sh: this bundle is for {machine}, this machine is $machine" >&2; exit 2; fi
"$py" -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v == "{cfg.python}" else "install.sh: this bundle is for Python {cfg.python}, " + sys.executable + " is " + v + " (set PYTHON=...)")'
"$py" -m venv "$here/venv"
"$here/venv/bin/python" -m pip install --isolated --quiet --no-index --find-links "$here/wheels" --require-hashes -r "$here/requirements.txt"
echo "installed. Try: $here/venv/bin/edgedelta run $here/artifacts/NAME --prompt 'Hello'"
"""


SERVICE_UNIT = "edgedelta-serve.service.in"
# read by the unit (EnvironmentFile); the server reads EDGEDELTA_API_KEY itself, so the key is
# not on its command line (visible to every user in `ps`)
_SERVE_ENV = """# Settings of edgedelta-serve.service (edit, then: sudo systemctl restart edgedelta-serve)
# 0.0.0.0 answers on every network interface; 127.0.0.1 only on this machine.
EDGEDELTA_HOST=0.0.0.0
EDGEDELTA_PORT=8080
# Clients then send 'Authorization: Bearer <key>'. Empty: no key is asked for.
EDGEDELTA_API_KEY=
"""


def _service_unit(artifact: str) -> str:
    """systemd unit; @HERE@ (the bundle folder on the device) and @USER@ are filled in by install.sh.
    SIGTERM lets the server finish running requests (--drain-seconds 30) within TimeoutStopSec;
    exit code 2 (a bad artifact or setting) is not retried."""
    return f"""[Unit]
Description=edgedelta OpenAI-compatible server (artifacts/{artifact})
After=network.target

[Service]
Type=exec
User=@USER@
Environment=EDGEDELTA_HOST=127.0.0.1 EDGEDELTA_PORT=8080
EnvironmentFile=-@HERE@/serve.env
ExecStart="@HERE@/venv/bin/edgedelta" serve "@HERE@/artifacts/{artifact}" --host ${{EDGEDELTA_HOST}} --port ${{EDGEDELTA_PORT}} --drain-seconds 30
KillSignal=SIGTERM
TimeoutStopSec=45
Restart=on-failure
RestartSec=5
RestartPreventExitStatus=2

[Install]
WantedBy=multi-user.target
"""


def _install_service_sh() -> str:
    return f"""sed -e "s|@HERE@|$here|g" -e "s|@USER@|$(id -un)|g" "$here/{SERVICE_UNIT}" > "$here/edgedelta-serve.service"
echo "server as a service (settings: $here/serve.env):"
echo "  sudo cp $here/edgedelta-serve.service /etc/systemd/system/ && sudo systemctl daemon-reload && sudo systemctl enable --now edgedelta-serve"
echo "  then: curl http://127.0.0.1:8080/health ; logs: journalctl -u edgedelta-serve"
"""


def _readme(facts: dict) -> str:
    arts = "\n".join(f"- `artifacts/{a['name']}` ({a['bytes'] / 2**20:.0f} MiB; shared and tied weights laid out for "
                     f"{a['layout_cpu_arch'] or 'any CPU'})" for a in facts["artifacts"])
    first = facts["artifacts"][0]["name"]
    return f"""# edgedelta device bundle

For a {facts['machine']} Linux device (glibc 2.28 or newer) with Python {facts['python']}; edgedelta {facts['edgedelta_version']}.
Nothing here needs a network: copy this folder to the device, then

    sh install.sh                     # a venv in ./venv from wheels/ (pip checks every wheel's sha256)
    venv/bin/edgedelta inspect artifacts/{first}
    venv/bin/edgedelta run artifacts/{first} --chat --prompt "How do I reset the conveyor?"
    venv/bin/edgedelta profile artifacts/{first} --device host --context 512,2048
    venv/bin/edgedelta serve artifacts/{first} --port 8080     # OpenAI-compatible server (Ctrl-C stops it)

Artifacts (each checked against its manifest's checksums when loaded):
{arts}

This install runs `run`, `serve`, `profile`, `plan`, `devices` and `inspect`. Compression and export
need the workstation install (`pip install 'edgedelta[compress]'`). bundle.json lists every
file with its checksum.
"""
