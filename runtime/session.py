"""An ONNX Runtime session over a verified artifact, with a KV cache that never reallocates.

Loading: the manifest's checksums are verified first; the graph is opened by *path* so ONNX
Runtime reads model.onnx.data itself (no Python-side copy of the weights).

Edge memory settings (CPU), measured in bench/results/runtime.md: the weights in
model.onnx.data are memory-mapped by ONNX Runtime (pages count once touched, never copied),
except those ORT prepacks: a weight with one reader is repacked into a blocked copy at load
and its mapped original is released; the CPU arena is on, and a run of more than one token
(a prefill) ends by shrinking it (`memory.enable_memory_arena_shrinkage`), so its activations
go back to the OS instead of staying in an arena that only grows (bench/arena.py: the arena
prefills faster than the allocator path, at a higher prefill peak; `arena=False` trades the
speed for that peak); memory patterns are off (`enable_mem_pattern=False`: shapes change
every step, a pattern is never reused); glibc's mmap threshold is fixed (memory.py) so the
allocator returns prefill activations to the OS; ORT threads spin only where the cores are
idle (`spin`).
Weight prepacking follows the artifact's manifest: on for fp32 and quantized artifacts, whose
shared weights the exporter stores in a layout ORT does not pack (export/prepack.py), so a
shared weight is never copied once per consuming MatMul; off for fp16. The KV cache lives in
buffers this class owns, sized for the whole generation and bound through IO binding with our
pointers: on a graph that updates its cache in place (GroupQueryAttention) one buffer per K/V
tensor is bound to both past and present and stays bound from step to step; otherwise two,
step t reading past from one while ONNX Runtime writes `present` into the other. The decode
loop allocates no KV memory and copies nothing in Python, and a buffer's pages become resident
only as tokens are written (host_kv_buffer); a sliding-window layer's pages behind its window
are given back as it grows (release_behind_windows). Once built, a CPU session's prepacked
weights are moved onto transparent huge pages (memory.collapse_huge_pages; Linux 6.1+), before
any KV buffer exists.

CUDA: the same IO binding over device buffers (OrtValue on 'cuda'); logits come back into a
host numpy buffer. A GroupQueryAttention graph must be fp16 there (cuda_unsupported);
cuda_graph captures decode steps in a CUDA graph (static_decode). Requires the
`onnxruntime-gpu` package (extra `edgedelta[cuda]`)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedelta.errors import ConfigError, ModelLoadError

from .artifact import Artifact, session_interface
from .kv_cache import WINDOW_RELEASE_STEP, DeviceRows, KVCache, host_kv_buffer, release_behind_windows, row_lengths

PROVIDERS = ("auto", "cpu", "cuda")
_ORT_NAME = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_announced_fallback = False  # 'auto' says once per process that it fell back to CPU


def _cuda_unavailable_reason(ort) -> str | None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install the 'cuda' extra: "
                "pip uninstall onnxruntime && pip install onnxruntime-gpu)")
    return None


def resolve_provider(provider: str) -> str:
    """'cpu' or 'cuda'. 'cuda' when unavailable is a ConfigError; 'auto' prefers CUDA and
    falls back to CPU, saying so on stderr once per process."""
    global _announced_fallback
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider '{provider}'; allowed: {', '.join(PROVIDERS)}")
    if provider == "cpu":
        return "cpu"
    reason = _cuda_unavailable_reason(ort)
    if provider == "cuda":
        if reason:
            raise ConfigError(f"provider 'cuda' is not available: {reason}")
        return "cuda"
    if reason is None:
        return "cuda"
    if not _announced_fallback:
        print("edgedelta: CUDA not available, running on CPU (provider 'auto')", file=sys.stderr)
        _announced_fallback = True
    return "cpu"


def cuda_provider(tf32: bool = True, graph: bool = False) -> tuple[str, dict[str, str]]:
    """ORT's CUDA provider entry. The arena grows by what is asked, not by doubling (an edge
    GPU shares its RAM with the host). tf32: TF32 matmuls (ORT's default). Measured on an H200
    (bench/results/gpu_runtime.md): a warm 2k-token prefill 1.42x faster, logits within 2e-2
    of the CPU provider's instead of 3.5e-5, the same greedy tokens. graph: ORT captures a
    decode step in a CUDA graph and replays it (Session.static_decode gives the step the fixed
    shapes and addresses a replay needs)."""
    opts = {"arena_extend_strategy": "kSameAsRequested", "use_tf32": "1" if tf32 else "0"}
    if graph:
        opts["enable_cuda_graph"] = "1"
    return _ORT_NAME["cuda"], opts


def cuda_unsupported(art: Artifact) -> str | None:
    """Why `art`'s graph would not run on ORT's CUDA provider as a whole, or None. The CUDA
    GroupQueryAttention kernel is built for fp16 and bf16 only (onnxruntime-gpu 1.31.1's
    library has no float instance), so an fp32 graph's attention would run on the CPU with its
    KV cache copied across on every step of every layer."""
    if art.attention == "GroupQueryAttention" and art.kv.dtype == "float32":
        return ("its GroupQueryAttention is fp32, and ONNX Runtime's CUDA kernel for that op takes fp16 or bf16 "
                "only (it would run on the CPU); export it with --dtype fp16 for CUDA")
    return None


SPIN = ("auto", "on", "off")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_spin(spin: bool | str, threads: int | None) -> bool:
    """Whether ORT's worker threads spin-wait between ops. 'on'/'off' (or a bool) as given;
    'auto' spins only when the cores the threads need are idle: on a dedicated device spinning
    saves the wake-up between the hundreds of small ops of a decode step, and on a CPU that
    other work keeps busy spinning threads starve each other (both measured:
    bench/results/peers.json)."""
    if isinstance(spin, bool):
        return spin
    if spin not in SPIN:
        raise ConfigError(f"spin '{spin}' is not supported; allowed: {', '.join(SPIN)}")
    if spin != "auto":
        return spin == "on"
    cores = available_cores()
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return busy + (threads or cores) <= cores + 0.5


def session_options(threads: int | None, arena: bool, config: dict[str, str] | None = None):
    """SessionOptions for edge use (see module docstring) + the artifact's session config entries."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = arena
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    if threads is not None and threads < 1:  # 0 or less is a user error, not 'default'
        raise ConfigError(f"threads must be ≥ 1, got {threads}")
    # default: every core this process may use (ORT's own default counts physical cores and
    # ignores a container's cpuset)
    so.intra_op_num_threads = threads or available_cores()
    so.inter_op_num_threads = 1
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    return so


def artifact_session_options(art: Artifact, threads: int | None = None, arena: bool = True,
                             prepack: bool | None = None, spin: bool | str = False):
    """SessionOptions for `art` as Session.from_dir builds them (its manifest's session config,
    then `prepack` and `spin` as from_dir documents them); for callers that create the ORT
    session themselves (a profiled session, a variant graph of the artifact)."""
    config = dict(art.ort_session_config)
    if prepack is not None:
        config["session.disable_prepacking"] = "0" if prepack else "1"
    spin = resolve_spin(spin, threads)
    config["session.intra_op.allow_spinning"] = "1" if spin else "0"
    config["session.inter_op.allow_spinning"] = "1" if spin else "0"
    return session_options(threads, arena, config)


class Session:
    """A loaded artifact: `Session.from_dir(path)`, then `generate`/`stream` (see generate.py)
    or the low-level `new_cache` + `forward`."""

    def __init__(self, artifact: Artifact, ort_session, provider: str, tokenizer, load_seconds: float,
                 shrink_arena: bool = False, cuda_graph: bool = False):
        self.artifact = artifact
        self.ort = ort_session
        self.provider = provider
        self.tokenizer = tokenizer
        self.load_seconds = load_seconds
        self.kv = artifact.kv
        self._inputs = {i.name for i in ort_session.get_inputs()}
        self._past_names = [(f"past_key_values.{i}.key", f"past_key_values.{i}.value") for i in range(self.kv.num_layers)]
        self._present_names = [(f"present.{i}.key", f"present.{i}.value") for i in range(self.kv.num_layers)]
        self._np_dtype = np.dtype(self.kv.dtype) if self.kv.dtype != "bfloat16" else None
        if self._np_dtype is None:
            raise ModelLoadError("bfloat16 KV caches are not supported by the numpy runtime; export with float32/float16")
        self._logits_dtype = np.dtype(artifact.interface["logits_dtype"])
        self._logits_buf = np.empty(0, dtype=self._logits_dtype)
        self._io = ort_session.io_binding()
        # what the binding holds between steps: an in-place cache's buffers stay bound (same
        # pointers and shape every step: 2 x layers calls saved per token), as do the logits
        # buffer and logits_to_keep while they do not change
        self._bound_kv: tuple[int, int] | None = None
        self._bound_logits: tuple[int, tuple[int, ...]] | None = None
        self._bound_keep: int | None = None
        self.in_place = artifact.kv_update == "in_place"  # one KV buffer bound to past and present
        # sliding-window layers of an in-place host cache: past name -> W; the slots behind each
        # window are released as the cache grows, so such a layer stays resident at about W slots
        self._windows = {name: w for names, w in zip(self._past_names, self.kv.windows) if w for name in names} \
            if self.in_place and provider != "cuda" and sys.platform == "linux" else {}
        # a multi-token run's activations leave the CPU arena when it ends: without this, a
        # 2k-token prefill's peak would stay resident through the decode after it
        self._prefill_run = None
        if shrink_arena:
            import onnxruntime as ort

            self._prefill_run = ort.RunOptions()
            self._prefill_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # static_decode: a one-token step whose mask spans the whole cache runs with fixed
        # shapes at fixed addresses (_static_step), what a CUDA graph replays; generate then
        # passes that full-width mask. cuda_graph: ORT captures those steps (one graph per
        # cache: it holds the KV buffers' addresses, so new_cache reuses one cache per batch
        # size) and every other run opts out of capture.
        self.cuda_graph = cuda_graph
        self.static_decode = cuda_graph
        self._static: dict[tuple[int, int], _StaticStep] = {}
        self._bound_static: _StaticStep | None = None
        self._graph_caches: dict[int, KVCache] = {}
        self._uncaptured_run = None
        if cuda_graph:
            import onnxruntime as ort

            self._uncaptured_run = ort.RunOptions()
            self._uncaptured_run.add_run_config_entry("gpu_graph_id", "-1")
        # the graph's optional logits_to_keep (an initializer that is also an input: IO binding
        # takes it only as an OrtValue): 1 for last-position logits, 0 for every position
        self._keep = None
        if "logits_to_keep" in {i.name for i in ort_session.get_overridable_initializers()}:
            import onnxruntime as ort

            self._keep = {k: ort.OrtValue.ortvalue_from_numpy(np.array([k], dtype=np.int64)) for k in (0, 1)}

    @property
    def full_width_decode(self) -> bool:
        """Whether decode steps take their mask over the whole KV cache (static_decode on an
        in-place cache); generate() and benchmarks build the mask by this."""
        return self.static_decode and self.in_place

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike, provider: str = "auto", threads: int | None = None,
                 arena: bool = True, verify: bool = True, tokenizer: str | None = "light",
                 prepack: bool | None = None, spin: bool | str = "auto", tune_malloc: bool = True,
                 cuda_tf32: bool = True, cuda_graph: bool = False, release_pages: bool = True,
                 huge_pages: bool = True) -> "Session":
        """Verify the artifact's checksums, then load it on `provider` ('auto'|'cpu'|'cuda').
        tokenizer: 'light' (tokenizer.json without transformers; falls back to 'hf' when the
        artifact has no tokenizer.json), 'hf' (transformers.AutoTokenizer) or None.
        prepack: None follows the artifact's manifest (see the module docstring); False turns
        ORT's weight prepacking off (weights stay memory-mapped until read; slower decode),
        True on (for an fp16 artifact: a shared weight is then packed once per reader).
        spin: ORT worker threads spin-wait between ops: 'on', 'off', or 'auto' (the default:
        on when the cores the threads need are idle, see resolve_spin). On a CPU shared with
        other work spinning threads starve each other (measured on 2 busy cores: 2 tok/s
        spinning vs 5-12 tok/s not); on idle cores spinning decodes faster.
        threads: intra-op threads, default every core this process may use.
        arena: ORT's CPU memory arena, shrunk after each multi-token run (see the module
        docstring); False hands every activation to the allocator instead.
        tune_malloc: fix glibc's mmap threshold so freed prefill activations go back to the OS
        (peak RSS 1,844 -> ~850 MiB at a 512-token prefill; see memory.py). Process-wide; pass False to leave malloc alone.
        cuda_tf32: TF32 matmuls on CUDA (see cuda_provider); False for logits that match the CPU provider's.
        cuda_graph: on CUDA, decode steps replayed from a captured CUDA graph (static_decode on;
        an in-place KV cache needed). Ignored on the CPU.
        release_pages: after the session is built, drop the resident pages of the mapped weight
        files that its prepacked copies made redundant (memory.release_clean_pages; Linux).
        huge_pages: on CPU, once the session is built, back its large resident anonymous memory
        (the prepacked weights) with transparent huge pages (memory.collapse_huge_pages; Linux
        6.1+): a faster decode step for the same RSS, at the cost of a copy at load."""
        import onnxruntime as ort

        t0 = time.perf_counter()
        if not isinstance(spin, bool) and spin not in SPIN:  # before the (slow) checksum pass
            raise ConfigError(f"spin '{spin}' is not supported; allowed: {', '.join(SPIN)}")
        if tune_malloc:
            from .memory import tune_malloc as _tune

            _tune()
        art = Artifact.open(path, verify=verify)
        art.check_decoder()  # before the (slower) session build
        prov = resolve_provider(provider)
        if prov == "cuda" and (reason := cuda_unsupported(art)):
            if provider == "cuda":
                raise ConfigError(f"artifact '{art.path}' cannot run on provider 'cuda': {reason}")
            print(f"edgedelta: running on CPU (provider 'auto'): {reason}", file=sys.stderr)
            prov = "cpu"
        if cuda_graph and prov == "cuda" and art.kv_update != "in_place":
            raise ConfigError(f"cuda_graph needs an artifact whose KV cache is updated in place (GroupQueryAttention); "
                              f"'{art.path}' has attention '{art.attention}'")
        so = artifact_session_options(art, threads, arena, prepack, spin)
        providers: list[Any] = [_ORT_NAME["cpu"]]
        if prov == "cuda":
            if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* pip wheels (onnxruntime-gpu[cuda,cudnn])
                try:
                    ort.preload_dlls()
                except Exception:  # system CUDA libraries may still work; session creation decides
                    pass
            providers = [cuda_provider(cuda_tf32, cuda_graph), _ORT_NAME["cpu"]]
        try:
            sess = ort.InferenceSession(str(art.model_file), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ModelLoadError(f"ONNX Runtime cannot load '{art.model_file}': {type(e).__name__}: {e}") from None
        art.interface = session_interface(sess, str(art.model_file))
        if prov == "cuda" and sess.get_providers()[0] != _ORT_NAME["cuda"]:
            if provider == "cuda":
                raise ConfigError("provider 'cuda' is not available: ONNX Runtime could not create a CUDA session (no GPU or CUDA libraries)")
            print("edgedelta: CUDA session failed, running on CPU (provider 'auto')", file=sys.stderr)
            prov = "cpu"
        if release_pages:
            from .memory import release_clean_pages

            for f in art.path.iterdir():  # the external weight file(s) ORT mapped
                if f.is_file() and f.name != art.model_file.name and f.name.startswith(art.model_file.name):
                    release_clean_pages(f)
        if huge_pages and prov == "cpu":
            from .memory import collapse_huge_pages

            collapse_huge_pages()
        tok = load_artifact_tokenizer(art.path, tokenizer) if tokenizer else None
        return cls(art, sess, prov, tok, time.perf_counter() - t0, shrink_arena=arena and prov == "cpu",
                   cuda_graph=cuda_graph and prov == "cuda")

    # ---- KV cache ----------------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """Allocate the KV cache for `batch` rows and `capacity` positions. A cuda_graph session
        hands back its cache for `batch` rows, emptied, while that one holds `capacity`: its
        capacity may then be larger (size a full-width mask by cache.capacity)."""
        if self.cuda_graph and (c := self._graph_caches.get(batch)) is not None and c.capacity >= capacity:
            c.length = c.parity = c.released_at = 0
            return c
        n = batch * self.kv.kv_heads * capacity * self.kv.head_dim
        bufs = {}
        for names in self._past_names:
            for name in names:
                if self.provider == "cuda":
                    import onnxruntime as ort

                    mk = lambda: ort.OrtValue.ortvalue_from_shape_and_type([max(n, 1)], self._np_dtype, "cuda", 0)  # noqa: E731
                else:
                    mk = lambda: host_kv_buffer(max(n, 1), self._np_dtype)  # noqa: E731
                first = mk()
                bufs[name] = (first, first) if self.in_place else (first, mk())
        cache = KVCache(batch, capacity, bufs)
        if self.cuda_graph:
            self._graph_caches[batch] = cache
        return cache

    def cache_rows(self, cache: KVCache, start: int, stop: int) -> KVCache:
        """Rows [start, stop) of an in-place `cache` as a cache of their own, sharing its memory
        (a prefix of the (B, kvh, capacity, hd) buffer's batch dimension is contiguous): one
        request's prefill writes straight into its row of the batch."""
        if not self.in_place:
            raise ConfigError("cache rows can be shared only with an in-place KV cache (manifest io.kv_update)")
        if not 0 <= start < stop <= cache.batch:
            raise ConfigError(f"rows [{start}, {stop}) are outside a cache of {cache.batch} rows")
        row = self.kv.kv_heads * cache.capacity * self.kv.head_dim
        bufs = {}
        for name, (buf, _) in cache.bufs.items():
            if isinstance(buf, np.ndarray):
                view = buf[start * row:stop * row]
            else:  # an OrtValue on the device: the same memory at an offset
                view = DeviceRows(buf.data_ptr() + start * row * self._np_dtype.itemsize, (stop - start) * row * self._np_dtype.itemsize)
            bufs[name] = (view, view)
        return KVCache(stop - start, cache.capacity, bufs)

    @staticmethod
    def _ptr(buf) -> int:
        return buf.ctypes.data if isinstance(buf, np.ndarray) else buf.data_ptr()

    # ---- one forward step ------------------------------------------------------------------------
    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, cache: KVCache,
                all_logits: bool = False) -> np.ndarray:
        """Run S new tokens per row. input_ids/position_ids: int64 [B, S]; attention_mask:
        int64 [B, past+S]. Appends S positions to `cache`; returns last-position logits [B, V],
        or [B, S, V] with all_logits=True (a view into a reused buffer: copy it if you keep it
        past the next call). A graph with the logits_to_keep input runs its LM head on the
        last position only unless all_logits is asked.
        An in-place cache also takes ragged rows: the mask's width T is the slots in use, and
        each row's S new tokens go to the slots ending at its last attended one (a row of
        length L masks [0, L] with ones and the rest of T with zeros), so rows of different
        lengths decode together (the server's continuous batching)."""
        b, s = input_ids.shape
        if self.full_width_decode and s == 1 and attention_mask.shape[1] == cache.capacity:
            return self._static_step(input_ids, attention_mask, position_ids, cache)
        past = cache.length
        total = attention_mask.shape[1] if self.in_place else past + s
        if total > cache.capacity:
            raise ConfigError(f"KV cache capacity {cache.capacity} exceeded ({total} positions)")
        io, dev = self._io, ("cuda" if self.provider == "cuda" else "cpu")
        self._bound_static = None
        io.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        io.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        if "position_ids" in self._inputs:
            io.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        self._bind_kv(cache, b, past, total, dev)
        # logits [B, S, V] into a reused host buffer, grown for a prefill and shrunk again at the
        # next decode step: a 2k-token prompt's logits (400 MB for SmolLM2) must not stay
        # resident into the next prefill, where they would add to its attention peak
        v = self.artifact.vocab_size
        k = s
        if self._keep is not None:  # a prefill's LM head runs on its last position only
            keep = 0 if all_logits else 1
            if self._bound_keep != keep:
                io.bind_ortvalue_input("logits_to_keep", self._keep[keep])
                self._bound_keep = keep
            k = s if all_logits else 1
        need = b * k * v
        if not need <= self._logits_buf.size <= 4 * need:
            self._logits_buf = np.empty(need, dtype=self._logits_dtype)
        logits = self._logits_buf[:need].reshape(b, k, v)
        if self._bound_logits != (logits.ctypes.data, logits.shape):
            io.bind_output("logits", "cpu", 0, self._logits_dtype, [b, k, v], logits.ctypes.data)
            self._bound_logits = (logits.ctypes.data, logits.shape)
        if dev == "cuda":
            io.synchronize_inputs()
        self.ort.run_with_iobinding(io, self._uncaptured_run or (self._prefill_run if s > 1 else None))
        if dev == "cuda":
            io.synchronize_outputs()
        cache.parity = 0 if self.in_place else 1 - cache.parity
        self._grown(cache, total, attention_mask)
        return logits if all_logits else logits[:, -1, :]

    def _bind_kv(self, cache: KVCache, b: int, past: int, total: int, dev: str) -> None:
        """Bind `cache` as past and present. In place: the whole [B, kvh, capacity, hd] buffer
        as both, left bound while it is the same cache and B. Otherwise past [B, kvh, past, hd]
        at the start of buffer `parity` and present [B, kvh, total, hd] into the other."""
        if self.in_place and self._bound_kv == (cache.serial, b):
            return
        io, kvh, hd = self._io, self.kv.kv_heads, self.kv.head_dim
        src, dst = cache.parity, 1 - cache.parity
        for past_pair, pres_pair in zip(self._past_names, self._present_names):
            for pname, oname in zip(past_pair, pres_pair):
                bufs = cache.bufs[pname]
                if self.in_place:
                    shape = [b, kvh, cache.capacity, hd]
                    io.bind_input(pname, dev, 0, self._np_dtype, shape, self._ptr(bufs[0]))
                    io.bind_output(oname, dev, 0, self._np_dtype, shape, self._ptr(bufs[0]))
                    continue
                io.bind_input(pname, dev, 0, self._np_dtype, [b, kvh, past, hd], self._ptr(bufs[src]))
                io.bind_output(oname, dev, 0, self._np_dtype, [b, kvh, total, hd], self._ptr(bufs[dst]))
        self._bound_kv = (cache.serial, b) if self.in_place else None

    def _grown(self, cache: KVCache, total: int, attention_mask: np.ndarray) -> None:
        """Record that `cache` now spans `total` slots; release what sliding windows left behind."""
        cache.length = total
        if self._windows:
            if total < cache.released_at:  # a cache whose rows started over
                cache.released_at = 0
            if total - cache.released_at >= WINDOW_RELEASE_STEP:
                release_behind_windows(cache, self._windows, row_lengths(attention_mask), self.kv.kv_heads, self.kv.head_dim)

    def _static_step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                     cache: KVCache) -> np.ndarray:
        """One decode step of an in-place cache with a mask (B, capacity) over the whole cache:
        every input and output is an OrtValue made once per (cache, B) and refilled in place, so
        each step runs with the same shapes at the same addresses (a CUDA graph's replay reads
        exactly those). Returns logits [B, V]."""
        import onnxruntime as ort

        b, cap, v = input_ids.shape[0], cache.capacity, self.artifact.vocab_size
        dev = "cuda" if self.provider == "cuda" else "cpu"
        st = self._static.get((cache.serial, b))
        if st is None:
            if not self.cuda_graph:  # nothing captured holds the old ones
                self._static.clear()

            def mk(shape, dtype):
                return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, dev, 0)

            run = None
            if self.cuda_graph:  # one captured graph per (cache, B): ids from 1, -1 is "no capture"
                run = ort.RunOptions()
                run.add_run_config_entry("gpu_graph_id", str(len(self._static) + 1))
            st = _StaticStep(mk([b, 1], np.int64), mk([b, cap], np.int64), mk([b, 1], np.int64),
                             mk([b, 1, v], self._logits_dtype), run)
            self._static[(cache.serial, b)] = st
        st.ids.update_inplace(np.ascontiguousarray(input_ids, dtype=np.int64))
        st.mask.update_inplace(np.ascontiguousarray(attention_mask, dtype=np.int64))
        st.pos.update_inplace(np.ascontiguousarray(position_ids, dtype=np.int64))
        io = self._io
        if self._bound_static is not st:
            io.bind_ortvalue_input("input_ids", st.ids)
            io.bind_ortvalue_input("attention_mask", st.mask)
            if "position_ids" in self._inputs:
                io.bind_ortvalue_input("position_ids", st.pos)
            if self._keep is not None:
                io.bind_ortvalue_input("logits_to_keep", self._keep[1])
            io.bind_ortvalue_output("logits", st.logits)
            self._bound_static = st
            self._bound_keep, self._bound_logits = 1, None
        self._bind_kv(cache, b, 0, cap, dev)
        self.ort.run_with_iobinding(io, st.run)
        if dev == "cuda":
            io.synchronize_outputs()
        self._grown(cache, cap, attention_mask)
        return st.logits.numpy()[:, -1, :]

    def release_prefill_buffer(self, keep_tokens: int = 1, batch: int = 1) -> None:
        """Shrink the logits buffer after a long prefill ([B, S, V] fp32 can be 100+ MB)."""
        need = batch * keep_tokens * self.artifact.vocab_size
        if self._logits_buf.size > need:
            self._logits_buf = np.empty(need, dtype=self._logits_dtype)

    # ---- text generation (generate.py) ------------------------------------------------------------
    def generate(self, prompts, config=None, **kwargs):
        """Generate for one prompt (str -> GenerationResult) or a list (-> list). See generate.py."""
        from .generate import generate

        return generate(self, prompts, config, **kwargs)

    def stream(self, prompt: str, config=None, **kwargs):
        """Iterator of text pieces for one prompt; joined they equal generate(prompt).text."""
        from .generate import stream

        return stream(self, prompt, config, **kwargs)


@dataclass
class _StaticStep:
    """The OrtValues of Session._static_step for one (cache, B): ids, positions (B, 1) and mask
    (B, capacity) int64 inputs, logits (B, 1, V); run: the options naming its CUDA graph."""

    ids: Any
    mask: Any
    pos: Any
    logits: Any
    run: Any


def load_artifact_tokenizer(path: Path, kind: str = "light"):
    """The tokenizer saved beside the graph (tokenizer.json etc.); never fetched from a hub."""
    if kind not in ("light", "hf"):
        raise ConfigError(f"unknown tokenizer kind '{kind}'; allowed: light, hf")
    if kind == "light" and (path / "tokenizer.json").is_file():
        from .tokenizer import LightTokenizer

        return LightTokenizer(path)
    from edgedelta.hf_tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(path, "artifact")
