"""End-to-end block-scale tuning (export/scale_tuning.py, ExportConfig.tune_steps): held-out
perplexity of the default int4 export's weights before and after tuning, by steps and
learning rate.

Every weight the export quantizes except the deltas (the table, projections, shared bases) is
quantized as the export quantizes it (GPTQ on the calibration text, symmetric blocks, v at its
own bits, the table at its block) and put into the float model: what MatMulNBits computes at
accuracy level 0. Each row then tunes the block scales for its steps (2 windows of 512
calibration tokens a step, drawn apart from GPTQ's) and measures held-out perplexity and
KL(float ‖ row) per scored position. Deltas of a compressed model stay float in every row.
The artifacts with and without tuning, through ONNX Runtime beside the peers, are rows of
bench/peers.py (the -tuned- rows).

  python bench/scale_tuning.py                          # SmolLM2-135M
  python bench/scale_tuning.py --rows 1e-3:50           # one row
  python bench/scale_tuning.py --model DIR              # a compressed model directory

Writes bench/results/scale_tuning[_MODEL].json and .md."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from held_out import evaluate as held_out_evaluate, held_out_batches  # noqa: E402
from results_io import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODEL = "smollm2-135m"


def _rows(text: str) -> list[tuple[float, int]]:
    """'LR:STEPS,LR:STEPS' -> [(lr, steps)]."""
    out = []
    for part in text.split(","):
        lr, _, steps = part.partition(":")
        out.append((float(lr), int(steps)))
    return out


def measure(model_name: str, rows: list[tuple[float, int]], ppl_tokens: int) -> dict:
    import torch
    from tqdm import tqdm

    from edgedelta.export.calibration import calibration_for, cpu_has_bf16_matmul
    from edgedelta.export.config import ExportConfig
    from edgedelta.export.scale_tuning import TUNE_BATCH, tune_scales, tuning_windows
    from edgedelta.export.weights import quantize_base_weights
    from edgedelta.loading import load_model
    from edgedelta.models.adapters import adapter_for

    cfg = ExportConfig(quantize="int4", symmetric=True)  # the form the default export takes when it passes its gate
    loaded = load_model(model_name)
    model, tok = loaded.model.eval(), loaded.tokenizer
    names = {id(p): n for n, p in model.named_parameters()}
    windows, batches = held_out_batches(tok, ppl_tokens, batch=2)

    def evaluate(weights: dict | None, reference: list | None):
        return held_out_evaluate(model, batches, reference, weights)

    def swapped(quantized) -> dict:
        return {names[i]: torch.from_numpy(q.dequantize()) for i, q in quantized.items()}

    t0 = time.perf_counter()
    float_ppl, _, float_logp = evaluate(None, None)
    stats = calibration_for(model, tok, cfg)  # the export's calibration
    bf16 = cpu_has_bf16_matmul()
    pre = {i: q for i, (q, _) in quantize_base_weights(model, adapter_for(model.config), cfg, stats).items()}
    ppl, kl, _ = evaluate(swapped(pre), float_logp)
    out_rows = [{"lr": None, "steps": 0, "ppl": ppl, "ratio": ppl["mean"] / float_ppl["mean"], "kl": kl, "seconds": 0.0}]
    print(f"GPTQ: {ppl['mean']:.3f} ({out_rows[0]['ratio']:.4f}x float), KL {kl:.4f}", flush=True)
    # drawn as the export draws them, for the longest row; each row takes the first steps · TUNE_BATCH
    tune_ids = tuning_windows(tok, dataclasses.replace(cfg, tune_steps=max(s for _, s in rows)))
    for lr, steps in tqdm(rows, desc="rows"):
        tuned, summary = tune_scales(model, pre, tune_ids[: steps * TUNE_BATCH], steps, lr=lr, bf16=bf16, progress=True)
        ppl, kl, _ = evaluate(swapped(tuned), float_logp)
        out_rows.append({"lr": lr, "steps": steps, "ppl": ppl, "ratio": ppl["mean"] / float_ppl["mean"], "kl": kl,
                         "train_kl_first": summary["kl_first"], "train_kl_last": summary["kl_last"], "seconds": summary["seconds"]})
        print(f"lr {lr:g}, {steps} steps: {ppl['mean']:.3f} ({out_rows[-1]['ratio']:.4f}x float), KL {kl:.4f}", flush=True)
    res = {"model": model_name, "float_ppl": float_ppl, "rows": out_rows,
           "export": {"block_size": cfg.block_size, "embedding_block_size": cfg.embedding_block_size, "value_bits": cfg.value_bits,
                      "symmetric": True, "method": cfg.quant_method, "calib_text": cfg.calib_text, "calib_samples": cfg.calib_samples},
           "tune_batch": TUNE_BATCH, "window": 512, "held_out": {n: int(ids.numel()) for n, ids in windows.items()},
           "bf16_forward": bf16, "seconds": round(time.perf_counter() - t0, 1)}
    return res


def report(res: dict) -> str:
    e = res["export"]
    lines = [f"# Block-scale tuning: {res['model']}", "",
             f"The default int4 export's weights ({e['method']}, symmetric blocks of {e['block_size']} (table "
             f"{e['embedding_block_size']}), v at {e['value_bits']} bits; calibration {e['calib_samples']} × 512 of "
             f"{e['calib_text']}) in the float model; each row tunes the block scales against the float model for its steps "
             f"({res['tune_batch']} windows of 512 calibration tokens a step). Held-out text: "
             f"{', '.join(f'{n} ({k} tokens)' for n, k in res['held_out'].items())}, windows of {res['window']}, every position "
             f"after the first scored. Float perplexity {res['float_ppl']['mean']:.3f}; KL is the mean over scored positions of "
             "KL(float ‖ row).", "",
             "| scales | learning rate | steps | perplexity | × float | share of GPTQ's excess removed | KL to float | tuning s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = res["rows"][0]["ratio"] - 1
    for r in res["rows"]:
        share = (res["rows"][0]["ratio"] - r["ratio"]) / base if base > 0 else float("nan")
        lines.append(f"| {'GPTQ' if not r['steps'] else 'tuned'} | {r['lr'] if r['lr'] is not None else '-'} | {r['steps']} | "
                     f"{r['ppl']['mean']:.3f} | {r['ratio']:.4f} | {share:.1%} | {r['kl']:.4f} | {r['seconds']:.0f} |")
    lines += ["", f"Written by bench/scale_tuning.py ({res['seconds'] / 60:.1f} min)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a built-in model name or a model directory (plain or compressed)")
    p.add_argument("--rows", default="2.5e-4:50,5e-4:50,1e-3:50,1e-3:100,4e-3:50",
                   help="tuning runs as LR:STEPS, comma-separated (each from the same GPTQ codes)")
    p.add_argument("--ppl-tokens", type=int, default=2048, help="held-out tokens per text set (windows of 512)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    try:
        rows = _rows(a.rows)
    except ValueError:
        p.error(f"--rows must be LR:STEPS pairs separated by commas, got {a.rows!r}")
    if any(lr <= 0 or steps < 1 for lr, steps in rows):
        p.error(f"--rows needs a learning rate > 0 and at least 1 step in each pair, got {a.rows!r}")
    if a.ppl_tokens < 512:
        p.error(f"--ppl-tokens must be at least one window of 512, got {a.ppl_tokens}")
    stem = "scale_tuning" if a.model == DEFAULT_MODEL else f"scale_tuning_{Path(a.model).name}"
    res = measure(a.model, rows, a.ppl_tokens)
    a.out.mkdir(parents=True, exist_ok=True)
    write_results(a.out, stem, res, report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
