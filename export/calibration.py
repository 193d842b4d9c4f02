"""Calibration statistics for data-aware weight quantization (GPTQ): the input Hessian
H = Σ xᵀx (K, K) of every weight, gathered with forward pre-hooks while the float model reads
calibration text (training text or a user's own files, never held-out evaluation text).

Keyed by the weight's Parameter object, not by layer: a shared base (one nn.Parameter in every
layer of a DeltaLLM group) gets the sum of the inputs of EVERY layer that reads it, so its one
quantization serves all its readers. A delta A (r, K) reads its own layer's input; a delta
B (out, r) reads x·Aᵀ, so H_B = A·H·Aᵀ (r, r) is derived, not hooked. A tied LM head's H is
the final norm's output, keyed by the embedding Parameter it reads.

Cost: projections that read the same input (q/k/v, gate/up) share one accumulator, so a
layer holds (3·hidden² + mlp²)·4 bytes: 13 MB for SmolLM2-135M (403 MB for all 30 layers),
350 MB for Qwen2.5-1.5B (9.8 GB for all 28). Layers are therefore gathered in windows of at
most `max_bytes` (a group's layers always in one window), one forward pass per window that
stops after the window's last layer and starts at its first from the hidden states the pass
before stored; the collector asks for weights in layer order, so each window is computed
once (plus one pass for a tied head asked for first).

Speed (Qwen2.5-1.5B, 2 cores): a pass's time goes to the window's forward and to the 8960-wide
xᵀx of each down projection. The Gram is accumulated on its upper block triangle only (8
column blocks: 0.53 s instead of 0.93 s per 2048 tokens; mirrored when read). On a CPU with
bfloat16 matrix units (AMX, AVX512-BF16) the forward runs under bfloat16 autocast (its GEMMs
5x faster than float32), and each batch's Gram blocks are bfloat16 products summed into
float32 accumulators: the statistics are estimates from a few thousand tokens of text, and a
0.4% rounding of the activations and of each batch's product is far below that sampling
noise. bench/gram_precision.py measures both on a real model: the Gram's time, how far the
bfloat16 Hessian is from the float32 one, and GPTQ's output error under each (judged by the
float32 Hessian)."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from edgedelta.data.text import calibration_batches
from edgedelta.delta.calibration import readers_of
from edgedelta.delta.layer import DeltaLinear
from edgedelta.errors import ConfigError
from edgedelta.models.adapters import adapter_for
from edgedelta.models.layer_inputs import StopForward, stand_ins, stop_after

from .quant_methods import DATA_METHODS

CALIB_SEQ_LEN = 512
GRAM_BLOCK = 1024  # columns per block of a blocked xᵀx: K = 8960 -> 8 blocks, K <= 2047 -> one plain GEMM
DEFAULT_MAX_BYTES = 2 << 30  # accumulators held at once (float32 Hessians)
HEAD = -1  # pseudo layer index of the LM head's input stream


class CalibrationStats:
    """Input Hessians per weight Parameter, computed lazily window by window.

    hessian(p) -> (K, K) float32 ndarray, or None for a tensor no hooked module reads."""

    def __init__(self, model, calib_ids: torch.Tensor, max_bytes: int = DEFAULT_MAX_BYTES, batch_size: int = 4,
                 progress: bool = False, text: str = "", bf16_forward: bool | None = None):
        self.model, self.ids, self.batch_size, self.progress, self.text = model, calib_ids, batch_size, progress, text
        # None: where the CPU multiplies bfloat16 in hardware (see the module docstring)
        self.bf16_forward = cpu_has_bf16_matmul() if bf16_forward is None else bf16_forward
        self.adapter = adapter_for(model.config)
        self.layers = self.adapter.decoder_layers(model)
        self.tokens = int(calib_ids.numel())
        # streams: (layer, reader projection) -> the module whose input is hooked
        self.stream_module: dict[tuple[int, str], torch.nn.Module] = {}
        self.readers: dict[int, list[tuple[int, str]]] = {}  # id(weight or delta_A) -> streams it reads
        self.delta_b: dict[int, torch.Tensor] = {}  # id(delta_B) -> its layer's delta_A (r, K)
        self._keep: list[torch.Tensor] = []  # the keyed tensors, so their ids stay unique
        for li, layer in enumerate(self.layers):
            for proj in self.adapter.projections:
                mod = self.adapter.get_linear(layer, proj)
                stream = (li, readers_of(self.adapter, proj))
                self.stream_module.setdefault(stream, self.adapter.get_linear(layer, stream[1]))
                self._read(mod.weight, stream)
                if isinstance(mod, DeltaLinear) and mod.rank:
                    self._read(mod.delta_A, stream)
                    self.delta_b[id(mod.delta_B)] = mod.delta_A
                    self._keep.append(mod.delta_B)
        head = model.get_output_embeddings()
        if head is not None:
            self.stream_module[(HEAD, "lm_head")] = head
            self._read(head.weight, (HEAD, "lm_head"))
        self.windows = self._windows(max_bytes)
        self._h: dict[tuple[int, str], torch.Tensor] = {}
        self._loaded: int | None = None  # index into self.windows
        self.passes = 0  # forward passes run (one per window loaded)
        self.seconds = 0.0  # wall time of those passes, Gram accumulation included
        self.layers_run = 0  # decoder layers run over the calibration set, all passes together
        # layer -> per batch the hidden states entering it, stored by the pass that ended before it
        self._boundary: dict[int, list[torch.Tensor]] = {}
        self._tuple_output: bool | None = None  # how the model's loop takes a layer's output

    def _read(self, p: torch.Tensor, stream) -> None:
        self.readers.setdefault(id(p), []).append(stream)
        self._keep.append(p)

    def _windows(self, max_bytes: int) -> list[list[int]]:
        """Consecutive layer windows under max_bytes of accumulators; layers that share a
        weight stay together (a shared base's readers are summed in one pass)."""
        n = len(self.layers)
        link = [False] * n  # link[i]: layer i must share a window with layer i-1
        for streams in self.readers.values():
            ls = sorted({li for li, _ in streams if li != HEAD})
            for a in range(ls[0] + 1, ls[-1] + 1) if ls else ():
                link[a] = True
        cost = [sum(m.in_features ** 2 * 4 for (li, _), m in self.stream_module.items() if li == i) for i in range(n)]
        windows: list[list[int]] = []
        size = 0
        for i in range(n):
            if windows and (link[i] or size + cost[i] <= max_bytes):
                windows[-1].append(i)
                size += cost[i]
            else:
                windows.append([i])
                size = cost[i]
        if windows:
            windows[-1].append(HEAD)  # the head reads the final hidden state: the pass that runs to the end
        else:
            windows = [[HEAD]]
        return windows

    def hessian(self, p) -> np.ndarray | None:
        """H (K, K) = Σ xᵀx over every calibration token of every layer that reads p. p may be
        a pair (P, A) (A: (r, K)): the Hessian of x·Aᵀ where x is P's input, (r, r)."""
        if isinstance(p, tuple):
            src, a = p
            h = self.hessian(src)
            a = a.detach().float()
            return None if h is None else (a @ torch.from_numpy(h) @ a.T).numpy()
        if id(p) in self.delta_b:
            return self.hessian((self.delta_b[id(p)], self.delta_b[id(p)]))  # x·Aᵀ where x is A's input
        streams = self.readers.get(id(p))
        if not streams:
            return None
        self._load(streams[0][0])
        h = sum(self._h[s] for s in dict.fromkeys(streams))  # a stream read twice (q and k of one layer) counts once
        return symmetric_from_upper(h).numpy()

    def _load(self, layer: int) -> None:
        wi = next(i for i, w in enumerate(self.windows) if layer in w)
        if self._loaded == wi:
            return
        self._h.clear()  # frees the previous window's accumulators
        self._gather(self.windows[wi])
        self._loaded = wi

    @torch.no_grad()
    def _gather(self, window: list[int]) -> None:
        """One pass over the calibration batches with the window's accumulators hooked. It
        starts at the window's first layer when an earlier pass stored that layer's inputs
        (the layers before stand in as identities), and stores what its last layer outputs
        for the next window: every layer runs once over all passes, not once per window after it."""
        t0 = time.perf_counter()
        hooks = []
        batch = [0]  # the batch the running forward reads

        def accumulate(stream):
            def hook(_module, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1])  # (tokens, K)
                if stream not in self._h:
                    self._h[stream] = torch.zeros(x.shape[1], x.shape[1])
                add_gram_upper(self._h[stream], x if self.bf16_forward else x.float(), bf16=self.bf16_forward)
            return hook

        def form(_module, _args, out):
            self._tuple_output = isinstance(out, tuple)

        def feed(start):
            def hook(_module, args):
                return (self._boundary[start][batch[0]], *args[1:])
            return hook

        def store(_module, _args, out):
            h = out[0] if isinstance(out, tuple) else out
            self._boundary.setdefault(last + 1, []).append(h.detach())
            if HEAD not in window:
                raise StopForward

        for stream, mod in self.stream_module.items():
            if stream[0] in window:
                hooks.append(mod.register_forward_pre_hook(accumulate(stream)))
        layers_in = [li for li in window if li != HEAD]
        first = min(layers_in) if layers_in else len(self.layers)
        last = max(layers_in) if layers_in else len(self.layers) - 1
        resume = 0 < first < len(self.layers) and first in self._boundary and self._tuple_output is not None
        skipped = self.layers[:first] if resume else []
        if resume:
            hooks.append(self.layers[first].register_forward_pre_hook(feed(first)))
        if self._tuple_output is None:
            hooks.append(self.layers[0].register_forward_hook(form))
        if last + 1 < len(self.layers) and last + 1 not in self._boundary:
            hooks.append(self.layers[last].register_forward_hook(store))
        elif HEAD not in window:
            hooks.append(stop_after(self.layers[last]))
        wrap = (lambda h: (h,)) if self._tuple_output else (lambda h: h)
        try:
            self.model.eval()
            device = next(self.model.parameters()).device
            starts = range(0, self.ids.shape[0], self.batch_size)
            desc = f"calibration pass {self.passes + 1}/{len(self.windows)}"
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_forward and device.type == "cpu")
            with stand_ins(skipped, lambda i, real: (lambda hidden, *a, **k: wrap(hidden))), autocast:
                for batch[0], s in enumerate(tqdm(starts, desc=desc, disable=not self.progress, leave=False)):
                    try:
                        self.model(input_ids=self.ids[s : s + self.batch_size].to(device))
                    except StopForward:
                        pass
        finally:
            for h in hooks:
                h.remove()
        self._boundary = {k: v for k, v in self._boundary.items() if k > last}  # later windows read only what is after
        self.passes += 1
        self.layers_run += (last + 1) - (first if resume else 0)
        self.seconds += time.perf_counter() - t0

    def summary(self) -> dict:
        return {"text": self.text, "sequences": int(self.ids.shape[0]), "seq_len": int(self.ids.shape[1]),
                "tokens": self.tokens, "windows": len(self.windows), "forward_passes": self.passes,
                "forward_dtype": "bfloat16" if self.bf16_forward else "float32", "seconds": round(self.seconds, 2)}


def add_gram_upper(h: torch.Tensor, x: torch.Tensor, block: int = GRAM_BLOCK, bf16: bool = False) -> None:
    """h (K, K) float32 += xᵀx on its upper block triangle: column blocks of `block`, each
    block row from its diagonal block rightwards (x (tokens, K)). The blocks below the diagonal
    are left as they are; symmetric_from_upper() rebuilds the whole matrix.

    bf16: each block product from bfloat16 x (float32 sums inside the matrix unit, the
    product rounded to bfloat16) added into float32 h; see the module docstring."""
    k = x.shape[1]
    n = max(1, k // block)
    edges = [k * i // n for i in range(n + 1)]
    if bf16:
        xb = x.to(torch.bfloat16)
        for a, b in zip(edges[:-1], edges[1:]):
            h[a:b, a:].add_(xb[:, a:b].T @ xb[:, a:])
        return
    for a, b in zip(edges[:-1], edges[1:]):
        h[a:b, a:].addmm_(x[:, a:b].T, x[:, a:])


def symmetric_from_upper(h: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle (diagonal included) is h's."""
    return torch.triu(h) + torch.triu(h, 1).T


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (x86 AMX or AVX512-BF16, as
    /proc/cpuinfo lists them): elsewhere a bfloat16 forward is slower than float32's."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def calibration_for(model, tokenizer, cfg, progress: bool = False) -> CalibrationStats | None:
    """The statistics `cfg.quant_method` needs (None for data-free methods or no quantization).
    Token windows come from cfg.calib_text (a training set or a user's files; held-out
    evaluation sets are refused by ExportConfig)."""
    if cfg.quantize == "none" or cfg.quant_method not in DATA_METHODS:
        return None
    if tokenizer is None:
        raise ConfigError(f"quant_method '{cfg.quant_method}' needs calibration text, but the model directory has no tokenizer; "
                          "add tokenizer files or use a data-free method (hqq, rtn)")
    ids = calibration_batches(tokenizer, cfg.calib_samples, CALIB_SEQ_LEN, seed=0, source=cfg.calib_text)
    return CalibrationStats(model, ids, progress=progress, text=cfg.calib_text)
