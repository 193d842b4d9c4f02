"""Model parameters → named initializers, each distinct tensor exactly once.

Identity decides sharing: a Parameter object seen again (a group's shared base, a tied
embedding) maps to the initializer already made for it. Names are stable and readable:

    shared.g3.mlp.up_proj.weight      a group's shared base (every layer of group 3 reads it)
    layers.7.mlp.up_proj.weight       an unshared projection
    layers.7.mlp.up_proj.delta_A      (in, r)   layer 7's delta, stored as Aᵀ
    layers.7.mlp.up_proj.delta_B      (r, out)  stored as B'ᵀ (B folded with g and α, see LinearRef)
    layers.7.mlp.down_proj.scale      scalar gate·α on base + delta (absent when exactly 1)
    embed_tokens.weight               (vocab, hidden), also lm_head when tied

Layouts are the ones the consuming op reads, so no Transpose ever touches a weight:
float projections are stored (in, out) for MatMul; quantized ones in MatMulNBits' (out,
in-blocks) layout; the tied embedding (vocab, hidden) feeds Gather and a Gemm with transB.
In fp32, build_graph then gives every weight with several readers a leading unit axis
(prepack.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgedelta.delta.layer import DeltaLinear
from edgedelta.delta.structure import get_spec
from edgedelta.models.adapters import ModelAdapter

from .config import ExportConfig
from .graph import GraphBuilder
from .quantize import BITS, QuantizedWeight, quantize_blockwise


@dataclass
class QRef:
    """A MatMulNBits weight: its three initializers (each may be shared with an identical
    tensor elsewhere, e.g. the scales of a delta and of its negation) and the values."""

    names: tuple[str, str, str]  # packed, scales, zero_points
    q: QuantizedWeight


@dataclass
class LinearRef:
    """How one layer's projection is computed: y = s·(x·W + (x·Aᵀ)·B'ᵀ) + bias.

    A DeltaLinear's gate g and base scale α are folded at export: s = g·α, B' = B/α, so
    s·B' = g·B. Same function, and one Mul (none when s is exactly 1, e.g. an anchor layer)
    instead of two. The Mul comes after the delta's Add, not right after the base MatMul:
    ONNX Runtime fuses MatMul→Mul(scalar) into FusedMatMul(alpha), which leaves its fast M=1
    path and made a 12%-compressed SmolLM2 decode at 0.75x the original (1.02x with the Mul
    moved; bench/results/runtime.md). `scale_first` (only when α = 0, where B/α does not
    exist): s on the base output alone and B' = g·B."""

    weight: str  # initializer name: float (in, out), or the packed MatMulNBits tensor
    in_features: int
    out_features: int
    quant: "QRef | None" = None  # set when `weight` is MatMulNBits-packed
    delta_A: str | None = None  # float (in, r), or packed (r, in-blocks) when delta_quant is set
    delta_B: str | None = None  # float (r, out), or packed (out, r-blocks)
    delta_quant: "tuple[QRef, QRef] | None" = None
    bias: str | None = None
    scale: str | None = None  # scalar s = gate·α on base + delta (None: s = 1)
    scale_first: bool = False  # s on the base output only (α = 0)


@dataclass
class LayerWeights:
    linears: dict[str, LinearRef]  # projection short name -> ref
    input_norm: str
    post_attention_norm: str


@dataclass
class ModelWeights:
    embed: str  # (vocab, hidden)
    lm_head: LinearRef | None  # None when tied to `embed`
    final_norm: str
    layers: list[LayerWeights]
    kinds: dict[str, str] = field(default_factory=dict)  # initializer -> shared|projection|delta|gate|bias|norm|embedding|lm_head
    params: dict[str, int] = field(default_factory=dict)  # initializer -> model parameters it stores
    aliases: dict[str, str] = field(default_factory=dict)  # parameter name -> initializer holding identical bytes
    dequantized: dict[int, np.ndarray] = field(default_factory=dict)  # id(Parameter) -> (out, in) weights as the kernel sees them


def _np(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().astype(dtype)


class WeightCollector:
    """Adds every parameter of `model` to `builder` once; returns ModelWeights."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, cfg: ExportConfig, builder: GraphBuilder):
        self.model, self.adapter, self.cfg, self.b = model, adapter, cfg, builder
        self.dtype = np.dtype(np.float16 if cfg.dtype == "fp16" else np.float32)
        self.by_id: dict[int, LinearRef | str] = {}  # id(Parameter) -> what was made for it
        self.by_content: dict[tuple, str] = {}  # (dtype, shape, sha256) -> initializer name
        self.out = None

    # --- entry ----------------------------------------------------------------------
    def collect(self) -> ModelWeights:
        model, ad = self.model, self.adapter
        layers = ad.decoder_layers(model)
        shared_names = self._shared_names(layers)
        embed = ad.embed_tokens(model).weight  # (vocab, hidden)
        self.out = ModelWeights(embed="", lm_head=None, final_norm="", layers=[])
        self.out.embed = self._float("embed_tokens.weight", embed, "embedding")
        for i, layer in enumerate(layers):
            linears = {}
            for proj, path in ad.projections.items():
                mod = ad.get_linear(layer, proj)
                base = shared_names.get(id(mod.weight), f"layers.{i}.{path}.weight")
                linears[proj] = self._linear(mod, base, f"layers.{i}.{path}")
            self.out.layers.append(LayerWeights(
                linears,
                self._norm(f"layers.{i}.{ad.input_norm}.weight", layer.get_submodule(ad.input_norm).weight),
                self._norm(f"layers.{i}.{ad.post_attention_norm}.weight", layer.get_submodule(ad.post_attention_norm).weight),
            ))
        self.out.final_norm = self._norm("norm.weight", ad.final_norm(model).weight)
        lm = model.get_output_embeddings()
        if lm.weight is not embed:  # untied: an ordinary projection
            self.out.lm_head = self._linear(lm, "lm_head.weight", "lm_head", kind="lm_head")
        return self.out

    def _shared_names(self, layers) -> dict[int, str]:
        """id(shared Parameter) -> 'shared.g{i}.{attribute path}.weight'."""
        spec = get_spec(self.model)
        names = {}
        if spec is None:
            return names
        for gi, group in enumerate(spec.groups):
            for proj in spec.projections:
                w = self.adapter.get_linear(layers[group[0]], proj).weight
                names[id(w)] = f"shared.g{gi}.{self.adapter.projections[proj]}.weight"
        return names

    # --- pieces ------------------------------------------------------------------------
    def _add(self, name: str, arr: np.ndarray, kind: str, params: int) -> str:
        """Add a tensor; a tensor whose bytes equal an earlier one's (e.g. pair-mean deltas of
        a 2-layer group, B₁A₁ = −B₂A₂, or untrained zero deltas) is not stored again: `name`
        becomes an alias of the first (listed in ModelWeights.aliases)."""
        key = (arr.dtype.str, arr.shape, hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
        if key in self.by_content:
            first = self.by_content[key]
            self.out.aliases[name] = first
            self.out.params[first] += params
            return first
        self.by_content[key] = name
        self.b.initializer(name, arr)
        self.out.kinds[name], self.out.params[name] = kind, params
        return name

    def _quantized(self, name: str, w: torch.Tensor, kind: str) -> QRef:
        """Quantize w (N=out, K=in) into MatMulNBits tensors '{name}', '{name}.scales',
        '{name}.zero_points' (each stored once even if identical to another's)."""
        k = w.shape[1]
        block = self.cfg.block_size if k >= self.cfg.block_size else 16  # a short K (delta_B: K = rank) pads less
        q = quantize_blockwise(_np(w, np.float32), BITS[self.cfg.quantize], block)
        q.scales = q.scales.astype(self.dtype)  # MatMulNBits: scales in the activation dtype
        self.out.dequantized[id(w)] = q.dequantize()
        names = (self._add(name, q.packed, kind, w.numel()), self._add(name + ".scales", q.scales, kind, 0),
                 self._add(name + ".zero_points", q.zero_points, kind, 0))
        return QRef(names, q)

    def _float(self, name: str, p: torch.Tensor, kind: str, transpose: bool = False) -> str:
        if id(p) in self.by_id:
            return self.by_id[id(p)]
        t = p.detach().T if transpose else p.detach()
        self.by_id[id(p)] = self._add(name, _np(t, self.dtype), kind, p.numel())
        return self.by_id[id(p)]

    def _norm(self, name: str, w: torch.Tensor) -> str:
        # Gemma's RMSNorm multiplies by (1 + w): the offset is folded in once here.
        off = self.adapter.norm_weight_offset
        return self._add(name, _np(w.detach().float() + off, self.dtype), "norm", w.numel())

    def _linear(self, mod: nn.Module, base: str, prefix: str, kind: str | None = None) -> LinearRef:
        w = mod.weight  # (out, in)
        shared = isinstance(mod, DeltaLinear)
        kind = kind or ("shared" if shared else "projection")
        ref = LinearRef(base, w.shape[1], w.shape[0])
        if id(w) in self.by_id:  # a group's base seen before: reuse its initializers
            first = self.by_id[id(w)]
            ref.weight, ref.quant = first.weight, first.quant
        elif self.cfg.quantize != "none":
            ref.quant = self._quantized(base, w, kind)
            ref.weight = ref.quant.names[0]
            self.by_id[id(w)] = ref
        else:
            ref.weight = self._add(base, _np(w.T, self.dtype), kind, w.numel())  # (in, out) for MatMul (an alias if identical)
            self.by_id[id(w)] = ref
        gate = float(mod.gate.detach()) if shared and mod.gate is not None else 1.0
        alpha = float(mod.base_scale.detach()) if shared and mod.base_scale is not None else 1.0
        scale_first = alpha == 0.0
        # B' (out, r): B/α when s multiplies base + delta (s·B' = g·B), else g·B; the parity
        # reference gets B = B'·b_to_ref back
        b_factor = gate if scale_first or gate * alpha == 1.0 else 1.0 / alpha
        b_to_ref = 1.0 / b_factor if b_factor != 0.0 else None
        delta_b = mod.delta_B.detach() * b_factor if shared and mod.rank else None
        if shared and mod.rank and self.cfg.quantize != "none" and self.cfg.quantize_deltas:
            # deltas quantized too: left in fp32 they would outweigh what int4 sharing saves
            qa = self._quantized(f"{prefix}.delta_A", mod.delta_A, "delta")  # (N=r, K=in)
            qb = self._quantized(f"{prefix}.delta_B", delta_b, "delta")  # (N=out, K=r)
            # the parity reference keeps g, α and B apart: give it B from the dequantized B'
            deq_b = self.out.dequantized.pop(id(delta_b))
            if b_to_ref is not None:
                self.out.dequantized[id(mod.delta_B)] = deq_b * b_to_ref
            ref.delta_A, ref.delta_B, ref.delta_quant = qa.names[0], qb.names[0], (qa, qb)
        elif shared and mod.rank:
            ref.delta_A = self._add(f"{prefix}.delta_A", _np(mod.delta_A.T, self.dtype), "delta", mod.delta_A.numel())  # (in, r)
            ref.delta_B = self._add(f"{prefix}.delta_B", _np(delta_b.T, self.dtype), "delta", delta_b.numel())  # (r, out)
        if gate * alpha != 1.0:
            scalars = (mod.gate is not None) + (mod.base_scale is not None)
            ref.scale = self._add(f"{prefix}.scale", np.asarray(gate * alpha, dtype=self.dtype), "gate", scalars)
            ref.scale_first = scale_first
        if getattr(mod, "bias", None) is not None:
            ref.bias = self._add(f"{prefix}.bias", _np(mod.bias, self.dtype), "bias", mod.bias.numel())
        return ref
