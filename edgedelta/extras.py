"""What a lean install lacks, and which extra brings it.

`pip install edgedelta` installs only what running an exported artifact needs (ONNX Runtime,
onnx, tokenizers, jinja2, numpy, psutil, tqdm; starlette and uvicorn for the server), so a
Raspberry Pi or a Jetson runs `edgedelta run`, `serve`, `profile`, `plan`, `devices` and
`inspect` without torch. Compressing,
distilling, evaluating and exporting need the `compress` extra (the workstation:
`scripts/setup.sh` installs it); charts need `report`. pyproject.toml lists the same packages
(tests/test_packaging.py checks that the two agree)."""

from __future__ import annotations

import importlib.util

from .errors import EdgeDeltaError

# extra -> the top-level modules it installs (smallest extra first: a module's error names it)
EXTRAS: dict[str, tuple[str, ...]] = {
    "report": ("matplotlib",),
    "compress": ("torch", "transformers", "optimum", "onnxscript", "onnx_ir", "gguf", "accelerate", "safetensors",
                 "matplotlib", "scipy"),
}


class MissingExtraError(EdgeDeltaError):
    """A command needs a package that this (lean) install does not have."""


def _error(module: str, extra: str) -> MissingExtraError:
    return MissingExtraError(f"needs {module}, which this install does not have (a device install carries only "
                             f"the runtime): pip install 'edgedelta[{extra}]'")


def missing_extra(err: ModuleNotFoundError) -> MissingExtraError | None:
    """The user-facing error for `err` when it names a module of an extra, else None (a missing
    module of our own or of a core dependency is a real bug)."""
    top = (err.name or "").split(".")[0]
    extra = next((e for e, modules in EXTRAS.items() if top in modules), None)
    return None if extra is None else _error(top, extra)


def check_extra(extra: str) -> MissingExtraError | None:
    """The error for the first module of `extra` that is not installed, else None. Finds
    modules without importing them (torch alone takes seconds)."""
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            return _error(module, extra)
    return None


def require_extra(extra: str) -> None:
    """Raise before any work starts (and before an output folder is made) when `extra` is missing."""
    missing = check_extra(extra)
    if missing is not None:
        raise missing
