"""Measure an artifact per phase: session load, prefill (time to first token), decode
(tokens/s), with peak RSS per phase, KV-cache bytes, and GPU memory from NVML on CUDA.

Peak RSS on Linux is exact: writing "5" to /proc/self/clear_refs resets the kernel's
high-water mark (VmHWM) to the current RSS, so each phase's peak is read from
/proc/self/status. Elsewhere a psutil sampling thread (2 ms) approximates it.
A context sweep runs every length in a fresh subprocess so one length's freed-but-retained
heap does not inflate the next (`sweep(..., isolate=True)`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedelta.errors import ConfigError, EdgeDeltaError

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


class PeakRSS:
    """Peak resident set size of this process over a phase: `reset()`, run, `peak()`."""

    def __init__(self):
        self.exact = _STATUS.is_file() and _CLEAR.exists() and self._try_reset()
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    @staticmethod
    def _try_reset() -> bool:
        try:
            _CLEAR.write_text("5")
            return True
        except OSError:
            return False

    @staticmethod
    def current() -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def reset(self) -> None:
        if self.exact:
            _CLEAR.write_text("5")
            return
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._stop.clear()
        self._peak = self.current()

        def run():
            while not self._stop.wait(0.002):
                self._peak = max(self._peak, self.current())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def peak(self) -> int:
        if self.exact:
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return max(self._peak, self.current())


class GpuMemory:
    """Device memory used (bytes) via NVML, sampled every 5 ms; inactive without pynvml/GPU."""

    def __init__(self, index: int = 0):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # no NVML library, no GPU, or no permission: GPU memory is not reported
            return
        self._peak = self.used()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def used(self) -> int | None:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used) if self.handle else None

    def _run(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self.used())

    def reset(self) -> None:
        if self.handle:
            self._peak = self.used()

    def peak(self) -> int | None:
        return max(self._peak, self.used()) if self.handle else None


def measure(artifact: str | os.PathLike, context: int, new_tokens: int = 16, provider: str = "cpu",
            threads: int | None = None, seed: int = 0, **session_kw) -> dict[str, Any]:
    """Load the artifact, prefill `context - new_tokens` random tokens, decode `new_tokens`
    (EOS ignored) so `context` positions are cached at the end. Returns one run's numbers.
    `session_kw` go to Session.from_dir (arena=, prepack=, spin=)."""
    from .generate import generate_ids
    from .session import Session

    if new_tokens < 1 or context <= new_tokens:
        raise ConfigError(f"context ({context}) must exceed new_tokens ({new_tokens}) and new_tokens must be ≥ 1")
    rss, gpu = PeakRSS(), GpuMemory()
    rss_start = PeakRSS.current()
    gpu_start = gpu.used()
    rss.reset()
    t = time.perf_counter()
    s = Session.from_dir(artifact, provider=provider, threads=threads, **session_kw)
    load_s = time.perf_counter() - t
    load_peak, gpu_load = rss.peak(), gpu.peak()
    max_pos = s.artifact.max_positions
    if max_pos and context > max_pos:
        raise ConfigError(f"context length {context} exceeds the model's maximum of {max_pos} positions")
    prompt = np.random.default_rng(seed).integers(16, s.artifact.vocab_size, size=context - new_tokens).tolist()
    rss.reset()
    gpu.reset()
    phase: dict[str, Any] = {}

    def prefill_done():  # phase boundary: peak of prefill, then measure decode alone
        phase["rss"], phase["gpu"] = rss.peak(), gpu.peak()
        rss.reset()
        gpu.reset()

    r = generate_ids(s, [prompt], max_new_tokens=new_tokens, eos=False, on_first_token=prefill_done)[0]
    decode_peak = rss.peak()
    gen_peak = max(phase.get("rss", 0), decode_peak)
    return {
        "context": context, "prompt_tokens": context - new_tokens, "new_tokens": len(r.token_ids), "provider": s.provider,
        "threads": threads, "session": session_kw, "load_s": load_s, "ttft_s": r.ttft_s, "prefill_tok_s": (context - new_tokens) / r.ttft_s,
        "decode_s": r.decode_s, "decode_tok_s": r.decode_tokens_per_s,
        "rss_start_bytes": rss_start,
        "peak_rss_load_bytes": load_peak, "peak_rss_prefill_bytes": phase.get("rss"), "peak_rss_decode_bytes": decode_peak,
        "peak_rss_generate_bytes": gen_peak, "peak_rss_bytes": max(load_peak, gen_peak),
        "rss_exact": rss.exact, "kv_bytes": s.kv.bytes(context), "kv_buffer_bytes": (1 if s.in_place else 2) * s.kv.bytes(context),
        "gpu_mem_start_bytes": gpu_start, "gpu_peak_load_bytes": gpu_load, "gpu_peak_prefill_bytes": phase.get("gpu"),
        "gpu_peak_decode_bytes": gpu.peak(),
        "gpu_peak_generate_bytes": max((x for x in (phase.get("gpu"), gpu.peak()) if x is not None), default=None),
    }


def measure_isolated(artifact, context: int, new_tokens: int = 16, provider: str = "cpu", threads: int | None = None,
                     timeout: float = 1800, **session_kw) -> dict[str, Any]:
    """`measure` in a fresh Python process (clean peak RSS); errors come back as EdgeDeltaError.
    The child runs in the artifact's folder: `python -m` puts its working directory first on
    sys.path, and a caller's directory may hold an `edgedelta` folder that is not the installed
    package (the repository root after a non-editable install has one without `runtime`)."""
    art = Path(artifact).resolve()
    args = {"artifact": str(art), "context": context, "new_tokens": new_tokens, "provider": provider, "threads": threads,
            "session": session_kw}
    proc = subprocess.run([sys.executable, "-m", "edgedelta.runtime.profiler", json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout, cwd=art if art.is_dir() else None)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeDeltaError(f"profiling context {context} failed: {tail}")
    return json.loads(lines[-1])


def sweep(artifact, contexts: list[int], new_tokens: int = 16, provider: str = "cpu", threads: int | None = None,
          isolate: bool = True, **session_kw) -> list[dict[str, Any]]:
    """One run per context length (each in its own process when `isolate`)."""
    runs = []
    for c in contexts:
        runs.append(measure_isolated(artifact, c, new_tokens, provider, threads, **session_kw) if isolate
                    else measure(artifact, c, new_tokens, provider, threads, **session_kw))
    return runs


def parse_contexts(text: str) -> list[int]:
    """'512,2048' -> [512, 2048]; each must be a positive integer."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            v = int(part)
        except ValueError:
            raise ConfigError(f"context lengths must be positive integers, got '{part}'") from None
        if v <= 0:
            raise ConfigError(f"context length must be a positive integer, got {v}")
        out.append(v)
    if not out:
        raise ConfigError("no context length given")
    return out


def _worker(argv: list[str]) -> int:
    args = json.loads(argv[0])
    try:
        result = measure(args["artifact"], args["context"], args["new_tokens"], args["provider"], args["threads"],
                         **args.get("session", {}))
    except EdgeDeltaError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
