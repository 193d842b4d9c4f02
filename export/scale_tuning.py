"""End-to-end tuning of a quantized export's block scales (the E2E-QP step of EfficientQAT,
Chen et al. 2024): the integer codes that GPTQ (or RTN / HQQ) chose stay as they are, and
every block's scale is trained so that the quantized model's next-token distribution matches
the float model's on calibration text:

    loss = KL(p_float ‖ p_quantized), per token, over the whole vocabulary

GPTQ fits each weight alone (its own layer's output error); the tuning sees the whole model,
so a block's scale also answers for the error every later layer adds. The float model is its
own teacher: the same module, run once with its own parameters and once with the quantized
weights swapped in (torch.func.functional_call; a shared base or a tied table is swapped
everywhere it is read). Only the scales (N, blocks) train, about 1/block of the weights, so
the artifact keeps the same codes, layout, bytes and decode speed.

The delta A/B of a compressed model stay float here (the export quantizes them after, as
without tuning): their rounding is a small part of the compressed model's int4 loss
(bench/results/quant_sensitivity_compressed-12.md, the delta row).

Held-out perplexity on SmolLM2-135M: bench/results/scale_tuning.md."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from .quantize import QuantizedWeight, _unpack, _unpack_zp

TUNE_LR = 1e-3  # Adam, on the relative change u (scale = s0·(1 + u)); SmolLM2-135M by rate and steps: bench/results/scale_tuning.md
TUNE_BATCH = 2  # calibration windows per step
# Peak memory that tuning adds over the loaded model: on SmolLM2-135M (134.5M weights tuned,
# a vocabulary of 49152, bf16 autocast) the process's peak rose 3481 MiB over its RSS before
# tuning, 27 bytes a weight with the logits included: the codes as float, the dequantized
# weights and their bf16 copies, autograd's saved inputs. Counted as 28 a weight plus eight
# (TUNE_BATCH, CALIB_SEQ_LEN, vocab) fp32 tensors of logits and their softmax terms.
TUNE_BYTES_PER_WEIGHT = 28
LOGIT_TENSORS = 8


def tuning_windows(tokenizer, cfg) -> torch.Tensor:
    """(steps · TUNE_BATCH, CALIB_SEQ_LEN) token windows of cfg.calib_text for cfg.tune_steps
    steps, drawn apart from the calibration windows (another seed)."""
    from edgedelta.data.text import calibration_batches
    from edgedelta.errors import ConfigError

    from .calibration import CALIB_SEQ_LEN

    if tokenizer is None:
        raise ConfigError("tune_steps needs calibration text, but the model directory has no tokenizer; add tokenizer files "
                          "or set tune_steps 0")
    return calibration_batches(tokenizer, cfg.tune_steps * TUNE_BATCH, CALIB_SEQ_LEN, seed=1, source=cfg.calib_text)


def tuning_memory_bytes(model: torch.nn.Module) -> int:
    """Bytes that tuning the model's weights is expected to add at its peak (see TUNE_BYTES_PER_WEIGHT)."""
    from .calibration import CALIB_SEQ_LEN

    weights = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # parameters(): a tied or shared weight once
    vocab = model.get_output_embeddings().weight.shape[0]
    return TUNE_BYTES_PER_WEIGHT * weights + LOGIT_TENSORS * TUNE_BATCH * CALIB_SEQ_LEN * vocab * 4


def resolve_tune_steps(cfg, model: torch.nn.Module, has_tokenizer: bool) -> tuple[int, str | None]:
    """The steps an export tunes for and, when auto (cfg.tune_steps None) turned tuning off, why.
    Auto tunes DEFAULT_TUNE_STEPS on an int4 export with integer codes, where calibration text
    can be read (a tokenizer) and the tuning fits in the memory now available."""
    import psutil

    from .config import DEFAULT_TUNE_STEPS

    if cfg.tune_steps is not None:
        return cfg.tune_steps, None
    if cfg.quantize != "int4" or cfg.float_zero_points:
        return 0, "auto tunes int4 exports with integer codes"
    if not has_tokenizer:
        return 0, "the model directory has no tokenizer to read calibration text with"
    need, have = tuning_memory_bytes(model), psutil.virtual_memory().available
    if need > have:
        return 0, f"tuning would take about {need / 2**30:.1f} GiB of memory; {have / 2**30:.1f} GiB is available"
    return DEFAULT_TUNE_STEPS, None


def _codes(q: QuantizedWeight) -> torch.Tensor:
    """The integer codes minus their zero points, (N, nb, block) float32: w = codes · scale."""
    c = _unpack(q.packed, q.bits).astype(np.float32)  # (N, nb, bs)
    nb = c.shape[1]
    zp = (np.full((q.n, nb), 1 << (q.bits - 1), np.float32) if q.zero_points is None
          else _unpack_zp(q.zero_points, q.bits, q.n, nb).astype(np.float32))
    return torch.from_numpy(c - zp[..., None])


def tune_scales(model: torch.nn.Module, quantized: dict[int, QuantizedWeight], ids: torch.Tensor, steps: int,
                lr: float = TUNE_LR, bf16: bool = False, progress: bool = False) -> tuple[dict[int, QuantizedWeight], dict]:
    """`quantized`: id(Parameter) -> its QuantizedWeight (no float zero points). ids (S, T):
    calibration windows, TUNE_BATCH a step, reused in order when steps need more. Returns the
    same weights with tuned scales (new objects; `quantized` is left as it was) and a summary.
    The model's own parameters are not changed."""
    from torch.func import functional_call
    from tqdm.auto import tqdm

    if any(q.offsets is not None for q in quantized.values()):
        raise ValueError("scale tuning does not take float zero points")
    names = {id(p): n for n, p in model.named_parameters()}  # one name per Parameter (a tied table, a shared base)
    dtypes = {id(p): p.dtype for p in model.parameters()}
    codes = {i: _codes(q) for i, q in quantized.items()}
    # scale = s0 · (1 + u), u (N, nb, 1) trained from 0: Adam's step is then a relative change,
    # the same for a model whose scales are 1e-3 as for one whose scales are 1e-1
    s0 = {i: torch.from_numpy(np.asarray(q.scales, np.float32).reshape(q.n, -1, 1)).clone() for i, q in quantized.items()}
    rel = {i: torch.nn.Parameter(torch.zeros_like(s)) for i, s in s0.items()}
    grad_was = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()

    def weights() -> dict[str, torch.Tensor]:  # (N, K) each: codes · scale, K without its block padding
        return {names[i]: (codes[i] * (s0[i] * (1 + rel[i]))).reshape(q.n, -1)[:, : q.k].to(dtypes[i])
                for i, q in quantized.items()}

    opt = torch.optim.Adam(list(rel.values()), lr=lr, betas=(0.9, 0.95))
    losses = []
    t0 = time.perf_counter()
    try:
        for step in tqdm(range(steps), desc="scale tuning", disable=not progress, leave=False):
            rows = [(step * TUNE_BATCH + j) % ids.shape[0] for j in range(TUNE_BATCH)]
            x = ids[rows]  # (B, T)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                with torch.no_grad():
                    teacher = torch.log_softmax(model(input_ids=x).logits.float(), -1)  # (B, T, V)
                student = torch.log_softmax(functional_call(model, weights(), (), {"input_ids": x}).logits.float(), -1)
            loss = (teacher.exp() * (teacher - student)).sum(-1).mean()  # KL(float ‖ quantized) per token
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        for p in model.parameters():
            p.requires_grad_(grad_was[id(p)])
        model.train(was_training)
    out = {i: dataclasses.replace(q, scales=(s0[i] * (1 + rel[i].detach())).reshape(-1).numpy().astype(np.float32))
           for i, q in quantized.items()}
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    summary = {"steps": steps, "lr": lr, "batch": TUNE_BATCH, "tokens": steps * TUNE_BATCH * int(ids.shape[1]),
               "kl_first": float(np.mean(head)) if losses else None, "kl_last": float(np.mean(tail)) if losses else None,
               "bf16_forward": bf16, "tensors": len(quantized), "seconds": round(time.perf_counter() - t0, 1)}
    return out, summary
