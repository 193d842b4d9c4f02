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

import functools
import hashlib
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgedelta.delta.layer import DeltaLinear
from edgedelta.delta.structure import get_spec
from edgedelta.models.adapters import ModelAdapter

from .config import ExportConfig
from .graph import GraphBuilder
from .calibration import CalibrationStats
from .quant_methods import DATA_FREE_FALLBACK, DATA_METHODS, quantize_weight
from .quantize import BITS, QuantizedWeight, concat_rows


# Projections that read the same input, emitted as one MatMul when the model keeps them apart
FUSIONS = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}


@dataclass
class QRef:
    """A MatMulNBits weight: its initializers (each may be shared with an identical tensor
    elsewhere, e.g. the scales of a delta and of its negation) and the values."""

    names: tuple[str, ...]  # packed, scales[, zero_points]: MatMulNBits' inputs after x (no zero points: symmetric)
    q: QuantizedWeight
    offsets: tuple[str, str] | None = None  # float zero points: the offset table's packed 8-bit codes and scales


@dataclass
class LinearRef:
    """How one layer's projection is computed: y = s·(x·W + (x·Aᵀ)·B'ᵀ) + bias.

    A DeltaLinear's gate g and base scale α are folded at export: s = g·α, B' = B/α, so
    s·B' = g·B. Same function, and one Mul (none when s is exactly 1, e.g. an anchor layer)
    instead of two. The Mul comes after the delta's Add, not right after the base MatMul:
    ONNX Runtime fuses MatMul→Mul(scalar) into FusedMatMul(alpha), which leaves its fast M=1
    path and made a 12%-compressed SmolLM2 decode at 0.75x the original (1.02x with the Mul
    moved; bench/results/runtime.md). `scale_first`: s on the base output alone and B' = g·B,
    where B/α does not exist (α = 0) and in fp16, where the sum before the Mul carries the
    delta's output times 1/α (a compressed SmolLM2 layer with α = -4e-5 put B/α at 6e5, past
    fp16's 65504, and its logits became NaN)."""

    weight: str  # initializer name: float (in, out), or the packed MatMulNBits tensor
    in_features: int
    out_features: int
    quant: "QRef | None" = None  # set when `weight` is MatMulNBits-packed
    delta_A: str | None = None  # float (in, r), or packed (r, in-blocks) when delta_quant is set
    delta_B: str | None = None  # float (r, out), or packed (out, r-blocks)
    delta_quant: "tuple[QRef, QRef] | None" = None
    bias: str | None = None
    scale: str | None = None  # scalar s = gate·α on base + delta (None: s = 1)
    scale_first: bool = False  # s on the base output only (α = 0, or fp16)
    parts: tuple[int, ...] | None = None  # output sizes of fused projections (q, k, v or gate, up), in row order


@dataclass
class LayerWeights:
    """One decoder layer's initializers. Norm weights (hidden,) are stored with the adapter's
    norm_weight_offset folded in (Gemma's 1 + w), so the graph always multiplies by them."""

    linears: dict[str, LinearRef]  # projection short name -> ref
    input_norm: str  # the norm the attention reads
    post_attention_norm: str  # the norm the MLP reads (adapter.post_attention_norm)
    attn_output_norm: str | None = None  # Gemma 2/3: norm of the attention output before the residual add
    mlp_output_norm: str | None = None  # Gemma 2/3: norm of the MLP output before the residual add
    q_norm: str | None = None  # Qwen3/Gemma 3: per-head norm (head_dim,) of q before rotary
    k_norm: str | None = None


@dataclass
class ModelWeights:
    embed: str  # (vocab, hidden)
    lm_head: LinearRef | None  # None when tied to `embed`
    final_norm: str
    layers: list[LayerWeights]
    kinds: dict[str, str] = field(default_factory=dict)  # initializer -> shared|projection|delta|gate|bias|norm|embedding|lm_head
    params: dict[str, int] = field(default_factory=dict)  # initializer -> model parameters it stores
    aliases: dict[str, str] = field(default_factory=dict)  # parameter name -> initializer holding identical bytes
    # id(Parameter) -> a function giving its (out, in) weights as the kernel sees them, computed
    # from the packed codes when parity asks: held as arrays they would be one more float32
    # copy of the model through quantization and the quality gate (6 GB at 1.5B)
    dequantized: dict[int, Callable[[], np.ndarray]] = field(default_factory=dict)
    embed_quant: "QRef | None" = None  # the quantized embedding table (quantized exports): `embed` is its packed tensor
    # zeros stored off the diagonal of fused block-diagonal delta B's: the price of one MatMul
    # for a layer's whole q/k/v (or gate/up) delta instead of one per part
    block_diagonal_zeros: int = 0


class _Once:
    """A dequantizing function whose result is computed once while anything still uses it:
    the parts of a fused weight are views of one array, which is freed (weakly held here) as
    soon as parity gives the last part back."""

    def __init__(self, fn: Callable[[], np.ndarray]):
        self.fn, self.ref = fn, None

    def __call__(self) -> np.ndarray:
        w = self.ref() if self.ref is not None else None
        if w is None:
            w = self.fn()
            if w.base is not None:  # a view's slices point at its base, not at it: keep an owner
                w = w.copy()
            self.ref = weakref.ref(w)
        return w


def _rows(deq: Callable[[], np.ndarray], a: int, b: int) -> np.ndarray:
    """Rows [a, b) of a fused weight's dequantized values: a view, sharing its memory."""
    return deq()[a:b]


def _block(deq: Callable[[], np.ndarray], rows: tuple[int, int] | None, cols: tuple[int, int] | None,
           factor: float) -> np.ndarray:
    """A block of dequantized values times `factor` (a delta B given back its gate or scale)."""
    w = deq()
    w = w if rows is None else w[rows[0]:rows[1]]
    return (w if cols is None else w[:, cols[0]:cols[1]]) * factor


def _np(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().astype(dtype)


def quant_form(cfg: ExportConfig, kind: str, k: int, bits: int | None = None) -> tuple[int, int, bool]:
    """(bits, block, float zero points) of a weight of `kind` with K = k in a quantized export.
    bits: the projection's own width (value_bits), else the export's (embedding_bits for the table)."""
    table = kind in ("embedding", "lm_head")
    block = cfg.embedding_block_size if table else cfg.block_size
    block = block if k >= block else 16  # a short K (delta_B: K = rank) pads less
    # float zero points on the weights that carry the model (projections, shared bases, an
    # untied head) when K is whole blocks (the graph sums x per block by a Reshape);
    # deltas and the embedding table keep symmetric codes
    float_zp = cfg.float_zero_points and kind in ("projection", "shared", "lm_head") and k % block == 0
    if bits is None:
        bits = cfg.embedding_bits if table and cfg.embedding_bits else BITS[cfg.quantize]
    return bits, block, float_zp


def quantize_as_exported(cfg: ExportConfig, calibration: "CalibrationStats | None", w: torch.Tensor, kind: str,
                         bits: int | None = None, stats_of=None) -> tuple[QuantizedWeight, str]:
    """(QuantizedWeight, method) of w (N=out, K=in) in the form quant_form gives `kind`. stats_of:
    the Parameter (or (P, A) pair) whose calibration statistics apply when w is not one itself.
    Without statistics a data-aware method falls back to the data-free one
    (quant_methods.DATA_FREE_FALLBACK)."""
    bits, block, float_zp = quant_form(cfg, kind, w.shape[1], bits)
    method, h = cfg.quant_method, None
    if method in DATA_METHODS:  # the input Hessian of w's readers (all of them for a shared base)
        h = calibration.hessian(w if stats_of is None else stats_of) if calibration is not None else None
        method = method if h is not None else DATA_FREE_FALLBACK  # no calibration inputs reach w
    q = quantize_weight(_np(w, np.float32), bits, block, method, h, symmetric=bool(cfg.symmetric) and not float_zp,
                        float_zp=float_zp)
    return q, method


def quantize_base_weights(model: nn.Module, adapter: ModelAdapter, cfg: ExportConfig,
                          calibration: "CalibrationStats | None") -> dict[int, tuple[QuantizedWeight, str]]:
    """id(Parameter) -> (QuantizedWeight, method) of each weight a quantized export stores as
    MatMulNBits except the delta A/B, once: the table, every projection or shared base (v at
    value_bits), an untied LM head; each quantized as WeightCollector quantizes it (a fused
    q/k/v or gate/up is the row-concatenation of its parts). A shared base takes the projection
    form, as in the collector."""
    weights = [(adapter.embed_tokens(model).weight, "embedding", None)]
    weights += [(adapter.get_linear(layer, proj).weight, "projection", cfg.value_bits if proj == "v" else None)
                for layer in adapter.decoder_layers(model) for proj in adapter.projections]
    weights.append((model.get_output_embeddings().weight, "lm_head", None))  # tied: the table, already listed
    out = {}
    for p, kind, bits in weights:
        if id(p) not in out:
            out[id(p)] = quantize_as_exported(cfg, calibration, p, kind, bits)
    return out


class WeightCollector:
    """Adds every parameter of `model` to `builder` once; returns ModelWeights."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, cfg: ExportConfig, builder: GraphBuilder,
                 calibration: "CalibrationStats | None" = None, progress: bool = False,
                 prequantized: dict[int, tuple[QuantizedWeight, str]] | None = None):
        self.model, self.adapter, self.cfg, self.b = model, adapter, cfg, builder
        # id(Parameter) -> (its codes as chosen beforehand, the method that chose them): the
        # scale-tuned weights (scale_tuning.py); any other weight is quantized here
        self.prequantized = prequantized or {}
        self.progress = progress  # a bar over the layers (data-aware quantization takes minutes)
        self.calibration = calibration  # input Hessians for data-aware quantization (calibration.py)
        self.quant_methods: dict[str, str] = {}  # quantized initializer -> method that chose its codes
        self.dtype = np.dtype(np.float16 if cfg.dtype == "fp16" else np.float32)
        self.by_id: dict[int, LinearRef | str] = {}  # id(Parameter) -> what was made for it
        self.by_content: dict[tuple, str] = {}  # (dtype, shape, sha256) -> initializer name
        self.out = None

    # --- entry ----------------------------------------------------------------------
    def collect(self) -> ModelWeights:
        model, ad = self.model, self.adapter
        layers = ad.decoder_layers(model)
        self.groups = self._shared_groups(layers)
        embed = ad.embed_tokens(model).weight  # (vocab, hidden)
        self.out = ModelWeights(embed="", lm_head=None, final_norm="", layers=[])
        if self.cfg.quantize != "none":
            # 4-bit/8-bit table read by a dequantizing Gather and, when tied, by the LM head's MatMulNBits
            self.out.embed_quant = self._quantized("embed_tokens.weight", embed, "embedding")
            self.out.embed = self.out.embed_quant.names[0]
        else:
            self.out.embed = self._float("embed_tokens.weight", embed, "embedding")
        from tqdm.auto import tqdm

        bar = tqdm(total=len(layers), desc=f"{self.cfg.quantize} weights" if self.cfg.quantize != "none" else "weights",
                   disable=not self.progress, leave=False)
        # v at other bits than q and k (ExportConfig.value_bits): MatMulNBits has one bit width,
        # so q and k become one MatMulNBits and v a second (two nodes a layer instead of three)
        value_bits = self.cfg.value_bits if self.cfg.quantize != "none" else None
        split_v = value_bits is not None and value_bits != BITS[self.cfg.quantize]
        fusions = {"qk": ("q", "k"), "gate_up": FUSIONS["gate_up"]} if split_v else FUSIONS
        for i, layer in enumerate(layers):
            bar.update(1)
            linears = {}
            fused_parts: set[str] = set()
            for fused, parts in fusions.items():
                if fused in ad.projections or not all(p in ad.projections for p in parts):
                    continue
                mods = [ad.get_linear(layer, p) for p in parts]
                if self._fusable(mods):
                    linears[fused] = self._fused_linear(fused, mods, parts, i)
                    fused_parts |= set(parts)
            for proj, path in ad.projections.items():
                if proj in fused_parts:
                    continue
                mod = ad.get_linear(layer, proj)
                base = self._shared_name(mod.weight, path) or f"layers.{i}.{path}.weight"
                linears[proj] = self._linear(mod, base, f"layers.{i}.{path}", bits=value_bits if proj == "v" else None)
            norm = lambda path: None if path is None else self._norm(f"layers.{i}.{path}.weight", layer.get_submodule(path).weight)  # noqa: E731
            q_norm, k_norm = ad.qk_norms or (None, None)
            self.out.layers.append(LayerWeights(
                linears, norm(ad.input_norm), norm(ad.post_attention_norm),
                attn_output_norm=norm(ad.attn_output_norm), mlp_output_norm=norm(ad.mlp_output_norm),
                q_norm=norm(q_norm), k_norm=norm(k_norm),
            ))
        bar.close()
        self.out.final_norm = self._norm("norm.weight", ad.final_norm(model).weight)
        lm = model.get_output_embeddings()
        if lm.weight is not embed:  # untied: an ordinary projection
            self.out.lm_head = self._linear(lm, "lm_head.weight", "lm_head", kind="lm_head")
        return self.out

    def _shared_groups(self, layers) -> dict[int, int]:
        """id(shared Parameter) -> its group's index."""
        spec = get_spec(self.model)
        groups = {}
        if spec is None:
            return groups
        for gi, group in enumerate(spec.groups):
            for proj in spec.projections:
                groups[id(self.adapter.get_linear(layers[group[0]], proj).weight)] = gi
        return groups

    def _shared_name(self, w: torch.Tensor, path: str) -> str | None:
        """'shared.g{i}.{attribute path}.weight' for a group's shared base, else None."""
        gi = self.groups.get(id(w))
        return None if gi is None else f"shared.g{gi}.{path}.weight"

    # --- fused projections ---------------------------------------------------------------
    def _fusable(self, mods: list[nn.Module]) -> bool:
        """Parts read the same input and can become one MatMul: all plain and unshared, or all
        DeltaLinear whose bases belong to one group (the fused base is then that group's ONE
        initializer); no part with α = 0 (its scale would have to sit on the base alone)."""
        deltas = [isinstance(m, DeltaLinear) for m in mods]
        if any(deltas) and not all(deltas):
            return False
        groups = {self.groups.get(id(m.weight)) for m in mods}
        if len(groups) != 1:
            return False
        if all(deltas) and any(m.base_scale is not None and float(m.base_scale.detach()) == 0.0 for m in mods):
            return False
        return len({m.weight.shape[1] for m in mods}) == 1

    def _fused_linear(self, fused: str, mods: list[nn.Module], parts: tuple[str, ...], i: int) -> LinearRef:
        """One LinearRef computing the row-concatenation of `mods` (in output order):
        base (in, ΣN) = [W_q; W_k; W_v]ᵀ, stored once per group when shared; deltas as one
        A (in, ΣR) = [A_q; A_k; A_v]ᵀ and one block-diagonal B' (ΣR, ΣN), so a layer's whole
        q/k/v delta is two MatMuls instead of six; scale a scalar, or a (ΣN,) vector when the
        parts' gate·α differ."""
        ad = self.adapter
        paths = [ad.projections[p] for p in parts]
        parent = paths[0].rpartition(".")[0]
        fused_path = f"{parent}.{fused}_proj" if parent else f"{fused}_proj"  # self_attn.qkv_proj (or qk_proj), mlp.gate_up_proj
        ws = [m.weight for m in mods]  # (N_i, K)
        sizes = tuple(int(w.shape[0]) for w in ws)
        k = int(ws[0].shape[1])
        shared = isinstance(mods[0], DeltaLinear)
        kind = "shared" if shared and id(ws[0]) in self.groups else "projection"
        key = tuple(id(w) for w in ws)
        ref = LinearRef("", k, sum(sizes), parts=sizes)
        if key in self.by_id:  # a group's fused base seen in an earlier layer
            first = self.by_id[key]
            ref.weight, ref.quant = first.weight, first.quant
        else:
            name = (f"shared.g{self.groups[id(ws[0])]}.{fused_path}.weight" if kind == "shared"
                    else f"layers.{i}.{fused_path}.weight")
            w_cat = torch.cat([w.detach().float() for w in ws], 0)  # (ΣN, K)
            if self.cfg.quantize != "none":
                ref.quant = self._quantized(name, w_cat, kind, stats_of=ws[0], parts=ws)
                ref.weight = ref.quant.names[0]
                self._split_dequantized(w_cat, ws, axis=0)
            else:
                ref.weight = self._add(name, _np(w_cat.T, self.dtype), kind, w_cat.numel())  # (K, ΣN)
            self.by_id[key] = ref
        prefix = f"layers.{i}.{fused_path}"
        if shared:
            self._fused_delta(ref, mods, sizes, prefix)
        biases = [getattr(m, "bias", None) for m in mods]
        if any(b is not None for b in biases):
            cat = torch.cat([b.detach().float() if b is not None else torch.zeros(n) for b, n in zip(biases, sizes)])
            ref.bias = self._add(f"{prefix}.bias", _np(cat, self.dtype), "bias", sum(b.numel() for b in biases if b is not None))
        return ref

    def _fused_delta(self, ref: LinearRef, mods: list[nn.Module], sizes: tuple[int, ...], prefix: str) -> None:
        gates = [float(m.gate.detach()) if m.gate is not None else 1.0 for m in mods]
        alphas = [float(m.base_scale.detach()) if m.base_scale is not None else 1.0 for m in mods]
        scales = [g * a for g, a in zip(gates, alphas)]
        scale_first = any(s != 1.0 for s in scales) and (self.dtype == np.float16 or 0.0 in alphas)
        # B'_i = B_i/α_i where a scale multiplies base + delta (s·B' = g·B), B_i where s = 1;
        # scale first (LinearRef): B'_i = g_i·B_i
        factors = [g if scale_first else 1.0 if s == 1.0 else 1.0 / a for g, s, a in zip(gates, scales, alphas)]
        ranked = [(j, m) for j, m in enumerate(mods) if m.rank]
        if ranked:
            r_total = sum(m.rank for _, m in ranked)
            a_cat = torch.cat([m.delta_A.detach().float() for _, m in ranked], 0)  # (ΣR, K)
            b_bd = torch.zeros(sum(sizes), r_total)  # (ΣN, ΣR) block diagonal
            offs = np.cumsum((0,) + sizes)
            r0 = 0
            for j, m in ranked:
                b_bd[offs[j]:offs[j + 1], r0:r0 + m.rank] = m.delta_B.detach().float() * factors[j]
                r0 += m.rank
            n_a = sum(m.delta_A.numel() for _, m in ranked)
            n_b = sum(m.delta_B.numel() for _, m in ranked)
            self.out.block_diagonal_zeros += b_bd.numel() - n_b
            if self.cfg.quantize != "none" and self.cfg.quantize_deltas:
                # every part's A reads this layer's sub-layer input. B is quantized without
                # statistics (rtn): its off-diagonal zeros stay exactly zero (every block's range
                # holds 0), where GPTQ would spread error into them and mix the parts
                qa = self._quantized(f"{prefix}.delta_A", a_cat, "delta", stats_of=ranked[0][1].delta_A)  # (N=ΣR, K)
                qb = self._quantized(f"{prefix}.delta_B", b_bd, "delta")  # (N=ΣN, K=ΣR)
                deq_a = _Once(self.out.dequantized.pop(id(a_cat)))
                deq_b = _Once(self.out.dequantized.pop(id(b_bd)))
                r0 = 0
                for j, m in ranked:  # the parity reference keeps each part's A, and B = B'/factor
                    self.out.dequantized[id(m.delta_A)] = functools.partial(_rows, deq_a, r0, r0 + m.rank)
                    if factors[j] != 0.0:  # a zero gate: B' = 0 says nothing of B
                        self.out.dequantized[id(m.delta_B)] = functools.partial(
                            _block, deq_b, (offs[j], offs[j + 1]), (r0, r0 + m.rank), 1.0 / factors[j])
                    r0 += m.rank
                self.out.params[qb.names[0]] -= b_bd.numel() - n_b  # the block-diagonal zeros are no parameters
                ref.delta_A, ref.delta_B, ref.delta_quant = qa.names[0], qb.names[0], (qa, qb)
            else:
                ref.delta_A = self._add(f"{prefix}.delta_A", _np(a_cat.T, self.dtype), "delta", n_a)  # (K, ΣR)
                ref.delta_B = self._add(f"{prefix}.delta_B", _np(b_bd.T, self.dtype), "delta", n_b)  # (ΣR, ΣN)
        if any(s != 1.0 for s in scales):
            n_scalars = sum((m.gate is not None) + (m.base_scale is not None) for m in mods)
            value = (np.asarray(scales[0], self.dtype) if len(set(scales)) == 1
                     else np.concatenate([np.full(n, s, self.dtype) for n, s in zip(sizes, scales)]))  # (ΣN,)
            ref.scale = self._add(f"{prefix}.scale", value, "gate", n_scalars)
            ref.scale_first = scale_first

    def _split_dequantized(self, w_cat: torch.Tensor, parts: list[torch.Tensor], axis: int) -> None:
        """The parity reference holds each part: split a fused weight's dequantized values (the
        parts are views of one dequantized array, computed once)."""
        deq = _Once(self.out.dequantized.pop(id(w_cat)))
        offs = np.cumsum([0] + [int(p.shape[axis]) for p in parts])
        for p, a, b in zip(parts, offs[:-1], offs[1:]):
            self.out.dequantized[id(p)] = functools.partial(_rows, deq, int(a), int(b))

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

    def _quantized(self, name: str, w: torch.Tensor, kind: str, stats_of: torch.Tensor | None = None,
                   bits: int | None = None, parts: list[torch.Tensor] | None = None) -> QRef:
        """Quantize w (N=out, K=in) into MatMulNBits tensors '{name}', '{name}.scales',
        '{name}.zero_points' (asymmetric only; each stored once even if identical to another's). stats_of: the
        Parameter whose calibration statistics apply when w is not one itself (a fused q/k/v
        weight: its parts read the same input), or (P, A) for a weight that reads x·Aᵀ where
        x is P's input (a fused delta B after the fused A). Without statistics a data-aware
        method falls back to the data-free one (quant_methods.DATA_FREE_FALLBACK). bits: the
        projection's own bit width (value_bits), else the export's (embedding_bits for the table).
        parts: the Parameters a fused w concatenates (rows); with every part (or w itself) in
        `prequantized`, their codes are taken as they are."""
        pre = [self.prequantized.get(id(p)) for p in (parts or [w])]
        if all(x is not None for x in pre):
            bits, block, float_zp = quant_form(self.cfg, kind, w.shape[1], bits)
            if any((x[0].bits, x[0].block_size, x[0].offsets is not None) != (bits, block, float_zp) for x in pre):
                raise ValueError(f"'{name}': its prequantized parts are not in the form this export stores it in")
            q, method = concat_rows([x[0] for x in pre]), pre[0][1]
        else:
            q, method = quantize_as_exported(self.cfg, self.calibration, w, kind, bits, stats_of)
        self.quant_methods[name] = method
        q.scales = q.scales.astype(self.dtype)  # MatMulNBits: scales in the activation dtype
        # (N, blocks) and (N, packed zero-point bytes): MatMulNBits takes them so, and a Gather can read a row
        q.scales = q.scales.reshape(q.n, -1)
        self.out.dequantized[id(w)] = q.dequantize
        names = (self._add(name, q.packed, kind, w.numel()), self._add(name + ".scales", q.scales, kind, 0))
        if q.zero_points is not None:
            q.zero_points = q.zero_points.reshape(q.n, -1)
            names += (self._add(name + ".zero_points", q.zero_points, kind, 0),)
        offsets = None
        if q.offsets is not None:  # the (N, nb) table, 8-bit: (N, table blocks, table block) codes, (N, table blocks) scales
            q.offsets.scales = q.offsets.scales.astype(self.dtype).reshape(q.n, -1)
            offsets = (self._add(name + ".offsets", q.offsets.packed, kind, 0),
                       self._add(name + ".offsets.scales", q.offsets.scales, kind, 0))
        return QRef(names, q, offsets)

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

    def _linear(self, mod: nn.Module, base: str, prefix: str, kind: str | None = None, bits: int | None = None) -> LinearRef:
        """A projection's LinearRef; `bits` its MatMulNBits bit width, base and deltas (None: the export's)."""
        w = mod.weight  # (out, in)
        shared = isinstance(mod, DeltaLinear)
        kind = kind or ("shared" if shared else "projection")
        ref = LinearRef(base, w.shape[1], w.shape[0])
        if id(w) in self.by_id:  # a group's base seen before: reuse its initializers
            first = self.by_id[id(w)]
            ref.weight, ref.quant = first.weight, first.quant
        elif self.cfg.quantize != "none":
            ref.quant = self._quantized(base, w, kind, bits=bits)
            ref.weight = ref.quant.names[0]
            self.by_id[id(w)] = ref
        else:
            ref.weight = self._add(base, _np(w.T, self.dtype), kind, w.numel())  # (in, out) for MatMul (an alias if identical)
            self.by_id[id(w)] = ref
        gate = float(mod.gate.detach()) if shared and mod.gate is not None else 1.0
        alpha = float(mod.base_scale.detach()) if shared and mod.base_scale is not None else 1.0
        scale_first = alpha == 0.0 or (self.dtype == np.float16 and gate * alpha != 1.0)
        # B' (out, r): B/α when s multiplies base + delta (s·B' = g·B), else g·B; the parity
        # reference gets B = B'·b_to_ref back
        b_factor = gate if scale_first or gate * alpha == 1.0 else 1.0 / alpha
        b_to_ref = 1.0 / b_factor if b_factor != 0.0 else None
        delta_b = mod.delta_B.detach() * b_factor if shared and mod.rank else None
        if shared and mod.rank and self.cfg.quantize != "none" and self.cfg.quantize_deltas:
            # deltas quantized too: left in fp32 they would outweigh what int4 sharing saves
            qa = self._quantized(f"{prefix}.delta_A", mod.delta_A, "delta", bits=bits)  # (N=r, K=in)
            qb = self._quantized(f"{prefix}.delta_B", delta_b, "delta", bits=bits)  # (N=out, K=r)
            # the parity reference keeps g, α and B apart: give it B from the dequantized B'
            deq_b = self.out.dequantized.pop(id(delta_b))
            if b_to_ref is not None:
                self.out.dequantized[id(mod.delta_B)] = functools.partial(_block, deq_b, None, None, b_to_ref)
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
