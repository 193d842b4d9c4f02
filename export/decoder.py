"""The decoder graph with a KV cache, in optimum's interface:

  inputs   input_ids (B, S) int64, attention_mask (B, P+S) int64, position_ids (B, S) int64,
           past_key_values.{i}.key|value (B, kv_heads, P, head_dim)
           logits_to_keep (1,) int64, optional (an initializer default of 0: every position)
  outputs  logits (B, K, vocab), present.{i}.key|value (B, kv_heads, P+S, head_dim)

B = batch_size, S = sequence_length, P = past_sequence_length (0 on the first step), K = S, or
logits_to_keep's value when it is not 0: the LM head then runs on the last K positions only.
A prompt's prefill needs the last position's logits alone, and the head is 21% of SmolLM2's
per-token compute (28M of 134M parameters); callers that know nothing of the input
(onnxruntime-genai, optimum) get every position, as the interface has it.
Built from standard ONNX ops, plus ONNX Runtime's com.microsoft ops where they save a pass at
one token per step (FusedMatMul for the tied LM head, SkipSimplifiedLayerNormalization for a
residual Add and the norm after it, MatMulNBits for quantized weights). Architecture facts
come from `ArchFacts` (one small declarative record read from the HF config)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .arch_facts import ArchFacts
from .graph import MS_DOMAIN, GraphBuilder
from .quantized_gather import dequantizing_gather
from .weights import LinearRef, ModelWeights

BATCH, SEQ, PAST = "batch_size", "sequence_length", "past_sequence_length"
TOTAL = "past_sequence_length + sequence_length"


class DecoderGraph:
    """Emits the decoder into a GraphBuilder, given the collected weights."""

    def __init__(self, b: GraphBuilder, facts: ArchFacts, weights: ModelWeights, dtype: str, accuracy_level: int = 0,
                 gqa: bool = False):
        self.b, self.f, self.w = b, facts, weights
        self.gqa = gqa  # attention as com.microsoft GroupQueryAttention (see _attention_gqa)
        self.accuracy_level = accuracy_level  # MatMulNBits compute type (0 fp32, 4 int8 activations)
        self.fp16 = dtype == "fp16"
        self.T = TensorProto.FLOAT16 if self.fp16 else TensorProto.FLOAT
        self.np_t = np.float16 if self.fp16 else np.float32
        self.rotary_op = b.opset >= 23  # ONNX RotaryEmbedding
        self.presents: list[str] = []
        self._block_sums: dict[tuple[str, int], str] = {}  # (input, block) -> its block sums (float zero points)

    def build(self) -> None:
        b, f = self.b, self.f
        ids = b.add_input("input_ids", TensorProto.INT64, [BATCH, SEQ])
        mask = b.add_input("attention_mask", TensorProto.INT64, [BATCH, TOTAL])
        pos = b.add_input("position_ids", TensorProto.INT64, [BATCH, SEQ])
        past = [(b.add_input(f"past_key_values.{i}.key", self.T, [BATCH, f.kv_heads, PAST, f.head_dim]),
                 b.add_input(f"past_key_values.{i}.value", self.T, [BATCH, f.kv_heads, PAST, f.head_dim]))
                for i in range(f.num_layers)]
        with b.scope("embed"):
            h = self._embed(ids)  # (B, S, H)
            if f.embed_scale is not None:  # Gemma: rounded to the activation dtype, as in HF
                h = b.op("Mul", [h, b.const(f.embed_scale, self.np_t)])
        with b.scope("rope"):  # one cos/sin pair per rotary table (Gemma 3: global and local)
            tables = sorted({f.rope_table(i) for i in range(f.num_layers)})
            rope = {t: self._rope_cache(t) if self.gqa else self._rope(pos, t) for t in tables}
        with b.scope("mask"):
            # GroupQueryAttention applies a sliding layer's window itself (local_window_size), so
            # every layer reads the causal + padding mask; the plain graph masks each window
            windows = {None} if self.gqa else set(f.sliding_windows)
            masks = {w: self._mask(ids, mask, w) for w in sorted(windows, key=lambda x: x or 0)}
            if self.gqa:
                self._gqa_lengths(ids, mask)
        branch = None  # the last block's output, not yet added to the residual stream h
        for i, lw in enumerate(self.w.layers):
            with b.scope(f"layers.{i}"):
                cos, sin = rope[f.rope_table(i)]
                bias = masks[None if self.gqa else f.sliding_windows[i]]
                branch, h = self._layer(branch, h, lw, past[i], cos, sin, bias, i)
        with b.scope("final"):
            x, _ = self._add_norm(branch, h, self.w.final_norm)
            # (B, S, H) -> (B, K, H): starts = -K; K = 0 (the default) keeps every position
            keep = b.add_input("logits_to_keep", TensorProto.INT64, [1])
            b.initializer(keep, np.zeros(1, np.int64))
            x = b.op("Slice", [x, b.op("Neg", [keep]), b.const([np.iinfo(np.int64).max]), b.const([1])])
            if f.final_softcap is None:
                logits = self._lm_head(x, "logits")
            else:  # Gemma 2: logits = cap·tanh(head(x)/cap)
                raw = self._lm_head(x, None)
                capped = b.op("Tanh", [b.op("Mul", [raw, b.const(1.0 / f.final_softcap, self.np_t)])])
                logits = b.op("Mul", [capped, b.const(f.final_softcap, self.np_t)], outputs=["logits"])
        b.add_output(logits, self.T, [BATCH, "logits_sequence_length", f.vocab])
        for name in self.presents:  # after logits, in layer order (optimum's order)
            b.add_output(name, self.T, [BATCH, f.kv_heads, TOTAL, f.head_dim])

    # --- prelude --------------------------------------------------------------------------
    def _rope(self, pos: str, table: str = "global") -> tuple[str, str]:
        """cos, sin computed in fp32 as HF does: (B, S, rotary_dim/2), the halves ONNX's
        RotaryEmbedding takes (opset >= 23), or else (B, 1, S, rotary_dim) for _rotate's
        decomposition."""
        b = self.b
        inv_freq, rope_scale = self.f.rope_of(table)
        inv = b.const(np.array(inv_freq, np.float32), np.float32)  # (rot/2,)
        p = b.op("Unsqueeze", [b.op("Cast", [pos], to=TensorProto.FLOAT), b.const([2])])  # (B, S, 1)
        freqs = b.op("Mul", [p, inv])  # (B, S, rot/2)
        if not self.rotary_op:
            freqs = b.op("Concat", [freqs, freqs], axis=-1)  # (B, S, rot)
        out = []
        for fn in ("Cos", "Sin"):
            t = b.op(fn, [freqs])
            if rope_scale != 1.0:
                t = b.op("Mul", [t, b.const(rope_scale, np.float32)])
            if self.fp16:
                t = b.op("Cast", [t], to=self.T)
            out.append(t if self.rotary_op else b.op("Unsqueeze", [t, b.const([1])]))  # (B, 1, S, rot)
        return out[0], out[1]

    def _rope_cache(self, table: str = "global") -> tuple[str, str]:
        """cos, sin (max_positions, head_dim/2) for GroupQueryAttention, indexed by a token's
        slot in the KV cache (see _attention_gqa). Built in the graph from the (head_dim/2,)
        inverse frequencies, positions x inv_freq in fp32 as HF computes them: ONNX Runtime
        folds the constant subgraph into the two tables when the session is created, so the
        file does not carry them (2 MiB for SmolLM2's 8,192 positions)."""
        b, f = self.b, self.f
        inv_freq, rope_scale = f.rope_of(table)
        prefix = "rope" if table == "global" else f"rope_{table}"
        inv = b.initializer(f"{prefix}.inv_freq", np.array(inv_freq, np.float32)[None])  # (1, head_dim/2)
        positions = b.op("Unsqueeze", [b.op("Range", [b.const(0.0, np.float32), b.const(float(f.max_positions), np.float32),
                                                         b.const(1.0, np.float32)]), b.const([1])])  # (max_positions, 1)
        freqs = b.op("Mul", [positions, inv])  # (max_positions, head_dim/2) fp32
        out = []
        for fn in ("Cos", "Sin"):
            t = b.op(fn, [freqs])
            if rope_scale != 1.0:
                t = b.op("Mul", [t, b.const(rope_scale, np.float32)])
            out.append(b.op("Cast", [t], to=self.T) if self.fp16 else t)
        return out[0], out[1]

    def _gqa_lengths(self, ids: str, mask: str) -> None:
        """The scalars GroupQueryAttention reads, once per graph: T = P+S (int32), seqlens_k
        (B,) = T-1 and query_seqlens (B,) = S for every row. Every row counts the same T slots
        (left padding is masked by the additive bias, as in the plain graph), so a token's
        cache slot is also its rotary position: RoPE scores depend only on position
        differences, so padding shifts nothing."""
        b = self.b
        i32 = TensorProto.INT32
        ids_shape = b.op("Shape", [ids])
        batch = b.op("Slice", [ids_shape, b.const([0]), b.const([1])])  # (1,)
        seq = b.op("Cast", [b.op("Slice", [ids_shape, b.const([1]), b.const([2])])], to=i32)  # (1,)
        total = b.op("Cast", [b.op("Slice", [b.op("Shape", [mask]), b.const([1]), b.const([2])])], to=i32)  # (1,)
        self.total_len = b.op("Squeeze", [total, b.const([0])])  # scalar: an upper bound once query_seqlens is given
        # seqlens_k: the last attended slot of each row, T-1 for a left-padded mask, and also right
        # for a mask allocated at full capacity with zeros after the current token (onnxruntime-genai);
        # a row with no attended slot yet (a prefill chunk of nothing but left padding) gets T-1 too
        t64 = b.op("Squeeze", [b.op("Cast", [total], to=TensorProto.INT64), b.const([0])])  # scalar T
        slots = b.op("Range", [b.const(0), t64, b.const(1)])  # (T,)
        last = b.op("ReduceMax", [b.op("Mul", [mask, slots]), b.const([1])], keepdims=0)  # (B,)
        seen = b.op("Cast", [b.op("ReduceMax", [mask, b.const([1])], keepdims=0)], to=TensorProto.BOOL)  # (B,)
        last = b.op("Where", [seen, last, b.op("Sub", [t64, b.const(1)])])
        self.seqlens_k = b.op("Cast", [last], to=i32)
        self.query_lens = b.op("Expand", [seq, batch])  # (B,)

    def _embed(self, ids: str) -> str:
        """(B, S) ids -> (B, S, H); a quantized table is gathered and dequantized row by row."""
        if self.w.embed_quant is None:
            return self.b.op("Gather", [self.w.embed, ids], axis=0)
        return dequantizing_gather(self.b, self.w.embed_quant, ids, self.T)

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
        # GroupQueryAttention takes the bias in its activation dtype: fp16 min, not a cast of
        # fp32 min (which would be -inf, and a fully masked row's softmax NaN)
        t = self.np_t if self.gqa else np.float32
        return b.op("Where", [b.op("And", [allowed, pad]), b.const(0.0, t), b.const(np.finfo(t).min, t)])

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
        y = self.b.op("MatMulNBits", [x, *quant.names], domain=MS_DOMAIN, outputs=None if quant.offsets else outputs,
                      K=q.k, N=q.n, bits=q.bits, block_size=q.block_size, accuracy_level=self.accuracy_level)
        if quant.offsets is None:
            return y
        # float zero points (quantize.py): x·Wᵀ = MatMulNBits(x) + S(x)·Cᵀ, S (B, S, nb) the
        # block sums of x, C (N, nb) the 8-bit offset table
        nb = q.k // q.block_size
        key = (x, q.block_size)
        if key not in self._block_sums:  # one per input: q/k/v or gate/up apart still sum x once
            blocks = self.b.op("Reshape", [x, self.b.const([0, 0, nb, q.block_size])])  # (B, S, nb, block)
            self._block_sums[key] = self.b.op("ReduceSum", [blocks, self.b.const([-1])], keepdims=0)  # (B, S, nb)
        c = q.offsets
        corr = self.b.op("MatMulNBits", [self._block_sums[key], *quant.offsets], domain=MS_DOMAIN,
                         K=nb, N=q.n, bits=c.bits, block_size=c.block_size, accuracy_level=self.accuracy_level)  # (B, S, N)
        return self.b.op("Add", [y, corr], outputs=outputs)

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

    def _head_norm(self, x: str, weight: str, n: int) -> str:
        """Per-head RMSNorm of (B, S, n*hd) over each head's hd features -> (B, S, n*hd)."""
        b = self.b
        y = self._rms_norm(b.op("Reshape", [x, b.const([0, 0, n, self.f.head_dim])]), weight)  # (B, S, n, hd)
        return b.op("Reshape", [y, b.const([0, 0, n * self.f.head_dim])])

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

    def _attention_gqa(self, x: str, lw, past: tuple[str, str], cos: str, sin: str, bias: str, i: int) -> str:
        """ONNX Runtime's GroupQueryAttention: rotary, the KV cache append and attention in
        one node reading the packed (B, S, (nh + 2·kvh)·hd) projection, with no Transpose or
        Reshape around it. Each row's new K/V go to cache slots [T−S, T) of
        past_key_values.{i}.* and present.{i}.*: two (B, kvh, P+S, hd) tensors, or, when a
        caller binds one (B, kvh, capacity, hd) buffer to both (edgedelta.runtime does), that
        buffer written in place. The additive bias (B, 1, S, T) masks left padding and the
        future; a sliding layer's window is the node's local_window_size (the same W as HF's
        kv_idx > q_idx - W: tests/export/test_architectures.py), and a soft-capped model its cap (applied after the scale,
        as HF). Per-head q/k norms (Qwen3, Gemma 3) are applied before the node, on separate
        q and k inputs: the node's q_norm_weight input is rejected by ONNX Runtime's CPU kernel."""
        b, f = self.b, self.f
        lin = lw.linears
        if lw.q_norm is not None:
            q, k, v = self._qkv(x, lin)
            q = self._head_norm(q, lw.q_norm, f.heads)
            k = self._head_norm(k, lw.k_norm, f.kv_heads)
            qkv = [q, k, v]
        elif "qkv" in lin:
            qkv = [self._linear(x, lin["qkv"]), "", ""]
        else:  # q/k fused with v apart (value_bits), or parts that could not be fused (mixed sharing)
            qkv = list(self._qkv(x, lin))
        inputs = qkv + [past[0], past[1], self.seqlens_k, self.total_len, cos, sin, "", bias, "", "", "", "", "", self.query_lens]
        extra = {}
        if f.sliding_windows[i] is not None:
            extra["local_window_size"] = int(f.sliding_windows[i])
        if f.attn_softcap is not None:
            extra["softcap"] = float(f.attn_softcap)
        out = b.op("GroupQueryAttention", inputs, n_out=3, domain=MS_DOMAIN,
                   outputs=[None, f"present.{i}.key", f"present.{i}.value"],
                   num_heads=f.heads, kv_num_heads=f.kv_heads, do_rotary=1, scale=f.scaling, **extra)[0]
        self.presents += [f"present.{i}.key", f"present.{i}.value"]
        return self._linear(out, lin["o"])

    def _qkv(self, x: str, lin: dict[str, LinearRef]) -> tuple[str, str, str]:
        """q (B, S, nh*hd), k and v (B, S, kvh*hd): one fused projection (phi3's own, or
        q/k/v fused at export) split by output rows; q/k fused and split with v apart (v at
        its own bits); or three."""
        if "qkv" in lin:
            return self.b.op("Split", [self._linear(x, lin["qkv"]), self.b.const(list(lin["qkv"].parts or self.f.fused["qkv"]))],
                             n_out=3, axis=-1)
        if "qk" in lin:
            q, k = self.b.op("Split", [self._linear(x, lin["qk"]), self.b.const(list(lin["qk"].parts))], n_out=2, axis=-1)
            return q, k, self._linear(x, lin["v"])
        return tuple(self._linear(x, lin[p]) for p in ("q", "k", "v"))

    def _attention(self, x: str, lw, past: tuple[str, str], cos: str, sin: str, bias: str, i: int) -> str:
        b, f = self.b, self.f
        lin = lw.linears
        if self.gqa:
            return self._attention_gqa(x, lw, past, cos, sin, bias, i)
        q, k, v = self._qkv(x, lin)
        q, k = self._heads(q, f.heads), self._heads(k, f.kv_heads)  # (B, nh|kvh, S, hd)
        if lw.q_norm is not None:  # Qwen3/Gemma 3: per-head RMSNorm over hd, before rotary
            q, k = self._rms_norm(q, lw.q_norm), self._rms_norm(k, lw.k_norm)
        q = self._rotate(q, cos, sin)  # (B, nh, S, hd)
        k = self._rotate(k, cos, sin)  # (B, kvh, S, hd)
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
        if f.attn_softcap is None:
            scores = b.op("Mul", [scores, b.const(f.scaling, self.np_t)])
        else:  # Gemma 2: cap·tanh(scores·scaling/cap), before the mask as in HF's eager attention
            scores = b.op("Tanh", [b.op("Mul", [scores, b.const(f.scaling / f.attn_softcap, self.np_t)])])
            scores = b.op("Mul", [scores, b.const(f.attn_softcap, self.np_t)])
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
        if "gate_up" in lin:  # one fused projection (phi3's own, or fused at export): gate rows first, then up
            sizes = lin["gate_up"].parts or self.f.fused["gate_up"]
            gate, up = b.op("Split", [self._linear(x, lin["gate_up"]), b.const(list(sizes))], n_out=2, axis=-1)
        else:
            gate, up = self._linear(x, lin["gate"]), self._linear(x, lin["up"])
        return self._linear(b.op("Mul", [self._act(gate), up]), lin["down"])

    def _layer(self, branch, h, lw, past, cos, sin, bias, i) -> tuple[str, str]:
        """One decoder layer on the residual stream h + branch; returns (MLP output, residual),
        the MLP output still to be added (by the next layer's or the final norm). Gemma 2/3
        normalise each sub-layer's output before its residual add (attn_output_norm,
        mlp_output_norm): the normalised output is the branch the next fused Add + norm reads,
        so SkipSimplifiedLayerNormalization still adds exactly what HF adds."""
        b = self.b
        with b.scope("attn"):
            x, h = self._add_norm(branch, h, lw.input_norm)
            attn = self._attention(x, lw, past, cos, sin, bias, i)
            if lw.attn_output_norm is not None:
                attn = self._rms_norm(attn, lw.attn_output_norm)
        with b.scope("mlp"):
            x, h = self._add_norm(attn, h, lw.post_attention_norm)
            out = self._mlp(x, lw.linears)
            if lw.mlp_output_norm is not None:
                out = self._rms_norm(out, lw.mlp_output_norm)
            return out, h

    def _lm_head(self, h: str, out: str | None) -> str:
        """(B, S, H) -> (B, S, vocab), written to `out` (the graph output `logits`, or None
        when a soft-cap follows). Tied: FusedMatMul (fp32) or Gemm (fp16, no fp32-only
        contrib op) with transB reads the (vocab, H) embedding table itself, so the tensor
        exists once (a plain MatMul would need a transposed copy)."""
        b = self.b
        outputs = [out] if out else None
        if self.w.lm_head is not None:
            return self._linear(h, self.w.lm_head, out=out)
        if self.w.embed_quant is not None:  # the quantized table: (vocab, H) rows are MatMulNBits' (N, K)
            return self._matmul(h, self.w.embed, self.w.embed_quant, outputs=outputs)
        if not self.fp16:  # fp32: one op straight into the output (no reshape copy of the logits)
            return b.op("FusedMatMul", [h, self.w.embed], domain=MS_DOMAIN, outputs=outputs, transB=1, alpha=1.0)
        h2 = b.op("Reshape", [h, b.const([-1, self.f.hidden])])  # (B*S, H)
        logits = b.op("Gemm", [h2, self.w.embed], transB=1)  # (B*S, vocab)
        shape = b.op("Concat", [b.op("Shape", [h], end=2), b.const([self.f.vocab])], axis=0)
        return b.op("Reshape", [logits, shape], outputs=outputs)
