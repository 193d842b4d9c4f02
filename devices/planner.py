"""Will it fit, and how fast can it decode? Arithmetic over an artifact's facts and a Device.

    predicted peak = weights (unique bytes: a shared tensor once)
                   + KV cache (2 x per-layer K/V for `context` positions: edgedelta's runtime
                     double-buffers past/present unless the graph updates the cache in place; the KV cache is never shared between layers)
                   + activations (prefill of the whole context in one step: per-token
                     activations (fitted factor x S x (4 hidden + 3 intermediate) fp32) + the
                     larger of the logits buffer [B,S,V] fp32 (B,1,V when the graph keeps the
                     last position's logits) and, for a graph that builds attention from plain
                     ops, attention [B,H,S,S] fp32 x ATTN_FACTOR; see ModelFacts.activation_bytes)
                   + runtime overhead (interpreter, ONNX Runtime, tokenizer, allocator slack;
                     calibrated from a measured peak RSS on the host, see calibrate())

    decode ceiling (tokens/s) = bandwidth / bytes read per token, where bytes read per token =
    weight bytes streamed per token (a shared matrix counts once per layer that uses it: sharing
    saves RAM and storage, not memory traffic) + the KV cache read at that context.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgedelta.errors import ConfigError
from edgedelta.fsutil import write_json_atomic
from edgedelta.runtime.kv_cache import window_slots

from .profile import Device

CALIBRATION_FORMAT = "edgedelta-runtime-calibration"
# Used when no calibration exists: Python + numpy + onnxruntime + tokenizers with the light
# tokenizer, measured on this project's host at ~80 MiB; rounded up.
DEFAULT_OVERHEAD_BYTES = 100 << 20
# Per-token activations without a calibration, in units of ModelFacts.hidden_bytes. The runtime's
# joint fit over SmolLM2-135M's GroupQueryAttention graphs (fp32 original and compressed, int4;
# bench/results/runtime.json, memory.assess.calibration) under-predicts the compressed graph,
# whose delta branches hold a second output beside each base product (its runs alone fit about
# 1.5x the original's factor); an uncalibrated plan takes that larger factor, rounded up
DEFAULT_HIDDEN_FACTOR = 4.0
# [B, H, S, T] fp32 tensors live at once in an attention-bound prefill (scores and
# probabilities; the mask is added in place): SmolLM2's 4k-token prefill measured 1.81 with
# graph revision 6, 2.84 while a Where per layer wrote a third (bench/results/runtime.md)
ATTN_FACTOR = 2.0
TIGHT_FRACTION = 0.10  # a margin under 10% of the prediction is reported as 'tight'


@dataclass(frozen=True)
class Calibration:
    """Runtime overhead = measured peak RSS - (weights + KV + activations) at one context."""

    overhead_bytes: int
    measured_peak_rss: int | None = None
    context: int | None = None
    host: str = ""
    provider: str = "cpu"
    attn_factor: float = ATTN_FACTOR  # live [B, H, S, S] fp32 tensors if attention is the prefill peak
    hidden_factor: float = 1.0  # per-token activations, in units of S x (4 hidden + 3 intermediate) fp32 (fitted)
    contexts: tuple[int, ...] = ()  # the context lengths it was fitted on

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Calibration":
        try:
            obj = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"calibration file '{path}' cannot be read: {e}") from None
        if not isinstance(obj, dict) or obj.get("format") != CALIBRATION_FORMAT:
            raise ConfigError(f"calibration file '{path}' is not an {CALIBRATION_FORMAT} JSON object")
        over = obj.get("overhead_bytes")
        if isinstance(over, bool) or not isinstance(over, int):
            raise ConfigError(f"calibration file '{path}': field 'overhead_bytes' must be an integer, got {over!r}")
        k = obj.get("attn_factor", ATTN_FACTOR)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k >= 0:
            raise ConfigError(f"calibration file '{path}': field 'attn_factor' must be a number ≥ 0, got {k!r}")
        hf = obj.get("hidden_factor", 1.0)
        if isinstance(hf, bool) or not isinstance(hf, (int, float)) or not hf >= 0:
            raise ConfigError(f"calibration file '{path}': field 'hidden_factor' must be a number ≥ 0, got {hf!r}")
        ctxs = obj.get("contexts", [])
        if not isinstance(ctxs, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in ctxs):
            raise ConfigError(f"calibration file '{path}': field 'contexts' must be a list of integers, got {ctxs!r}")
        return cls(over, obj.get("measured_peak_rss"), obj.get("context"), str(obj.get("host", "")),
                   str(obj.get("provider", "cpu")), attn_factor=float(k), contexts=tuple(ctxs),
                   hidden_factor=float(hf))

    def to_json(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, {"format": CALIBRATION_FORMAT, **asdict(self)})


def calibration_path(artifact_dir: str | os.PathLike) -> Path:
    """Beside the artifact, not inside it (the artifact stays as its manifest describes it)."""
    p = Path(artifact_dir).resolve()
    return p.with_name(p.name + ".calibration.json")


def load_calibration(artifact_dir) -> Calibration | None:
    p = calibration_path(artifact_dir)
    return Calibration.from_json(p) if p.is_file() else None


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs from an artifact (from `facts_of(Artifact)` or written by hand)."""

    name: str
    weight_bytes: int  # unique bytes stored (shared tensors once)
    weight_bytes_read_per_token: int  # shared tensors once per consumer
    num_layers: int
    kv_heads: int
    head_dim: int
    kv_itemsize: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    max_positions: int | None
    compressed: bool = False
    cpu_arch: str | None = None  # the CPU its lifted (shared, tied) weights are laid out for (manifest layouts; None: no matter)
    kv_buffers: int = 2  # KV copies the runtime holds: 1 when the graph updates the cache in place, 2 for past + present
    last_logits_only: bool = False  # the graph takes logits_to_keep: a prefill's LM head runs on its last position only
    # GroupQueryAttention: scores are no graph tensors, and the peak RSS of SmolLM2's prefills up
    # to 2k tokens grows linearly in S within a few MiB (bench/results/runtime.json): no [B, H, S, T] term
    fused_attention: bool = False
    sliding_windows: tuple[int | None, ...] = ()  # per layer: W of a sliding-window layer, None for global; () none

    def kv_bytes(self, tokens: int, batch: int = 1) -> int:
        """K and V of every layer for `tokens` positions: [B, kv_heads, slots, head_dim] x 2 per
        layer, slots = tokens; a sliding-window layer of an in-place cache stays resident at
        about its window (runtime/kv_cache.py window_slots), past + present copies hold every slot."""
        windows = self.sliding_windows if self.kv_buffers == 1 and self.sliding_windows else (None,) * self.num_layers
        slots = sum(tokens if w is None else min(tokens, window_slots(w, self.head_dim, self.kv_itemsize)) for w in windows)
        return 2 * slots * batch * self.kv_heads * self.head_dim * self.kv_itemsize

    def attention_bytes(self, tokens: int, batch: int = 1, keys: int | None = None) -> int:
        """One [B, H, S, T] fp32 attention tensor (scores or probabilities); T = keys or S."""
        return batch * self.num_heads * tokens * (keys or tokens) * 4

    def hidden_bytes(self, tokens: int, batch: int = 1) -> int:
        """Per-token activations of one layer: q/k/v/o + gate/up/act, fp32."""
        return batch * tokens * (4 * self.hidden_size + 3 * self.intermediate_size) * 4

    def activation_bytes(self, tokens: int, batch: int = 1, attn_factor: float = ATTN_FACTOR, hidden_factor: float = 1.0,
                         keys: int | None = None) -> int:
        """Prefill of `tokens` positions in one step (fp32): per-token activations
        (hidden_factor x hidden_bytes) + the larger of two phases that never overlap: the
        layers' `attn_factor` live [B, H, S, S] attention tensors (grow as S²; none with
        fused_attention), or the logits [B, S, V] ([B, 1, V] with last_logits_only), whose pages
        are first written by the last op, after every layer's attention is freed
        (edgedelta.runtime also drops a prefill-sized logits buffer at the next decode step, so
        a long-running process does not hold it into its next prefill). Measured on SmolLM2's
        plain-attention graph: up to 2k tokens the logits phase is the peak, at 4k the attention
        phase."""
        logits = batch * (1 if self.last_logits_only else tokens) * self.vocab_size * 4
        attn = 0 if self.fused_attention else attn_factor * self.attention_bytes(tokens, batch, keys)
        return int(hidden_factor * self.hidden_bytes(tokens, batch) + max(logits, attn))


def facts_of(artifact) -> ModelFacts:
    """ModelFacts from an opened edgedelta.runtime.Artifact."""
    c, kv = artifact.config, artifact.kv
    io = artifact.manifest.get("io") if isinstance(artifact.manifest.get("io"), dict) else {}
    hidden = int(c.get("hidden_size") or kv.kv_heads * kv.head_dim)
    heads = int(c.get("num_attention_heads") or kv.kv_heads)
    return ModelFacts(
        name=artifact.name, weight_bytes=artifact.unique_weight_bytes,
        weight_bytes_read_per_token=artifact.weight_bytes_read_per_token, num_layers=kv.num_layers,
        kv_heads=kv.kv_heads, head_dim=kv.head_dim, kv_itemsize=kv.itemsize, vocab_size=artifact.vocab_size,
        hidden_size=hidden, intermediate_size=int(c.get("intermediate_size") or 4 * hidden), num_heads=heads,
        max_positions=artifact.max_positions, compressed=artifact.is_compressed,
        cpu_arch=(artifact.manifest.get("layouts") or {}).get("cpu_arch"),
        kv_buffers=1 if artifact.kv_update == "in_place" else 2, sliding_windows=kv.windows,
        last_logits_only="logits_to_keep" in io.get("inputs", ()), fused_attention=io.get("attention") == "GroupQueryAttention",
    )


@dataclass(frozen=True)
class Plan:
    """The planner's answer for one (model, device, context)."""

    model: str
    device: str
    context: int
    batch: int
    weights_bytes: int
    kv_bytes: int
    activation_bytes: int
    overhead_bytes: int
    overhead_calibrated: bool
    predicted_peak_bytes: int
    available_bytes: int
    margin_bytes: int
    verdict: str  # "fits" | "tight" | "does not fit"
    bytes_read_per_token: int
    decode_ceiling_tok_s: float

    @property
    def fits(self) -> bool:
        return self.verdict != "does not fit"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}


def check_context(context: int, max_positions: int | None) -> None:
    if not isinstance(context, int) or isinstance(context, bool) or context <= 0:
        raise ConfigError(f"context length must be a positive integer, got {context!r}")
    if max_positions and context > max_positions:
        raise ConfigError(f"context length {context} exceeds the model's maximum of {max_positions} positions")


def plan_facts(m: ModelFacts, device: Device, context: int, batch: int = 1, calibration: Calibration | None = None,
               prefill: int | None = None, prefill_chunk: int | None = None) -> Plan:
    """The arithmetic of the module docstring, on ModelFacts. `prefill`: prompt length (default:
    the whole context, the worst case); `prefill_chunk`: tokens per prefill step (the runtime's
    GenerationConfig.prefill_chunk): activations then scale with the chunk, attention with
    chunk x context."""
    check_context(context, m.max_positions)
    if prefill_chunk is not None and prefill_chunk < 1:
        raise ConfigError(f"prefill chunk must be ≥ 1, got {prefill_chunk}")
    kv = m.kv_buffers * m.kv_bytes(context, batch)  # one in-place buffer, or past + present
    step = prefill or context
    keys = None
    if prefill_chunk and prefill_chunk < step:
        step, keys = prefill_chunk, context
    act = m.activation_bytes(step, batch, calibration.attn_factor if calibration else ATTN_FACTOR,
                             calibration.hidden_factor if calibration else DEFAULT_HIDDEN_FACTOR, keys)
    over = calibration.overhead_bytes if calibration else DEFAULT_OVERHEAD_BYTES
    peak = m.weight_bytes + kv + act + over
    avail = device.available_bytes
    margin = avail - peak
    verdict = "does not fit" if margin < 0 else ("tight" if margin < TIGHT_FRACTION * peak else "fits")
    read = m.weight_bytes_read_per_token + m.kv_bytes(context, batch)
    ceiling = device.bandwidth_gbps * 1e9 / read * batch
    return Plan(m.name, device.name, context, batch, m.weight_bytes, kv, act, over, calibration is not None, peak,
                avail, margin, verdict, read, ceiling)


def plan(artifact, device: Device, context: int, batch: int = 1, calibration: Calibration | None = None,
         prefill_chunk: int | None = None) -> Plan:
    """Plan an artifact (a folder or an opened Artifact) on a device. The calibration defaults to
    the one saved beside the artifact by `edgedelta profile`, else DEFAULT_OVERHEAD_BYTES."""
    from edgedelta.runtime.artifact import Artifact

    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    if calibration is None:
        calibration = load_calibration(art.path)
    return plan_facts(facts_of(art), device, context, batch, calibration, prefill_chunk=prefill_chunk)


def calibrate(m: ModelFacts, measured_peak_rss: int, context: int, host: str = "", provider: str = "cpu", batch: int = 1,
              prefill: int | None = None) -> Calibration:
    """The overhead that makes the prediction equal a measured peak RSS at `context`."""
    modelled = m.weight_bytes + m.kv_buffers * m.kv_bytes(context, batch) + m.activation_bytes(prefill or context, batch)
    return Calibration(int(measured_peak_rss - modelled), int(measured_peak_rss), context, host, provider, contexts=(context,))


def calibrate_runs(m: ModelFacts, runs: list[dict], host: str = "", provider: str = "cpu") -> Calibration:
    """Fit overhead and attn_factor to one model's profiler runs (see calibrate_joint)."""
    return calibrate_joint([(m, r) for r in runs], host, provider)


def calibrate_joint(pairs: list[tuple[ModelFacts, dict]], host: str = "", provider: str = "cpu",
                    attn_factor: float = ATTN_FACTOR) -> Calibration:
    """Fit the runtime's overhead and hidden_factor to profiler runs ({context, prompt_tokens,
    peak_rss_bytes}) of one or more models by least squares:
        measured - (weights + KV + max(logits, attn_factor x attention)) = overhead + hidden_factor x hidden_bytes(S)
    (logits and attention as ModelFacts.activation_bytes counts them for the model's graph).
    Both belong to the runtime, not the model, so several models share one fit (keeping
    original-vs-compressed comparisons free of per-model fitting noise). With one context
    length hidden_factor stays 1 and only the overhead is fitted. attn_factor is not fitted."""
    import numpy as np

    y, x = [], []
    for m, r in pairs:
        s = r["prompt_tokens"]
        base = m.weight_bytes + m.kv_buffers * m.kv_bytes(r["context"]) + m.activation_bytes(s, 1, attn_factor, hidden_factor=0.0)
        y.append(r["peak_rss_bytes"] - base)
        x.append(m.hidden_bytes(s))
    ya, xa = np.array(y, dtype=float), np.array(x, dtype=float)
    h = 1.0
    if len({r["prompt_tokens"] for _, r in pairs}) > 1:
        (_, h), *_ = np.linalg.lstsq(np.vstack([np.ones_like(xa), xa]).T, ya, rcond=None)
    h = max(float(h), 0.0)
    over = float(np.mean(ya - h * xa))
    first = min((r for _, r in pairs), key=lambda r: r["context"])
    return Calibration(int(round(over)), int(first["peak_rss_bytes"]), first["context"], host, provider,
                       attn_factor=float(attn_factor), hidden_factor=h, contexts=tuple(sorted({r["context"] for _, r in pairs})))
