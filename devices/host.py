"""This machine as a Device: RAM and cores from psutil, providers from ONNX Runtime, and the
memory bandwidth measured with a large numpy copy (read + write bytes per second, the
STREAM 'copy' convention), so the planner can be checked against measurements here."""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache

import numpy as np

from .device import GIB, Device


def measure_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Best-of-`repeats` copy bandwidth in GB/s over a `mib` MiB array (counts bytes read + written).
    The array is far larger than any CPU cache, so this is DRAM bandwidth."""
    n = mib * (1 << 20) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


@lru_cache(maxsize=1)
def host_device(bandwidth_gbps: float | None = None) -> Device:
    """The machine edgedelta runs on (bandwidth measured once per process unless given)."""
    import onnxruntime as ort
    import psutil

    bw = bandwidth_gbps or measure_bandwidth()
    provs = ["cuda" if p == "CUDAExecutionProvider" else "cpu" for p in ort.get_available_providers()
             if p in ("CUDAExecutionProvider", "CPUExecutionProvider")]
    total = psutil.virtual_memory().total
    return Device(
        name="host", display_name=f"this machine ({os.cpu_count()} cores)", kind="cpu",
        memory_gib=round(total / GIB, 2), os_reserved_gib=0.0, bandwidth_gbps=round(bw, 2),
        bandwidth_source="measured: numpy copy of a 256 MiB array, best of 5 (bytes read + written per second)",
        cpu_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1, providers=tuple(provs) or ("cpu",),
        dtypes=("fp32", "int8"), cpu_arch=host_cpu_arch(),
        notes="measured at run time; RAM is the total, shared with everything else running",
        source_file="(measured)",
    )


# ExportConfig.cpu_arch -> what `uname -m` prints on Linux (and the manylinux wheel tags say)
MACHINE_OF_ARCH = {"x86_64": "x86_64", "arm64": "aarch64"}


def host_cpu_arch() -> str | None:
    """This machine's CPU family as ExportConfig.cpu_arch names it, or None if it is neither
    (Windows says AMD64, macOS arm64)."""
    machine = platform.machine().lower()
    return {**{m: a for a, m in MACHINE_OF_ARCH.items()}, "amd64": "x86_64", "arm64": "arm64"}.get(machine)
