"""The decoder graph with a KV cache, in optimum's interface:

  inputs   input_ids (B, S) int64, attention_mask (B, P+S) int64, position_ids (B, S) int64,
           past_key_values.{i}.key|value (B, kv_heads, P, head_dim)
  outputs  logits (B, S, vocab), present.{i}.key|value (B, kv_heads, P+S, head_dim)

B = batch_size, S = sequence_length, P = past_sequence_length (0 on the first step).
Built from standard ONNX ops, plus ONNX Runtime's com.microsoft ops where they save a pass at
one token per step (FusedMatMul for the tied LM head, SkipSimplifiedLayerNormalization for a
residual Add and the norm after it, MatMulNBits for quantized weights). Architecture facts
come from `ArchFacts` (one small declarative record read from the HF config)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from edgedelta.errors import ModelLoadError

from .graph import MS_DOMAIN, GraphBuilder
from .weights import LinearRef, ModelWeights

BATCH, SEQ, PAST = "batch_size", "sequence_length", "past_sequence_length"
TOTAL = "past_sequence_length + sequence_length"
# activations by the HF config's hidden_act
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu", "gelu_new")
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class ArchFacts:
    """What the graph needs to know about an architecture, read from its HF config."""

    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    act: str
    scaling: float  # attention score scale (head_dim ** -0.5 for all supported models)
    inv_freq: tuple[float, ...]  # (rotary_dim / 2,) RoPE frequencies
    rope_scale: float  # multiplies cos/sin (yarn/longrope "attention_factor"; 1 otherwise)
    embed_scale: float | None  # Gemma multiplies embeddings by sqrt(hidden)
    sliding_windows: tuple[int | None, ...]  # per layer
    fused: dict  # fused projection -> sizes of its parts (phi3 qkv, gate_up)

    @classmethod
    def from_model(cls, model, adapter) -> "ArchFacts":
        import torch

        cfg = model.config
        attn = adapter.decoder_layers(model)[0].self_attn
        head_dim = int(attn.head_dim)
        act = getattr(cfg, "hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise ModelLoadError(f"activation '{act}' is not supported by the ONNX exporter; supported: {', '.join(ACTIVATIONS)}")
        rope = getattr(cfg, "rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in STATIC_ROPE:
            raise ModelLoadError(f"RoPE type '{rope_type}' is not supported by the ONNX exporter (it depends on the sequence length); supported: {', '.join(STATIC_ROPE)}")
        rotary = model.model.rotary_emb
        inv_freq = rotary.inv_freq.detach().to(torch.float32).cpu().numpy()
        n = cfg.num_hidden_layers
        layer_types = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        if cfg.model_type in ("mistral", "phi3"):
            windows = tuple([window] * n)
        elif layer_types:
            windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
        else:
            windows = tuple([None] * n)
        heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
        fused = {}
        if "qkv" in adapter.fused:
            fused["qkv"] = (heads * head_dim, kv * head_dim, kv * head_dim)
        if "gate_up" in adapter.fused:
            fused["gate_up"] = (cfg.intermediate_size, cfg.intermediate_size)
        return cls(
            num_layers=n, hidden=cfg.hidden_size, heads=heads, kv_heads=kv, head_dim=head_dim, vocab=cfg.vocab_size,
            eps=float(cfg.rms_norm_eps), act=act, scaling=float(attn.scaling), inv_freq=tuple(float(f) for f in inv_freq),
            rope_scale=float(getattr(rotary, "attention_scaling", 1.0)),
            embed_scale=math.sqrt(cfg.hidden_size) if adapter.embed_scale_sqrt_hidden else None,
            sliding_windows=windows, fused=fused,
        )


class DecoderGraph:
    """Emits the decoder into a GraphBuilder, given the collected weights."""

    def __init__(self, b: GraphBuilder, facts: ArchFacts, weights: ModelWeights, dtype: str, accuracy_level: int = 0):
        self.b, self.f, self.w = b, facts, weights
        self.accuracy_level = accuracy_level  # MatMulNBits compute type (0 fp32, 4 int8 activations)
        self.fp16 = dtype == "fp16"
        self.T = TensorProto.FLOAT16 if self.fp16 else TensorProto.FLOAT
        self.np_t = np.float16 if self.fp16 else np.float32
        self.rotary_op = b.opset >= 23  # ONNX RotaryEmbedding
        self.presents: list[str] = []

    def build(self) -> None:
        b, f = self.b, self.f
        ids = b.add_input("input_ids", TensorProto.INT64, [BATCH, SEQ])
        mask = b.add_input("attention_mask", TensorProto.INT64, [BATCH, TOTAL])
        pos = b.add_input("position_ids", TensorProto.INT64, [BATCH, SEQ])
        past = [(b.add_input(f"past_key_values.{i}.key", self.T, [BATCH, f.kv_heads, PAST, f.head_dim]),
                 b.add_input(f"past_key_values.{i}.value", self.T, [BATCH, f.kv_heads, PAST, f.head_dim]))
                for i in range(f.num_layers)]
        with b.scope("embed"):
            h = b.op("Gather", [self.w.embed, ids], axis=0)  # (B, S, H)
            if f.embed_scale is not None:  # Gemma: rounded to the activation dtype, as in HF
                h = b.op("Mul", [h, b.const(f.embed_scale, self.np_t)])
        with b.scope("rope"):
            cos, sin = self._rope(pos)
        with b.scope("mask"):
            masks = {w: self._mask(ids, mask, w) for w in sorted(set(f.sliding_windows), key=lambda x: x or 0)}
        branch = None  # the last block's output, not yet added to the residual stream h
        for i, lw in enumerate(self.w.layers):
            with b.scope(f"layers.{i}"):
                branch, h = self._layer(branch, h, lw, past[i], cos, sin, masks[f.sliding_windows[i]], i)
        with b.scope("final"):
            x, _ = self._add_norm(branch, h, self.w.final_norm)
            logits = self._lm_head(x)
        b.add_output(logits, self.T, [BATCH, SEQ, f.vocab])
        for name in self.presents:  # after logits, in layer order (optimum's order)
            b.add_output(name, self.T, [BATCH, f.kv_heads, TOTAL, f.head_dim])

    # --- prelude --------------------------------------------------------------------------
    def _rope(self, pos: str) -> tuple[str, str]:
        """cos, sin computed in fp32 as HF does: (B, S, rotary_dim/2), the halves ONNX's
        RotaryEmbedding takes (opset >= 23), or else (B, 1, S, rotary_dim) for _rotate's
        decomposition."""
        b = self.b
        inv = b.const(np.array(self.f.inv_freq, np.float32), np.float32)  # (rot/2,)
        p = b.op("Unsqueeze", [b.op("Cast", [pos], to=TensorProto.FLOAT), b.const([2])])  # (B, S, 1)
        freqs = b.op("Mul", [p, inv])  # (B, S, rot/2)
        if not self.rotary_op:
            freqs = b.op("Concat", [freqs, freqs], axis=-1)  # (B, S, rot)
        out = []
        for fn in ("Cos", "Sin"):
            t = b.op(fn, [freqs])
            if self.f.rope_scale != 1.0:
                t = b.op("Mul", [t, b.const(self.f.rope_scale, np.float32)])
            if self.fp16:
                t = b.op("Cast", [t], to=self.T)
            out.append(t if self.rotary_op else b.op("Unsqueeze", [t, b.const([1])]))  # (B, 1, S, rot)
        return out[0], out[1]

    def _mask(self, ids: str, mask: str, window: int | None) -> str:
        """Additive fp32 (B, 1, S, P+S): 0 where query s (absolute position P+s) may attend key
        t, float32 min where not. Built once per graph; each layer adds it to its scores. A
        masked score becomes min + s, which rounds back to min (|s| is far below min's ulp), so
        a fully masked row (left padding) stays finite, as with a Where; but a broadcasting Add
        is one pass where ORT's broadcasting Where took 1.7 s of a 6 s 1k-token prefill."""
        b = self.b
        seq = b.op("Gather", [b.op("Shape", [ids]), b.const(1)], axis=0)  # S
        total = b.op("Gather", [b.op("Shape", [mask]), b.const(1)], axis=0)  # P+S
        past = b.op("Sub", [total, seq])
        kidx = b.op("Range", [b.const(0), total, b.const(1)])  # (P+S,)
        qidx = b.op("Unsqueeze", [b.op("Range", [past, total, b.const(1)]), b.const([1])])  # (S, 1)
        allowed = b.op("LessOrEqual", [kidx, qidx])  # causal (S, P+S)
        if window is not None:  # sliding window: kv_idx > q_idx - window (HF masking_utils)
            allowed = b.op("And", [allowed, b.op("Greater", [kidx, b.op("Sub", [qidx, b.const(window)])])])
        pad = b.op("Unsqueeze", [b.op("Cast", [mask], to=TensorProto.BOOL), b.const([1, 2])])  # (B, 1, 1, P+S)
        return b.op("Where", [b.op("And", [allowed, pad]), b.const(0.0, np.float32), b.const(np.finfo(np.float32).min, np.float32)])

    # --- blocks ----------------------------------------------------------------------------
    def _rms_norm(self, x: str, weight: str) -> str:
        """HF RMSNorm: fp32 statistics, weight applied in the activation dtype. Pow(x, 2), not
        Mul(x, x): ONNX Runtime fuses only the Pow form into one SimplifiedLayerNormalization
        (one node instead of six per norm; SmolLM2 decode +7-16%, measured A/B)."""
        b = self.b
        xf = b.op("Cast", [x], to=TensorProto.FLOAT) if self.fp16 else x
        var = b.op("ReduceMean", [b.op("Pow", [xf, b.const(2.0, np.float32)]), b.const([-1])], keepdims=1)
        y = b.op("Div", [xf, b.op("Sqrt", [b.op("Add", [var, b.const(self.f.eps, np.float32)])])])
        if self.fp16:
            y = b.op("Cast", [y], to=self.T)
        return b.op("Mul", [y, weight])

    def _add_norm(self, branch: str | None, h: str, weight: str) -> tuple[str, str]:
        """(RMSNorm(h + branch), h + branch): the residual Add fused into the next norm as ONNX
        Runtime's SkipSimplifiedLayerNormalization, which ORT does not fuse on its own (2 nodes
        fewer per layer: decode +4-6%, measured A/B). Without a branch, a plain RMSNorm of h.
        fp16 keeps Add + RMSNorm: the fused kernel sums and scales in fp32 where HF rounds to
        fp16 in between, which doubled the SmolLM2 logit difference (0.066 -> 0.14)."""
        if branch is None:
            return self._rms_norm(h, weight), h
        if self.fp16:
            h = self.b.op("Add", [h, branch])
            return self._rms_norm(h, weight), h
        y, _, _, total = self.b.op("SkipSimplifiedLayerNormalization", [branch, h, weight], domain=MS_DOMAIN,
                                   n_out=4, epsilon=self.f.eps)
        return y, total

    def _matmul(self, x: str, weight: str, quant, outputs=None) -> str:
        """x (..., K) times a stored weight: MatMul on (K, N) floats, or MatMulNBits (quant: QRef)."""
        if quant is None:
            return self.b.op("MatMul", [x, weight], outputs=outputs)
        q = quant.q
        return self.b.op("MatMulNBits", [x, *quant.names], domain=MS_DOMAIN, outputs=outputs,
                         K=q.k, N=q.n, bits=q.bits, block_size=q.block_size, accuracy_level=self.accuracy_level)

    def _linear(self, x: str, ref: LinearRef, out: str | None = None) -> str:
        """x (..., in) -> (..., out): s·(x·W + (x·Aᵀ)·B'ᵀ) + bias (gate and α folded, see
        LinearRef), the base and the low-rank delta as separate MatMuls. `out` names the final
        output (graph output `logits`)."""
        b = self.b
        order = ("base", "scale", "delta", "bias") if ref.scale_first else ("base", "delta", "scale", "bias")
        present = {"base": True, "scale": ref.scale is not None, "delta": ref.delta_A is not None, "bias": ref.bias is not None}
        steps = [s for s in order if present[s]]
        y = None
        for step in steps:
            names = [out] if out and step == steps[-1] else None  # the last op writes `out`
            if step == "base":
                y = self._matmul(x, ref.weight, ref.quant, names)
            elif step == "scale":  # after the delta's Add: a Mul right after the MatMul becomes a slow FusedMatMul
                y = b.op("Mul", [y, ref.scale], outputs=names)
            elif step == "delta":
                qa, qb = ref.delta_quant or (None, None)
                d = self._matmul(self._matmul(x, ref.delta_A, qa), ref.delta_B, qb)  # (..., r) -> (..., out)
                y = b.op("Add", [y, d], outputs=names)
            else:
                y = b.op("Add", [y, ref.bias], outputs=names)
        return y

    def _heads(self, x: str, n: int) -> str:
        """(B, S, n*hd) -> (B, n, S, hd)."""
        b = self.b
        return b.op("Transpose", [b.op("Reshape", [x, b.const([0, 0, n, self.f.head_dim])])], perm=[0, 2, 1, 3])

    def _rotate(self, x: str, cos: str, sin: str) -> str:
        """x·cos + rotate_half(x)·sin on the first rotary_dim features of (B, n, S, hd). One
        RotaryEmbedding node from opset 23 (12 small ops fewer per layer: decode +8% on
        SmolLM2, bench/results/runtime.md), else its decomposition."""
        b = self.b
        rot = 2 * len(self.f.inv_freq)
        if self.rotary_op:
            return b.op("RotaryEmbedding", [x, cos, sin], rotary_embedding_dim=0 if rot == self.f.head_dim else rot)
        xr, xp = (x, None) if rot == self.f.head_dim else b.op("Split", [x, b.const([rot, self.f.head_dim - rot])], n_out=2, axis=-1)
        x1, x2 = b.op("Split", [xr], n_out=2, axis=-1, num_outputs=2)
        rh = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)
        y = b.op("Add", [b.op("Mul", [xr, cos]), b.op("Mul", [rh, sin])])
        return y if xp is None else b.op("Concat", [y, xp], axis=-1)

    def _attention(self, x: str, lin: dict[str, LinearRef], past: tuple[str, str], cos: str, sin: str, bias: str, i: int) -> str:
        b, f = self.b, self.f
        if "qkv" in lin:  # phi3: one fused projection, split by output rows
            q, k, v = b.op("Split", [self._linear(x, lin["qkv"]), b.const(list(f.fused["qkv"]))], n_out=3, axis=-1)
        else:
            q, k, v = (self._linear(x, lin[p]) for p in ("q", "k", "v"))
        q = self._rotate(self._heads(q, f.heads), cos, sin)  # (B, nh, S, hd)
        k = self._rotate(self._heads(k, f.kv_heads), cos, sin)  # (B, kvh, S, hd)
        v = self._heads(v, f.kv_heads)
        k = b.op("Concat", [past[0], k], axis=2, outputs=[f"present.{i}.key"])  # (B, kvh, P+S, hd)
        v = b.op("Concat", [past[1], v], axis=2, outputs=[f"present.{i}.value"])
        self.presents += [k, v]
        # GQA without copying K/V: the `rep` query heads of a KV head become extra rows,
        # (B, nh, S, hd) -> (B, kvh, rep*S, hd); heads are ordered kv_head*rep + r as in HF.
        qg = b.op("Reshape", [q, b.const([0, f.kv_heads, -1, f.head_dim])])
        scores = b.op("MatMul", [qg, b.op("Transpose", [k], perm=[0, 1, 3, 2])])  # (B, kvh, rep*S, P+S)
        # the scale right on the MatMul's output (in the activation dtype, as HF's eager
        # attention): ORT folds it into FusedMatMul's alpha, a free op instead of a pass over
        # the scores (0.8 ms per token at 1k context)
        scores = b.op("Mul", [scores, b.const(f.scaling, self.np_t)])
        scores = b.op("Reshape", [scores, b.const([0, f.heads, -1, 0])])  # (B, nh, S, P+S)
        if self.fp16:  # softmax in fp32, as HF's eager attention
            scores = b.op("Cast", [scores], to=TensorProto.FLOAT)
        scores = b.op("Add", [scores, bias])  # the additive mask (_mask)
        probs = b.op("Softmax", [scores], axis=-1)
        if self.fp16:
            probs = b.op("Cast", [probs], to=self.T)
        probs = b.op("Reshape", [probs, b.const([0, f.kv_heads, -1, 0])])  # (B, kvh, rep*S, P+S)
        out = b.op("MatMul", [probs, v])  # (B, kvh, rep*S, hd)
        out = b.op("Reshape", [out, b.const([0, f.heads, -1, f.head_dim])])  # (B, nh, S, hd)
        out = b.op("Reshape", [b.op("Transpose", [out], perm=[0, 2, 1, 3]), b.const([0, 0, f.heads * f.head_dim])])
        return self._linear(out, lin["o"])

    def _act(self, x: str) -> str:
        b = self.b
        if self.f.act == "silu":
            return b.op("Mul", [x, b.op("Sigmoid", [x])])
        return b.op("Gelu", [x], approximate="tanh" if self.f.act in ("gelu_pytorch_tanh", "gelu_new") else "none")

    def _mlp(self, x: str, lin: dict[str, LinearRef]) -> str:
        b = self.b
        if "gate_up" in lin:  # phi3: gate rows first, then up
            gate, up = b.op("Split", [self._linear(x, lin["gate_up"]), b.const(list(self.f.fused["gate_up"]))], n_out=2, axis=-1)
        else:
            gate, up = self._linear(x, lin["gate"]), self._linear(x, lin["up"])
        return self._linear(b.op("Mul", [self._act(gate), up]), lin["down"])

    def _layer(self, branch, h, lw, past, cos, sin, bias, i) -> tuple[str, str]:
        """One decoder layer on the residual stream h + branch; returns (MLP output, residual),
        the MLP output still to be added (by the next layer's or the final norm)."""
        b = self.b
        with b.scope("attn"):
            x, h = self._add_norm(branch, h, lw.input_norm)
            attn = self._attention(x, lw.linears, past, cos, sin, bias, i)
        with b.scope("mlp"):
            x, h = self._add_norm(attn, h, lw.post_attention_norm)
            return self._mlp(x, lw.linears), h

    def _lm_head(self, h: str) -> str:
        """(B, S, H) -> (B, S, vocab). Tied: FusedMatMul (fp32) or Gemm (fp16, no fp32-only
        contrib op) with transB reads the (vocab, H) embedding table itself, so the tensor
        exists once (a plain MatMul would need a transposed copy)."""
        b = self.b
        if self.w.lm_head is not None:
            return self._linear(h, self.w.lm_head, out="logits")
        if not self.fp16:  # fp32: one op straight into the output (no reshape copy of the logits)
            return b.op("FusedMatMul", [h, self.w.embed], domain=MS_DOMAIN, outputs=["logits"], transB=1, alpha=1.0)
        h2 = b.op("Reshape", [h, b.const([-1, self.f.hidden])])  # (B*S, H)
        logits = b.op("Gemm", [h2, self.w.embed], transB=1)  # (B*S, vocab)
        shape = b.op("Concat", [b.op("Shape", [h], end=2), b.const([self.f.vocab])], axis=0)
        return b.op("Reshape", [logits, shape], outputs=["logits"])
