"""Parity of an exported graph with the PyTorch model it came from.

Three checks, each raising ParityError naming the output and the largest difference:
  logits            full prompt, no past (a batch of 2, the second row left-padded)
  logits_with_past  the same prompt fed as a prefix + a 4-token chunk through the KV cache
  greedy_decode     `decode_tokens` greedy steps through the cache; tokens must be identical
                    (a divergence is accepted only at a near-tie of the reference, where
                    the two candidates' reference logits differ by less than the tolerance)

The reference is the fp32 PyTorch model. A weight-only quantized export is checked twice:
  structural  the three checks above on the same graph at accuracy level 0 (fp32 compute on
              the dequantized weights) against the model holding those dequantized weights
              for the duration of the checks, so the graph is shown to compute what its stored
              tensors say
  quality     the artifact as shipped (int8 activations at accuracy level 4 by default)
              against the float model on held-out text: perplexity ratio and argmax agreement
              with stated thresholds (quality_gate.py). Raw logits at level 4 differ by the
              activation rounding, which is not what a user feels."""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgedelta.errors import ParityError

from .config import ExportConfig, session_config
from .arch_facts import ArchFacts
from .quality_gate import GATE_SEQ_LEN, GateThresholds, compare, held_out_windows, judge
from .quantize import BITS


def session_options(cfg: ExportConfig):
    """ORT options the artifact is meant to run with (see config.session_config)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    for k, v in session_config(cfg).items():
        so.add_session_config_entry(k, v)
    so.log_severity_level = 3
    return so


@contextmanager
def kernel_weights(model: torch.nn.Module, dequantized: dict[int, Callable[[], np.ndarray]]):
    """Inside the block the model's quantized parameters hold the weights as the kernel sees
    them (dequantized[id(p)]() computes them from the packed codes); every parameter gets its
    own tensor back on exit, error or not, and the dequantized arrays are freed. Swapping in
    place rather than deep-copying the model keeps one model's weights fewer in memory during
    parity: 6 GB at 1.5B parameters."""
    saved: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for p in model.parameters():  # each Parameter once: a tied embedding/LM head is one
                if id(p) in dequantized and id(p) not in saved:
                    saved[id(p)] = (p, p.data)
                    p.data = torch.from_numpy(dequantized[id(p)]()).to(p.dtype)
        yield model
    finally:
        for p, data in saved.values():
            p.data = data


class _OrtDecoder:
    def __init__(self, path, facts: ArchFacts, np_dtype, cfg: ExportConfig):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(path), session_options(cfg), providers=["CPUExecutionProvider"])
        self.f, self.dtype = facts, np_dtype
        self.out_names = [o.name for o in self.sess.get_outputs()]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.f.kv_heads, 0, self.f.head_dim)
        return [np.zeros(shape, self.dtype) for _ in range(2 * self.f.num_layers)]

    def __call__(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list[np.ndarray]):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        for i in range(self.f.num_layers):
            feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = past[2 * i], past[2 * i + 1]
        out = self.sess.run(None, feed)
        return out[0].astype(np.float32), out[1:]


def _positions(mask: np.ndarray) -> np.ndarray:
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)  # HF/optimum convention for pads


def _check(name: str, got: np.ndarray, ref: np.ndarray, valid: np.ndarray, cfg: ExportConfig, report: dict) -> None:
    diff = float(np.abs(got - ref)[valid].max())
    tol = cfg.tolerance(float(np.abs(ref[valid]).max()))
    report[name] = {"max_abs_diff": diff, "tolerance": tol}
    if not diff <= tol:  # also catches NaN
        raise ParityError(name, diff, tol)


@torch.no_grad()
def check_parity(model: torch.nn.Module, onnx_path, facts: ArchFacts, cfg: ExportConfig, dequantized: dict | None = None,
                 tokenizer=None, seconds: dict | None = None) -> dict[str, Any]:
    """Run the three checks (for a quantized export: at accuracy level 0, then the quality
    gate on the artifact as shipped); returns {check: {max_abs_diff, tolerance, ...}}.
    seconds: where given, gets the wall time of the parity checks and of the quality gate."""
    seconds = {} if seconds is None else seconds
    t0 = time.perf_counter()
    np_dtype = np.float16 if cfg.dtype == "fp16" else np.float32
    if cfg.quantize == "none":
        report = _parity_checks(model, _OrtDecoder(onnx_path, facts, np_dtype, cfg), facts, cfg)
        seconds["parity"] = time.perf_counter() - t0
        return report
    level0 = dataclasses.replace(cfg, accuracy_level=0)
    with _at_accuracy_level_zero(Path(onnx_path), cfg.accuracy_level) as path0, kernel_weights(model, dequantized or {}) as ref:
        report = _parity_checks(ref, _OrtDecoder(path0, facts, np_dtype, level0), facts, level0)
    for check in report.values():
        check["accuracy_level"] = 0
    seconds["parity"] = time.perf_counter() - t0
    report["quality_gate"] = quality_gate(model, tokenizer, _OrtDecoder(onnx_path, facts, np_dtype, cfg), cfg)
    seconds["quality_gate"] = time.perf_counter() - t0 - seconds["parity"]
    return report


@contextmanager
def _at_accuracy_level_zero(path: Path, level: int):
    """The graph at `path` with every MatMulNBits at accuracy level 0, as a sibling .onnx file
    reading the same external data file (removed on exit); `path` itself when already 0."""
    if level == 0:
        yield path
        return
    import onnx

    m = onnx.load(str(path), load_external_data=False)  # initializers stay references into the data file
    for node in m.graph.node:
        if node.op_type == "MatMulNBits":
            for a in node.attribute:
                if a.name == "accuracy_level":
                    a.i = 0
    tmp = path.with_name(path.stem + ".level0.onnx")
    onnx.save(m, str(tmp))
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@torch.no_grad()
def quality_gate(model: torch.nn.Module, tokenizer, dec: "_OrtDecoder", cfg: ExportConfig) -> dict[str, Any]:
    """Held-out perplexity ratio and argmax agreement of the artifact vs the float model
    (quality_gate.py); ParityError when a threshold is missed."""
    if tokenizer is None:
        return {"skipped": "the model directory has no tokenizer, so no held-out text can be read"}
    seq = min(GATE_SEQ_LEN, int(getattr(model.config, "max_position_embeddings", 0) or GATE_SEQ_LEN))
    windows = held_out_windows(tokenizer, cfg.gate_tokens, seq)

    def artifact(ids: np.ndarray) -> np.ndarray:  # (1, T) -> (1, T, V), one prefill from an empty cache
        mask = np.ones_like(ids)
        pos = np.arange(ids.shape[1], dtype=np.int64)[None]
        return dec(ids, mask, pos, dec.empty_past(1))[0]

    def float_model(ids: np.ndarray) -> np.ndarray:
        return model(input_ids=torch.from_numpy(ids)).logits.float().numpy()

    thresholds = GateThresholds.for_bits(BITS[cfg.quantize], cfg.gate_max_ppl_ratio, cfg.gate_min_agreement)
    return judge(compare(float_model, artifact, windows), thresholds)


def _parity_checks(ref_model: torch.nn.Module, dec: "_OrtDecoder", facts: ArchFacts, cfg: ExportConfig) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed)
    n, pad = cfg.prompt_tokens, min(3, cfg.prompt_tokens - 1)
    ids = rng.integers(0, facts.vocab, size=(2, n), dtype=np.int64)
    mask = np.ones((2, n), np.int64)
    mask[1, :pad] = 0  # left padding
    pos = _positions(mask)
    report: dict[str, Any] = {}

    # 1. whole prompt, no past
    ref = ref_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(pos)).logits.float().numpy()  # (2, n, V)
    valid = np.broadcast_to((mask == 1)[..., None], ref.shape)
    got, _ = dec(ids, mask, pos, dec.empty_past(2))
    _check("logits", got, ref, valid, cfg, report)

    # 2. prefix, then a chunk of up to 4 tokens through the cache
    cut = max(1, n - 4)
    _, present = dec(ids[:, :cut], mask[:, :cut], pos[:, :cut], dec.empty_past(2))
    got2, _ = dec(ids[:, cut:], mask, pos[:, cut:], present)
    _check("logits_with_past", got2, ref[:, cut:], valid[:, cut:], cfg, report)

    # 3. greedy decode of row 0 through the cache, token by token
    report["greedy_decode"] = _greedy(ref_model, dec, ids[:1], cfg)
    return report


def _greedy(ref_model, dec: _OrtDecoder, prompt: np.ndarray, cfg: ExportConfig) -> dict[str, Any]:
    from transformers import DynamicCache

    n = prompt.shape[1]
    cache = DynamicCache()
    past = dec.empty_past(1)
    t_ids, o_ids = prompt, prompt
    ref_tokens, onnx_tokens, max_diff = [], [], 0.0
    for step in range(cfg.decode_tokens):
        total = n + step
        mask = np.ones((1, total), np.int64)
        pos = np.arange(total - t_ids.shape[1], total, dtype=np.int64)[None]
        r = ref_model(input_ids=torch.from_numpy(t_ids), attention_mask=torch.from_numpy(mask), position_ids=torch.from_numpy(pos),
                      past_key_values=cache, use_cache=True).logits[0, -1].float().numpy()  # (V,)
        g, past = dec(o_ids, mask, pos, past)
        g = g[0, -1]
        max_diff = max(max_diff, float(np.abs(g - r).max()))
        rt, ot = int(r.argmax()), int(g.argmax())
        ref_tokens.append(rt)
        onnx_tokens.append(ot)
        if rt != ot:
            margin, tol = float(r[rt] - r[ot]), cfg.tolerance(float(np.abs(r).max()))
            if margin > tol:
                raise ParityError("greedy_decode", margin, tol,
                                  f"step {step}: PyTorch chose token {rt}, ONNX chose {ot}; reference logit margin {margin:.3g}")
            return {"steps": step + 1, "identical": False, "near_tie_at": step, "margin": margin, "max_abs_diff": max_diff}
        t_ids = o_ids = np.array([[rt]], np.int64)
    return {"steps": cfg.decode_tokens, "identical": True, "max_abs_diff": max_diff, "tokens": onnx_tokens}
