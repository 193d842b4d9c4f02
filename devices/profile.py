"""Device profiles: one JSON file per device (devices/profiles/*.json, plus any folder named in
$EDGEDELTA_DEVICES), validated into a frozen dataclass. A malformed file is a ConfigError
naming the file and the field. See ADDING_A_DEVICE.md for the format."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from edgedelta.errors import ConfigError
from edgedelta.export.config import CPU_ARCHS

from .device import GIB, Device  # noqa: F401  (GIB, Device re-exported: the planner and tables import them from here)
from .host import host_device

SCHEMA_VERSION = 1
BUILTIN_DIR = Path(__file__).parent / "profiles"
ENV_DIRS = "EDGEDELTA_DEVICES"
KINDS = ("cpu", "unified", "gpu")  # weights in host RAM / in RAM shared by CPU+GPU / in GPU memory
PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino", "qnn", "coreml", "dml", "rocm")
DTYPES = ("fp32", "fp16", "bf16", "int8", "int4", "fp8")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


_REQUIRED = {"name": str, "display_name": str, "kind": str, "memory_gib": (int, float), "os_reserved_gib": (int, float),
             "bandwidth_gbps": (int, float), "bandwidth_source": str, "cpu_cores": int, "providers": list, "dtypes": list}
_OPTIONAL = {"peak_bandwidth_gbps": (int, float), "cpu_arch": str, "notes": str, "schema": int}


def device_from_dict(obj: Any, where: str) -> Device:
    """Validate a parsed device file. `where` (the file) prefixes every error message."""
    if not isinstance(obj, dict):
        raise ConfigError(f"device file {where}: must hold a JSON object")
    unknown = sorted(set(obj) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"device file {where}: unknown field '{unknown[0]}'; allowed: {', '.join([*_REQUIRED, *_OPTIONAL])}")
    for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in obj:
            if key in _REQUIRED:
                raise ConfigError(f"device file {where}: missing field '{key}'")
            continue
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, typ):
            tname = typ.__name__ if isinstance(typ, type) else "number"
            raise ConfigError(f"device file {where}: field '{key}' must be a {tname}, got {v!r}")
    if obj.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ConfigError(f"device file {where}: field 'schema' is {obj['schema']}; this edgedelta reads {SCHEMA_VERSION}")
    if not _NAME.match(obj["name"]):
        raise ConfigError(f"device file {where}: field 'name' must be lowercase letters, digits, '.', '_' or '-', got {obj['name']!r}")
    if obj["kind"] not in KINDS:
        raise ConfigError(f"device file {where}: field 'kind' is {obj['kind']!r}; allowed: {', '.join(KINDS)}")
    for key in ("memory_gib", "bandwidth_gbps", "cpu_cores"):
        if not obj[key] > 0:
            raise ConfigError(f"device file {where}: field '{key}' must be > 0, got {obj[key]!r}")
    if obj.get("peak_bandwidth_gbps") is not None and obj["peak_bandwidth_gbps"] < obj["bandwidth_gbps"]:
        raise ConfigError(f"device file {where}: field 'peak_bandwidth_gbps' ({obj['peak_bandwidth_gbps']}) is below 'bandwidth_gbps' ({obj['bandwidth_gbps']})")
    if obj.get("cpu_arch", CPU_ARCHS[0]) not in CPU_ARCHS:
        raise ConfigError(f"device file {where}: field 'cpu_arch' is {obj['cpu_arch']!r}; allowed: {', '.join(CPU_ARCHS)}")
    if not 0 <= obj["os_reserved_gib"] < obj["memory_gib"]:
        raise ConfigError(f"device file {where}: field 'os_reserved_gib' must be ≥ 0 and below memory_gib ({obj['memory_gib']}), got {obj['os_reserved_gib']!r}")
    if not obj["bandwidth_source"].strip():
        raise ConfigError(f"device file {where}: field 'bandwidth_source' must cite where the bandwidth comes from")
    for key, allowed in (("providers", PROVIDERS), ("dtypes", DTYPES)):
        vals = obj[key]
        if not vals:
            raise ConfigError(f"device file {where}: field '{key}' must not be empty")
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise ConfigError(f"device file {where}: field '{key}' has {bad[0]!r}; allowed: {', '.join(allowed)}")
    vals = {k: obj[k] for k in obj if k != "schema"}
    vals["providers"], vals["dtypes"] = tuple(obj["providers"]), tuple(obj["dtypes"])
    return Device(**vals, source_file=where)


def load_device_file(path: str | os.PathLike) -> Device:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"device file {path}: not valid JSON: {e}") from None
    dev = device_from_dict(obj, str(path))
    if dev.name != path.stem:
        raise ConfigError(f"device file {path}: field 'name' is '{dev.name}' but the file is named '{path.stem}.json'")
    return dev


def device_dirs(extra: list[str | os.PathLike] | None = None) -> list[Path]:
    """Built-in profiles first, then $EDGEDELTA_DEVICES folders (os.pathsep-separated), then `extra`."""
    dirs = [BUILTIN_DIR]
    env = os.environ.get(ENV_DIRS, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra or []]
    return dirs


def all_devices(extra_dirs: list[str | os.PathLike] | None = None) -> dict[str, Device]:
    """{name: Device} from every device folder; a later folder's file overrides a built-in one."""
    out: dict[str, Device] = {}
    for d in device_dirs(extra_dirs):
        if not d.is_dir():
            if d != BUILTIN_DIR:
                raise ConfigError(f"device folder '{d}' (from ${ENV_DIRS} or --devices-dir) does not exist")
            continue
        for f in sorted(d.glob("*.json")):
            dev = load_device_file(f)
            out[dev.name] = dev
    return out


def get(name: str, extra_dirs: list[str | os.PathLike] | None = None) -> Device:
    """The device called `name`; unknown names list the known ones. 'host' is this machine."""
    if name == "host":
        return host_device()
    devs = all_devices(extra_dirs)
    if name not in devs:
        raise ConfigError(f"unknown device '{name}'; known: {', '.join(sorted(devs))}, host")
    return devs[name]


def select(spec: str, extra_dirs: list[str | os.PathLike] | None = None) -> list[Device]:
    """'all' -> every profile; 'a,b' -> those devices (each validated)."""
    if spec == "all":
        return list(all_devices(extra_dirs).values())
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError("no device given; use --device NAME, a comma list, or all")
    return [get(n, extra_dirs) for n in names]
