"""Whether the calibration Gram xᵀx may be taken in bfloat16 (export/calibration.py).

On a CPU with bfloat16 matrix units the export's calibration forward runs under bfloat16
autocast and each batch's Gram blocks are bfloat16 products summed into float32. This
benchmark takes the inputs of a few projections of a real model over the export's own
calibration windows (the same text, count and length) and accumulates each projection's
Gram both ways in one pass:

  seconds          time of the float32 and the bfloat16 Gram, same inputs, same blocks
  hessian_rel_diff ‖H_bf16 − H_fp32‖_F / ‖H_fp32‖_F
  gptq_output_err  GPTQ int4 (the export's default: block 32, act order, symmetric) of the
                   projection's weight with each Hessian, judged by the float32 one:
                   tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ), the relative output error on the calibration
                   inputs; bf16/fp32 is their ratio

  python bench/gram_precision.py [--model qwen2.5-coder-1.5b] [--layer 3]

Writes bench/results/gram_precision[_MODEL].json and .md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

import numpy as np  # noqa: E402

from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROJECTIONS = ("mlp.gate_proj", "mlp.down_proj")  # the hidden-wide and the MLP-wide input of one layer


def measure(model_name: str, layer_index: int) -> dict:
    import torch

    from edgedelta.data.text import calibration_batches
    from edgedelta.export.calibration import CALIB_SEQ_LEN, add_gram_upper, cpu_has_bf16_matmul, symmetric_from_upper
    from edgedelta.export.config import ExportConfig
    from edgedelta.export.quant_methods import GPTQ_ACT_ORDER, gptq
    from edgedelta.loading import load_model
    from edgedelta.models.adapters import adapter_for
    from edgedelta.models.layer_inputs import StopForward, stop_after

    cfg = ExportConfig(quantize="int4")
    loaded = load_model(model_name)
    model = loaded.model.eval()
    layer = adapter_for(model.config).decoder_layers(model)[layer_index]
    ids = calibration_batches(loaded.tokenizer, cfg.calib_samples, CALIB_SEQ_LEN, seed=0, source=cfg.calib_text)
    mods = {p: layer.get_submodule(p) for p in PROJECTIONS}
    acc = {p: {d: torch.zeros(m.in_features, m.in_features) for d in ("fp32", "bf16")} for p, m in mods.items()}
    seconds = {p: {"fp32": 0.0, "bf16": 0.0} for p in mods}

    def hook(p):
        def h(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])  # (tokens, K)
            for d in ("fp32", "bf16"):
                t = time.perf_counter()
                add_gram_upper(acc[p][d], x.float() if d == "fp32" else x, bf16=d == "bf16")
                seconds[p][d] += time.perf_counter() - t
        return h

    handles = [m.register_forward_pre_hook(hook(p)) for p, m in mods.items()] + [stop_after(layer)]
    bf16_forward = cpu_has_bf16_matmul()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_forward):
        for s in range(0, ids.shape[0], 4):  # CalibrationStats' batch size
            try:
                model(input_ids=ids[s : s + 4])
            except StopForward:
                pass
    for h in handles:
        h.remove()
    rows = []
    for p, m in mods.items():
        h32, h16 = (symmetric_from_upper(acc[p][d]).numpy() for d in ("fp32", "bf16"))
        w = m.weight.detach().float().numpy()  # (N, K)

        def output_err(h: np.ndarray) -> float:
            q = gptq(w, h, 4, cfg.block_size, act_order=GPTQ_ACT_ORDER, symmetric=True)
            dw = w - q.dequantize()
            return float(((dw @ h32) * dw).sum() / ((w @ h32) * w).sum())  # BLAS products: einsum over 3 operands is not

        e32, e16 = output_err(h32), output_err(h16)
        rows.append({"projection": p, "shape": list(w.shape), "seconds": {k: round(v, 3) for k, v in seconds[p].items()},
                     "speedup": seconds[p]["fp32"] / seconds[p]["bf16"],
                     "hessian_rel_diff": float(np.linalg.norm(h16 - h32) / np.linalg.norm(h32)),
                     "gptq_output_err": {"fp32": e32, "bf16": e16}, "gptq_output_err_ratio": e16 / e32})
        print(rows[-1], flush=True)
    return {"model": model_name, "layer": layer_index, "calib_text": cfg.calib_text, "calib_samples": cfg.calib_samples,
            "seq_len": CALIB_SEQ_LEN, "tokens": int(ids.numel()), "forward": "bfloat16" if bf16_forward else "float32",
            "bf16_matmul_hardware": bf16_forward, "rows": rows}


def report(res: dict) -> str:
    lines = [f"# bfloat16 calibration Grams: {res['model']}, layer {res['layer']}", "",
             f"{res['tokens']} calibration tokens ({res['calib_samples']} × {res['seq_len']} of {res['calib_text']}), "
             f"forward in {res['forward']}. GPTQ int4 output error tr(ΔW·H·ΔWᵀ)/tr(W·H·Wᵀ) judged by the float32 Hessian.", "",
             "| projection | (N, K) | Gram fp32 s | Gram bf16 s | speedup | ‖ΔH‖/‖H‖ | GPTQ err fp32 H | GPTQ err bf16 H | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['projection']} | {tuple(r['shape'])} | {r['seconds']['fp32']:.2f} | {r['seconds']['bf16']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['hessian_rel_diff']:.2e} | {r['gptq_output_err']['fp32']:.4e} | "
                     f"{r['gptq_output_err']['bf16']:.4e} | {r['gptq_output_err_ratio']:.4f} |")
    lines += ["", "Written by bench/gram_precision.py."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="a built-in model name or a model directory")
    p.add_argument("--layer", type=int, default=3, help="the decoder layer whose projections are measured")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    res = measure(a.model, a.layer)
    stem = "gram_precision" if a.model == "qwen2.5-coder-1.5b" else f"gram_precision_{Path(a.model).name}"
    write_json_atomic(a.out / f"{stem}.json", res)
    write_text_atomic(a.out / f"{stem}.md", report(res))
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
