"""A target device as the planner sees it: one frozen dataclass, the layer under both the
profile files (profile.py) and this machine's measured description (host.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

GIB = 1 << 30


@dataclass(frozen=True)
class Device:
    """One target device. Memory figures are GiB; bandwidth is GB/s (10^9 bytes/s)."""

    name: str  # id used on the command line; equals the file name without .json
    display_name: str
    kind: str  # one of profile.KINDS: where the model's weights and KV cache live
    memory_gib: float  # memory that holds weights + KV cache (RAM, unified RAM or GPU memory)
    os_reserved_gib: float  # kept for the OS, display, other services: not available to the model
    bandwidth_gbps: float  # sustained memory bandwidth used for the decode ceiling
    bandwidth_source: str  # where the bandwidth figure comes from (datasheet URL or measurement)
    cpu_cores: int
    providers: tuple[str, ...]  # ONNX Runtime execution providers available on it
    dtypes: tuple[str, ...]  # weight dtypes it runs efficiently
    peak_bandwidth_gbps: float | None = None  # theoretical peak (datasheet), when bandwidth_gbps is a sustained figure
    cpu_arch: str | None = None  # one of export.config.CPU_ARCHS: which fp32 weight layout to export for it (--cpu-arch)
    notes: str = ""
    source_file: str = ""  # filled in by the loader

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def available_bytes(self) -> int:
        """Memory the model may use: total minus the OS reserve."""
        return int((self.memory_gib - self.os_reserved_gib) * GIB)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source_file"}
        d["providers"], d["dtypes"] = list(self.providers), list(self.dtypes)
        return d
