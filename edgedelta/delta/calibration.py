"""Calibration: the text compress() fits on (one explicit object, `Calibration`) and the
statistics measured on it: the input covariance C = Σ x xᵀ of every linear projection,
gathered with forward pre-hooks while the original model reads calibration text.
Data-aware initialisation minimises ‖(W − Ŵ) X‖ = ‖(W − Ŵ) S‖ with C = S Sᵀ."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data.text import calibration_batches
from ..errors import ConfigError
from ..models.adapters import ModelAdapter
from ..models.layer_inputs import StopForward, stand_ins
from .config import CompressConfig


@dataclass
class Calibration:
    """Calibration text and what compress() measures on it. A caller comparing several configs
    on one model passes the measurements once (covs, influence); None fields are measured when
    a config needs them."""

    ids: torch.Tensor | None  # (n, T) token ids; None when the config needs no calibration text
    covs: dict[tuple[int, str], torch.Tensor] | None = None  # input_covariances over every layer of the model
    influence: list[float] | None = None  # block influence of each of the model's layers on ids

    @classmethod
    def draw(cls, cfg: CompressConfig, tokenizer, calib_ids: torch.Tensor | None = None) -> "Calibration":
        """cfg.calib_samples rows of cfg.calib_text (cfg.calib_seq_len tokens each), or `calib_ids`."""
        if calib_ids is not None:
            return cls(calib_ids)
        if tokenizer is None:
            raise ConfigError(f"init '{cfg.init}' / gates / anchor base / budget planning / drop_layers need calibration text: "
                              "pass a tokenizer or calib_ids")
        return cls(calibration_batches(tokenizer, cfg.calib_samples, cfg.calib_seq_len, cfg.seed, cfg.calib_text))


def _covariance_hook(covs: dict, key):
    """A forward pre-hook adding its module's input xᵀx (in, in) float64 to covs[key]."""
    def hook(_module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
        c = (x.T @ x).double()
        covs[key] = covs[key] + c if key in covs else c
    return hook


@torch.no_grad()
def input_covariances(model, adapter: ModelAdapter, layer_indices, projections, calib_ids: torch.Tensor,
                      batch_size: int = 4, progress: bool = False) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, proj): C (in, in) float64} over all tokens of calib_ids (n, seq_len).
    Projections that read the same input (q/k/v, gate/up) get the same tensor object, and it
    is gathered once."""
    layers = adapter.decoder_layers(model)
    covs: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    readers = input_readers(adapter, projections)

    for li in layer_indices:
        for proj in readers:
            hooks.append(adapter.get_linear(layers[li], proj).register_forward_pre_hook(_covariance_hook(covs, (li, proj))))
    try:
        model.eval()
        device = next(model.parameters()).device
        for s in tqdm(range(0, calib_ids.shape[0], batch_size), desc="calibration", disable=not progress, leave=False):
            model(input_ids=calib_ids[s : s + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    for li in layer_indices:
        for proj in projections:
            covs[(li, proj)] = covs[(li, readers_of(adapter, proj, readers))]
    return covs


class StreamedCovariances:
    """input_covariances' {(layer, proj): C} computed layer by layer when asked for, so that a
    large model's covariances never need to be held at once: Qwen2.5-1.5B's down_proj input
    alone is 8960² float64 = 642 MB a layer, 18 GB for all 28.

    One capture pass runs the embedding for each calibration batch and records every decoder
    layer's keyword arguments (masks, rotary tables) while the layers are stood in for; then
    layer i's covariances come from running layer i alone on its input, the hidden states
    (n, T, H) fp32 after layer i-1, which are kept for every layer (n·T·H·L·4 bytes: 1.4 GB
    for Qwen2.5-1.5B at the default 32 x 256 calibration tokens), so revisiting a layer
    costs one layer. Computed covariances are kept, oldest evicted first, within
    `max_bytes`. The values equal input_covariances' (the same ops on the same inputs)."""

    def __init__(self, model, adapter: ModelAdapter, projections, calib_ids: torch.Tensor, batch_size: int = 4,
                 max_bytes: int = 3 * 2**29, progress: bool = False):
        self.model, self.adapter, self.max_bytes, self.progress = model, adapter, max_bytes, progress
        self.layers = adapter.decoder_layers(model)
        self.readers = input_readers(adapter, projections)
        self.batches = [calib_ids[s : s + batch_size] for s in range(0, calib_ids.shape[0], batch_size)]
        self._inputs: dict[int, list[torch.Tensor]] = {}  # layer -> per batch (b, T, H) input hidden states
        self._kwargs: list[list[dict]] = []  # per batch, per layer: the keyword arguments the model passes
        self._covs: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()  # layer -> {reader proj: C}
        self.layers_run = 0  # decoder-layer forwards over the calibration set (a test and a report read it)

    def release(self) -> None:
        """Drop what is held (covariances, stored inputs, captured arguments); asking again
        starts over."""
        self._covs.clear()
        self._inputs.clear()
        self._kwargs.clear()

    def __getitem__(self, key: tuple[int, str]) -> torch.Tensor:
        li, proj = key
        if li not in self._covs:
            self._compute(li)
        self._covs.move_to_end(li)
        return self._covs[li][readers_of(self.adapter, proj)]

    @torch.no_grad()
    def _capture(self) -> None:
        """Layer 0's inputs and every layer's keyword arguments, per batch; no layer runs."""
        n = len(self.layers)
        wrap: list = [None]  # how the model's loop takes a layer's output: a tensor or a tuple

        def stand_in(i, real):
            def forward(hidden, *args, **kwargs):
                self._kwargs[-1].append(kwargs)
                if i == n - 1:
                    raise StopForward
                if wrap[0] is None:  # learn the output form once from the real layer
                    wrap[0] = (lambda h: (h,)) if isinstance(real(hidden, *args, **kwargs), tuple) else (lambda h: h)
                return wrap[0](hidden)
            return forward

        def grab_input(_module, args):
            self._inputs.setdefault(0, []).append(args[0].detach())

        hook = self.layers[0].register_forward_pre_hook(grab_input)
        try:
            with stand_ins(self.layers, stand_in):
                device = next(self.model.parameters()).device
                self.model.eval()
                for batch in self.batches:
                    self._kwargs.append([])
                    try:
                        self.model(input_ids=batch.to(device), use_cache=False)
                    except StopForward:
                        pass
        finally:
            hook.remove()
        if any(len(k) != n for k in self._kwargs):
            raise RuntimeError("the model did not call every decoder layer once per forward")

    @torch.no_grad()
    def _compute(self, li: int) -> None:
        if not self._kwargs:
            self._capture()
        start = max(i for i in self._inputs if i <= li)
        for i in range(start, li + 1):
            self._run_layer(i)

    def _run_layer(self, i: int) -> None:
        """Layer i over every batch: its covariances, and layer i+1's inputs."""
        covs: dict[str, torch.Tensor] = {}
        layer = self.layers[i]
        hooks = [self.adapter.get_linear(layer, p).register_forward_pre_hook(_covariance_hook(covs, p)) for p in self.readers]
        outs = []
        try:
            for b, hidden in enumerate(tqdm(self._inputs[i], desc=f"calibration layer {i}", disable=not self.progress,
                                            leave=False)):
                out = layer(hidden, **self._kwargs[b][i])
                outs.append((out[0] if isinstance(out, tuple) else out).detach())
        finally:
            for h in hooks:
                h.remove()
        self.layers_run += 1
        if i + 1 < len(self.layers):
            self._inputs[i + 1] = outs
        self._covs[i] = covs
        while len(self._covs) > 1 and sum(_nbytes(c) for v in self._covs.values() for c in v.values()) > self.max_bytes:
            self._covs.popitem(last=False)


def input_readers(adapter: ModelAdapter, projections) -> list[str]:
    """One projection per distinct input: the first of each sub-layer's input readers
    (everything but o/down reads the normed sub-layer input) plus o and down."""
    return sorted({readers_of(adapter, p) for p in projections}, key=list(adapter.projections).index)


def readers_of(adapter: ModelAdapter, proj: str, _=None) -> str:
    """The projection whose input `proj` shares (itself for o/down/fused ones)."""
    if proj in ("o", "down") or proj in adapter.fused:
        return proj
    kind = adapter.kinds[proj]
    return next(p for p in adapter.projections if adapter.kinds[p] == kind and p not in ("o", "down"))


class WhiteningCache:
    """Whitening factors S (float32) and damped covariances S·Sᵀ computed once per distinct
    covariance tensor (q/k/v share one; each layer appears in two candidate groups), the most
    recently used kept within `max_bytes`. An entry holds its covariance by weak reference: a
    streamed covariance that is evicted (StreamedCovariances) is not kept alive here."""

    def __init__(self, damping: float, max_bytes: int = 3 * 2**29):
        self.damping, self.max_bytes = damping, max_bytes
        self._s: OrderedDict[int, list] = OrderedDict()  # id(cov) -> [weakref(cov), S, S·Sᵀ or None]

    def _entry(self, cov: torch.Tensor) -> list:
        key = id(cov)
        e = self._s.get(key)
        if e is None or e[0]() is not cov:  # new, or an id reused by another tensor
            e = self._s[key] = [weakref.ref(cov), whitening_factor(cov, self.damping).float(), None]
        self._s.move_to_end(key)
        return e

    def clear(self) -> None:
        self._s.clear()

    def _evict(self) -> None:
        while len(self._s) > 1 and sum(_nbytes(x) for v in self._s.values() for x in v[1:]) > self.max_bytes:
            self._s.popitem(last=False)

    def __call__(self, cov: torch.Tensor) -> torch.Tensor:
        s = self._entry(cov)[1]
        self._evict()
        return s

    def damped(self, cov: torch.Tensor) -> torch.Tensor:
        """C + λI (float32), = S·Sᵀ."""
        e = self._entry(cov)
        if e[2] is None:
            e[2] = e[1] @ e[1].T
        self._evict()
        return e[2]


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def whitening_factor(cov: torch.Tensor, damping: float) -> torch.Tensor:
    """Lower-triangular S with S Sᵀ = C + λI, λ = damping · mean(diag C) (keeps S invertible
    for directions the calibration text never excited)."""
    c = cov.double()
    lam = damping * c.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    for attempt in range(6):  # grow damping if C is numerically indefinite
        s, info = torch.linalg.cholesky_ex(c + lam * (10**attempt) * eye)
        if info.item() == 0:
            return s
    raise ValueError("input covariance is not positive definite even with heavy damping")
