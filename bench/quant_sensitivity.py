"""Where a model's int4 perplexity goes: the default int4 export's weights, with one part at a
time given 8 bits, on held-out text.

Every tensor a quantized export stores as MatMulNBits (projections, shared bases once, delta
A/B, the tied embedding / LM head) is quantized as the export quantizes it (method, block,
act order, calibration text and count, value projection at its own bits: ExportConfig's int4
defaults) and its dequantized values are put into the float model: what MatMulNBits computes
at accuracy level 0. Then each row moves one part to 8 bits and measures held-out perplexity:

  default      the export's int4 form
  all 8-bit    every quantized tensor at 8 bits: the floor of weight-only rounding here
  kind K       every layer's projection K (or the table, or the deltas) at 8 bits
  layer L      every projection layer L reads at 8 bits (a shared base: every reader's too)

Each row states the bytes its 8-bit part adds to the file (codes only; scales are per block and
unchanged). On a model whose error is spread over every layer no single row reaches the float
model, and the chart shows it.

  python bench/quant_sensitivity.py                  # SmolLM2-135M, the default export's symmetric blocks
  python bench/quant_sensitivity.py --zero-points uint --model DIR

Writes bench/results/quant_sensitivity[_MODEL].json, .md and .png."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402
from held_out import evaluate as held_out_evaluate, held_out_batches  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODEL = "smollm2-135m"
TABLE = "table"  # the tied embedding / LM head
DELTA = "delta"
BITS = 4  # the export's int4; a row moves its part to 8


def quantized_tensors(model) -> list[dict]:
    """Each tensor a quantized export stores as MatMulNBits, once (quant_quality.quantized_params):
    {param, kind, layers} where kind is a projection name, "table" (the embedding and an untied
    LM head) or "delta", and layers the decoder layers that read it."""
    from quant_quality import quantized_params

    out = []
    for p, kind, readers in quantized_params(model).values():
        if kind == "projection":
            kind = next(iter(readers))[1]  # every reader of a shared base is the same projection
        out.append({"param": p, "kind": {"embedding": TABLE, "lm_head": TABLE}.get(kind, kind), "layers": {li for li, _ in readers}})
    return out


def default_bits(kind: str, value_bits: int) -> int:
    return value_bits if kind == "v" else BITS


def rows_to_measure(tensors: list[dict], value_bits: int, n_layers: int) -> list[tuple[str, str, set[int]]]:
    """(row name, group, indices into `tensors` moved to 8 bits): default, all 8-bit, each kind
    whose default is below 8 bits, each layer."""
    below = {i for i, t in enumerate(tensors) if default_bits(t["kind"], value_bits) < 8}
    rows = [("default", "default", set()), ("all 8-bit", "all", below)]
    kinds = list(dict.fromkeys(t["kind"] for t in tensors))
    rows += [(f"kind {k}", "kind", {i for i in below if tensors[i]["kind"] == k}) for k in kinds]
    rows += [(f"layer {li}", "layer", {i for i in below if li in tensors[i]["layers"]}) for li in range(n_layers)]
    return [r for r in rows if r[1] == "default" or r[2]]  # a kind already at 8 bits moves nothing


def measure(model_name: str, symmetric: bool, ppl_tokens: int) -> dict:
    import torch

    from edgedelta.data.text import calibration_batches
    from edgedelta.export.calibration import CALIB_SEQ_LEN, CalibrationStats, cpu_has_bf16_matmul
    from edgedelta.export.config import ExportConfig
    from edgedelta.export.quant_methods import GPTQ_ACT_ORDER, quantize_weight
    from edgedelta.loading import load_model
    from edgedelta.models.adapters import adapter_for
    from tqdm import tqdm

    cfg = ExportConfig(quantize="int4")
    loaded = load_model(model_name)
    model, tok = loaded.model.eval(), loaded.tokenizer
    n_layers = len(adapter_for(model.config).decoder_layers(model))
    windows, batches = held_out_batches(tok, ppl_tokens, batch=4)

    def evaluate(reference):
        return held_out_evaluate(model, batches, reference)

    t0 = time.perf_counter()
    float_ppl, _, float_logp = evaluate(None)
    ids = calibration_batches(tok, cfg.calib_samples, CALIB_SEQ_LEN, seed=0, source=cfg.calib_text)
    stats = CalibrationStats(model, ids, text=cfg.calib_text, bf16_forward=cpu_has_bf16_matmul())
    tensors = quantized_tensors(model)
    original = [t["param"].detach().clone() for t in tensors]

    def dequantized(i: int, bits: int) -> torch.Tensor:
        p = tensors[i]["param"]
        w = original[i].float().numpy()  # (N, K)
        block = cfg.embedding_block_size if tensors[i]["kind"] == TABLE else cfg.block_size
        block = block if w.shape[1] >= block else 16  # as the exporter: a short K (delta B) pads less
        q = quantize_weight(w, bits, block, cfg.quant_method, stats.hessian(p), act_order=GPTQ_ACT_ORDER, symmetric=symmetric)
        return torch.from_numpy(q.dequantize()).to(p.dtype)

    # every tensor at its default bits, and at 8 bits where that differs: (N, K) each
    base = [dequantized(i, default_bits(t["kind"], cfg.value_bits)) for i, t in enumerate(tqdm(tensors, desc="int4"))]
    wide = {i: dequantized(i, 8) for i, t in enumerate(tqdm(tensors, desc="int8")) if default_bits(t["kind"], cfg.value_bits) < 8}
    rows = []
    with torch.no_grad():
        for i, t in enumerate(tensors):
            t["param"].copy_(base[i])
        for name, group, moved in tqdm(rows_to_measure(tensors, cfg.value_bits, n_layers), desc="rows"):
            for i in moved:
                tensors[i]["param"].copy_(wide[i])
            r, kl, _ = evaluate(float_logp)
            for i in moved:
                tensors[i]["param"].copy_(base[i])
            rows.append({"row": name, "group": group, "ppl": r, "ratio": r["mean"] / float_ppl["mean"], "kl": kl,
                         "added_mib": sum(tensors[i]["param"].numel() * (8 - BITS) / 8 for i in moved) / 2**20})
            print(f"{name}: {r['mean']:.3f} ({rows[-1]['ratio']:.4f}x float), KL {kl:.4f}", flush=True)
    return {"model": model_name, "layers": n_layers, "float_ppl": float_ppl, "rows": rows,
            "export": {"bits": BITS, "value_bits": cfg.value_bits, "block_size": cfg.block_size,
                       "embedding_block_size": cfg.embedding_block_size, "method": cfg.quant_method,
                       "act_order": GPTQ_ACT_ORDER, "symmetric": symmetric, "calib_text": cfg.calib_text,
                       "calib_samples": cfg.calib_samples, "calib_forward": "bfloat16" if stats.bf16_forward else "float32"},
            "held_out": {n: int(ids.numel()) for n, ids in windows.items()}, "window": 512,
            "seconds": round(time.perf_counter() - t0, 1)}


def report(res: dict) -> str:
    e = res["export"]
    default = next(r for r in res["rows"] if r["group"] == "default")
    lines = [f"# int4 perplexity by part: {res['model']}", "",
             f"The default int4 export's weights ({e['method']}, block {e['block_size']} (table {e['embedding_block_size']}), "
             f"{'symmetric' if e['symmetric'] else 'uint zero points'}, v at {e['value_bits']} bits; calibration "
             f"{e['calib_samples']} × 512 of {e['calib_text']}), dequantized into the float model; each row moves one part to "
             f"8 bits. Held-out text: {', '.join(f'{n} ({k} tokens)' for n, k in res['held_out'].items())}, windows of "
             f"{res['window']}, every position after the first scored. Float perplexity {res['float_ppl']['mean']:.3f}; KL "
             "is the mean over scored positions of KL(float ‖ row).", "",
             "| row | perplexity | × float | share of the default's excess removed | KL to float, nats/token | MiB added |",
             "|---|---:|---:|---:|---:|---:|"]
    excess = default["ratio"] - 1
    for r in sorted(res["rows"], key=lambda r: (r["group"] == "layer", r["ratio"])):
        share = (default["ratio"] - r["ratio"]) / excess if excess > 0 else float("nan")
        lines.append(f"| {r['row']} | {r['ppl']['mean']:.3f} | {r['ratio']:.4f} | {share:.1%} | {r['kl']:.4f} | {r['added_mib']:.1f} |")
    lines += ["", f"Written by bench/quant_sensitivity.py ({res['seconds'] / 60:.1f} min); the chart is beside it (.png)."]
    return "\n".join(lines) + "\n"


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["row"]: r for r in res["rows"]}
    layer_rows = [r for r in res["rows"] if r["group"] == "layer"]
    other = [r for r in res["rows"] if r["group"] in ("kind", "all")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1.4]})
    for ax, rows, labels in ((axes[0], layer_rows, [r["row"].split()[-1] for r in layer_rows]),
                             (axes[1], other, [r["row"].removeprefix("kind ") for r in other])):
        ax.bar(range(len(rows)), [r["ratio"] for r in rows], color="C0")
        ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=90 if ax is axes[1] else 0)
        ax.axhline(by["default"]["ratio"], color="C3", ls="--", lw=1, label=f"default int4 ({by['default']['ratio']:.3f}x)")
        ax.axhline(1.0, color="grey", ls=":", lw=1, label="float")
        ax.set_ylim(min(0.98, min(r["ratio"] for r in rows) - 0.01), by["default"]["ratio"] + 0.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_xlabel("decoder layer at 8 bits")
    axes[0].set_ylabel("held-out perplexity / float")
    axes[1].set_xlabel("part at 8 bits")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{res['model']}: int4 perplexity with one part at 8 bits", fontsize=11)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a built-in model name or a model directory (plain or compressed)")
    p.add_argument("--zero-points", choices=("none", "uint"), default="none",
                   help="none: symmetric blocks (what the default int4 export takes when it passes its quality gate); uint")
    p.add_argument("--ppl-tokens", type=int, default=2048, help="held-out tokens per text set (windows of 512)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.ppl_tokens < 512:
        p.error(f"--ppl-tokens must be at least one window of 512, got {a.ppl_tokens}")
    res = measure(a.model, a.zero_points == "none", a.ppl_tokens)
    stem = "quant_sensitivity" if a.model == DEFAULT_MODEL else f"quant_sensitivity_{Path(a.model).name}"
    a.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out / f"{stem}.json", res)
    write_text_atomic(a.out / f"{stem}.md", report(res))
    chart(res, a.out / f"{stem}.png")
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
