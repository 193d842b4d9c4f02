"""Quantization quality: held-out perplexity of weight-only int4/int8 with each method
(export/quant_methods.py: rtn, hqq, gptq with and without act order) against the float model.

Each row quantizes every weight a quantized export quantizes (projections, shared bases once,
deltas A/B, the tied embedding/LM head) and substitutes the dequantized values into a copy of
the float model: what MatMulNBits computes at accuracy level 0. The default method is then
exported for real (export_onnx, accuracy level 4 = int8 activations) and the artifact is run
through ONNX Runtime on the same windows. Held-out text: python-docs and sotu-recent (as
bench/quality.py); calibration text: mixed-train (training text, disjoint from both).

  python bench/quant_quality.py                          # SmolLM2-135M, CPU-sized
  python bench/quant_quality.py --compressed DIR         # also a compressed model (deltas float vs quantized)
  python bench/quant_quality.py --head-only --no-onnx    # only the tied embedding / LM head quantized (projections float)
  python bench/quant_quality.py --symmetric --rows int4-gptq-32,int4-rtn-32,int4-hqq-32
                                                         # symmetric blocks (no zero points), beside the earlier rows

Writes bench/results/quant_quality.json (rewritten after every row) and quant_quality.md."""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgedelta.data.text import EVAL_DATASETS, calibration_batches, dataset_texts, pack, tokenize_stream  # noqa: E402
from edgedelta.delta.layer import DeltaLinear  # noqa: E402
from edgedelta.evaluation.perplexity import perplexity_on_ids  # noqa: E402
from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402
from edgedelta.models.adapters import adapter_for  # noqa: E402
from edgedelta.loading import load_model  # noqa: E402

from edgedelta.export.calibration import CALIB_SEQ_LEN, CalibrationStats, cpu_has_bf16_matmul  # noqa: E402
from edgedelta.export.config import DEFAULT_QUANT_METHOD, ExportConfig  # noqa: E402
from edgedelta.export.quant_methods import quantize_weight  # noqa: E402

BITS = {"int4": 4, "int8": 8}
# (quantize, method, block, act_order, embedding quantized, deltas quantized[, projections quantized])
ROWS = [  # most decisive first: the file is rewritten after every row
    ("int4", "rtn", 32, False, True, True), ("int4", "gptq", 32, True, True, True), ("int4", "gptq", 64, True, True, True),
    ("int4", "gptq", 128, True, True, True), ("int4", "rtn", 32, False, False, True),
    ("int4", "gptq", 32, True, False, True), ("int8", "rtn", 32, False, True, True), ("int8", "gptq", 32, True, True, True),
    ("int4", "hqq", 32, False, True, True), ("int4", "gptq", 32, False, True, True), ("int8", "hqq", 32, False, True, True),
    ("int4", "rtn", 128, False, True, True),
]
DELTA_ROWS = [("int4", "gptq", 32, True, True, False), ("int8", "gptq", 32, True, True, False)]
# only the tied embedding / LM head quantized, every projection float: on a model whose float
# weights are a GGUF's int4 blocks (SmolLM2's Q4_1) the projections are then held exactly, so
# the row splits the int4 error between the head and the projections' re-rounding
HEAD_ROWS = [("int4", "rtn", 32, False, True, True, False), ("int8", "rtn", 32, False, True, True, False)]


def parse_row(label: str) -> tuple:
    """'int4-gptq-64' -> ("int4", "gptq", 64, act order for gptq, embedding quantized, deltas quantized)."""
    try:
        bits, method, block = label.split("-")
        if bits not in BITS or method not in ("rtn", "gptq", "hqq"):
            raise ValueError
        return (bits, method, int(block), method == "gptq", True, True)
    except ValueError:
        raise SystemExit(f"bad row '{label}': expected BITS-METHOD-BLOCK, BITS int4|int8, METHOD rtn|gptq|hqq") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--compressed", default=None, help="an edgedelta compressed directory: also measured, with deltas float and quantized")
    p.add_argument("--ppl-tokens", type=int, default=4096, help="held-out tokens per text set")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration sequences of 512 tokens")
    p.add_argument("--calib-sweep", default="8,32", help="calibration sample counts tried for int4 gptq (act order)")
    p.add_argument("--forward-sweep", action="store_true",
                   help="also int4 gptq (act order) with the calibration forward in the other dtype than the export's "
                        "default (bfloat16 autocast where the CPU has bfloat16 matrix units, else float32)")
    p.add_argument("--no-onnx", action="store_true", help="skip exporting the default method through ONNX Runtime")
    p.add_argument("--onnx-only", action="store_true", help="keep the PyTorch rows of an earlier quant_quality.json; (re)measure the ONNX rows")
    p.add_argument("--rows", default=None, help="only these rows, e.g. 'int4-gptq-64,int4-rtn-64' (act order for gptq, "
                                                "embedding and deltas quantized); the other rows of an earlier "
                                                "quant_quality.json are kept")
    p.add_argument("--head-only", action="store_true", help="only the rows with every projection float and the tied "
                                                               "embedding / LM head quantized (the others of an earlier "
                                                               "quant_quality.json are kept)")
    p.add_argument("--symmetric", action="store_true", help="this run's rows (and ONNX exports) quantize symmetric blocks, "
                                                             "no zero points (the others of an earlier quant_quality.json are kept)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def quantized_params(model) -> dict[int, tuple[torch.nn.Parameter, str, set[tuple[int, str]]]]:
    """id -> (Parameter, kind, readers) of every tensor a quantized export stores as MatMulNBits,
    each once. kind: projection, delta, embedding or lm_head; readers: the (decoder layer,
    projection) pairs that read it (every layer of its group for a shared base; none for the
    table)."""
    ad = adapter_for(model.config)
    out = {}
    for li, layer in enumerate(ad.decoder_layers(model)):
        for proj in ad.projections:
            m = ad.get_linear(layer, proj)
            out.setdefault(id(m.weight), (m.weight, "projection", set()))[2].add((li, proj))
            if isinstance(m, DeltaLinear) and m.rank:
                out[id(m.delta_A)] = (m.delta_A, "delta", {(li, proj)})
                out[id(m.delta_B)] = (m.delta_B, "delta", {(li, proj)})
    emb = ad.embed_tokens(model).weight
    out.setdefault(id(emb), (emb, "embedding", set()))
    head = model.get_output_embeddings()
    out.setdefault(id(head.weight), (head.weight, "lm_head", set()))  # tied: the embedding's entry
    return out


def dequantized_copy(model, stats: CalibrationStats, bits: int, method: str, block: int, act_order: bool, embed: bool, deltas: bool,
                     projections: bool = True, symmetric: bool = False):
    """A deep copy of `model` whose quantized tensors hold their dequantized values."""
    ref = copy.deepcopy(model)  # shared Parameters stay shared in the copy
    pairs = dict(zip([id(p) for p in model.parameters()], ref.parameters()))  # parameters() yields each object once, same order
    with torch.no_grad():
        for pid, (p, kind, _) in quantized_params(model).items():
            if (kind == "embedding" and not embed) or (kind == "delta" and not deltas) or (kind == "projection" and not projections):
                continue
            w = p.detach().float().numpy()
            blk = block if w.shape[1] >= block else 16  # as the exporter: a short K (delta B: K = rank) pads less
            h = stats.hessian(p) if method == "gptq" else None
            m = method if method != "gptq" or h is not None else "rtn"
            q = quantize_weight(w, bits, blk, m, h, act_order=act_order, symmetric=symmetric)
            pairs[pid].copy_(torch.from_numpy(q.dequantize()))
    return ref.eval()


def row_key(r: dict) -> tuple:
    """What a row measured: a row measured again replaces the earlier one. Rows written without
    calib_forward ran float32, without projections_quantized quantized the projections, without
    symmetric stored zero points."""
    return (*(r[k] for k in ("quantize", "method", "block", "act_order", "embedding_quantized", "deltas_quantized", "calib_samples")),
            r.get("calib_forward", "float32" if r.get("calib_samples") else None), r.get("projections_quantized", True),
            r.get("symmetric", False))


def ppl(model, windows: dict[str, torch.Tensor]) -> dict:
    out = {name: perplexity_on_ids(model, ids, batch_size=4)["ppl"] for name, ids in windows.items()}
    out["mean"] = float(np.mean([out[n] for n in windows]))
    return out


def onnx_row(spec: str, model, tokenizer, quantize: str, windows: dict, workdir: Path, symmetric: bool = False) -> dict:
    """Export with the default method (accuracy level 4) and measure the artifact on the same windows."""
    from edgedelta.export import export_onnx
    from edgedelta.export.quality_gate import compare
    from edgedelta.export.validate import _OrtDecoder
    from edgedelta.manifest import read_manifest

    cfg = ExportConfig(quantize=quantize, block_size=32, symmetric=symmetric)
    t0 = time.perf_counter()
    art = export_onnx(spec, cfg, workdir / f"art-{quantize}", force=True, progress=lambda m: print(f"  export: {m}", flush=True))
    seconds = time.perf_counter() - t0
    m = read_manifest(art)
    from edgedelta.export.arch_facts import ArchFacts

    facts = ArchFacts.from_model(model, adapter_for(model.config))
    dec = _OrtDecoder(art / "model.onnx", facts, np.float32, cfg)

    def artifact(ids):
        return dec(ids, np.ones_like(ids), np.arange(ids.shape[1], dtype=np.int64)[None], dec.empty_past(1))[0]

    def float_model(ids):
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids)).logits.float().numpy()

    res = compare(float_model, artifact, {k: v.numpy() for k, v in windows.items()})
    return {"quantize": quantize, "method": cfg.quant_method, "block": 32, "accuracy_level": cfg.accuracy_level, "symmetric": symmetric,
            "ppl": {**{k: v["ppl_artifact"] for k, v in res["texts"].items()},
                    "mean": float(np.mean([v["ppl_artifact"] for v in res["texts"].values()]))},
            "ppl_float_same_run": {k: v["ppl_float"] for k, v in res["texts"].items()},
            "ppl_ratio": res["ppl_ratio"], "agreement": res["agreement"], "tokens": res["tokens"],
            "export_quality_gate": m["parity"].get("quality_gate"), "export_seconds": round(seconds, 1),
            "data_file_mb": m["bytes"]["data_file"] / 1e6}


def measure(label: str, spec: str, args, res: dict, out: Path, rows, with_onnx: bool) -> None:
    loaded = load_model(spec)
    model, tok = loaded.model.eval(), loaded.tokenizer
    windows = {name: pack(tokenize_stream(tok, dataset_texts(name)), 512, args.ppl_tokens) for name in EVAL_DATASETS}
    entry = res["models"].get(label)
    if entry is None or entry.get("spec") != spec:  # another model's rows are not kept beside this one's
        entry = res["models"][label] = {"spec": spec, "rows": []}
    if args.onnx_only:
        rows = []
        entry["onnx"] = []
    else:
        t0 = time.perf_counter()
        entry["float"] = ppl(model, windows)
        entry["float_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{label} float {entry['float']}", flush=True)
    stats_by = {}  # (calibration sequences, forward dtype) -> statistics
    default_bf16 = cpu_has_bf16_matmul()  # the export's default forward
    fwd = "bfloat16" if default_bf16 else "float32"
    needs_stats = any(r[1] == "gptq" for r in rows)  # data-free rows only: no calibration pass, no sweep
    if not needs_stats:
        stats_by[(args.calib_samples, fwd)] = None
    for n in sorted({args.calib_samples, *[int(x) for x in args.calib_sweep.split(",") if x]}) if needs_stats else []:
        ids = calibration_batches(tok, n, CALIB_SEQ_LEN, 0, "mixed-train")
        stats_by[(n, fwd)] = CalibrationStats(model, ids, text="mixed-train", bf16_forward=default_bf16)
        if args.forward_sweep and n == args.calib_samples:
            other = "float32" if default_bf16 else "bfloat16"
            stats_by[(n, other)] = CalibrationStats(model, ids, text="mixed-train", bf16_forward=not default_bf16)
    sweep = [("int4", "gptq", 32, True, True, True) + k for k in stats_by if k != (args.calib_samples, fwd) and rows]
    for row in [r[:6] + (args.calib_samples, fwd, r[6] if len(r) > 6 else True) for r in rows] + [r + (True,) for r in sweep]:
        quantize, method, block, act, embed, deltas, n, fwd_row, projections = row
        t0 = time.perf_counter()
        stats = stats_by[(n, fwd_row)]
        q_model = dequantized_copy(model, stats, BITS[quantize], method, block, act, embed, deltas, projections, args.symmetric)
        t_q = time.perf_counter() - t0
        r = {"quantize": quantize, "method": method, "block": block, "act_order": act, "embedding_quantized": embed,
             "deltas_quantized": deltas, "projections_quantized": projections, "symmetric": args.symmetric,
             "calib_samples": n if method == "gptq" else None,
             "calib_forward": fwd_row if method == "gptq" else None, "ppl": ppl(q_model, windows),
             "quantize_seconds": round(t_q, 1)}
        r["ppl_ratio"] = r["ppl"]["mean"] / entry["float"]["mean"]
        r["ppl_ratio_per_text"] = {k: r["ppl"][k] / entry["float"][k] for k in windows}
        entry["rows"] = [x for x in entry["rows"] if row_key(x) != row_key(r)] + [r]  # a row measured again replaces the old one
        print(f"{label} {quantize} {method} b{block} act={act} emb={embed} deltas={deltas} projections={projections} "
              f"symmetric={args.symmetric} n={n}: "
              f"forward={fwd_row}: {r['ppl']} ratio {r['ppl_ratio']:.4f} ({t_q:.0f} s)", flush=True)
        del q_model
        save(res, out)
    if with_onnx:
        with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent / "_work") as work:
            for quantize in ("int4", "int8"):
                try:
                    r = onnx_row(spec, model, tok, quantize, windows, Path(work), args.symmetric)
                    r["ppl_ratio_vs_float"] = r["ppl"]["mean"] / entry["float"]["mean"]
                except Exception as e:  # the row records the failure; the PyTorch rows stand
                    r = {"quantize": quantize, "symmetric": args.symmetric, "error": f"{type(e).__name__}: {e}"}
                same = (quantize, args.symmetric)  # a row measured again replaces the old one
                entry["onnx"] = [x for x in entry.get("onnx", []) if (x["quantize"], x.get("symmetric", False)) != same] + [r]
                print(f"{label} onnx {quantize}: {r}", flush=True)
                save(res, out)


def save(res: dict, out: Path) -> None:
    res["seconds"] = round(time.perf_counter() - res["_t0"], 1)
    write_json_atomic(out / "quant_quality.json", {k: v for k, v in res.items() if not k.startswith("_")})
    write_text_atomic(out / "quant_quality.md", report(res))


def report(res: dict) -> str:
    md = ["# Weight-only quantization quality (held-out perplexity)", "",
          f"Held-out text: {', '.join(res['eval_texts'])} ({res['ppl_tokens']} tokens each, 512-token windows); "
          f"calibration text: {res['calib_text']} (training text, disjoint). PyTorch rows: dequantized weights substituted "
          "(= MatMulNBits at accuracy level 0). ONNX rows: the exported artifact at accuracy level 4 (int8 activations).", "",
          f"Machine: {res['machine']}. Wall time: {res.get('seconds', 0) / 60:.1f} min.", ""]
    for label, e in res["models"].items():
        if "float" not in e:
            continue
        f = e["float"]
        md += [f"## {label} ({e['spec']})", "", "Float: " + ", ".join(f"{k} {v:.3f}" for k, v in f.items()), "",
               "| bits | zero points | method | block | act order | projections q | embedding q | deltas q | calib seqs | calib forward | "
               + " | ".join(res["eval_texts"]) + " | mean | ratio to float |", "|" + "---|" * (12 + len(res["eval_texts"]))]
        for r in e["rows"]:
            md.append(f"| {r['quantize']} | {'none (symmetric)' if r.get('symmetric') else 'uint'} | {r['method']} | {r['block']} | {'yes' if r['act_order'] else 'no'} | "
                      f"{'yes' if r.get('projections_quantized', True) else 'no'} | {'yes' if r['embedding_quantized'] else 'no'} | {'yes' if r['deltas_quantized'] else 'no'} | "
                      f"{r['calib_samples'] or '-'} | {r.get('calib_forward', 'float32') if r['calib_samples'] else '-'} | "
                      + " | ".join(f"{r['ppl'][t]:.3f}" for t in res["eval_texts"])
                      + f" | {r['ppl']['mean']:.3f} | {r['ppl_ratio']:.4f} |")
        for r in e.get("onnx", []):
            if "error" in r:
                md += ["", f"ONNX {r['quantize']}: export failed: {r['error']}"]
                continue
            g = r.get("export_quality_gate") or {}
            md += ["", f"ONNX {r['quantize']} ({r['method']}, block {r['block']}, {'symmetric, ' if r.get('symmetric') else ''}"
                       f"accuracy level {r['accuracy_level']}, "
                       f"{r['data_file_mb']:.1f} MB): " + ", ".join(f"{k} {v:.3f}" for k, v in r["ppl"].items())
                   + f"; ratio to float {r['ppl_ratio']:.4f}, argmax agreement {r['agreement']:.4f} over {r['tokens']} tokens. "
                   f"Export's own quality gate ({g.get('tokens', '?')} tokens): ratio {g.get('ppl_ratio', float('nan')):.4f}, "
                   f"agreement {g.get('agreement', float('nan')):.4f}."]
        md.append("")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    res = {"_t0": time.perf_counter(), "eval_texts": list(EVAL_DATASETS), "ppl_tokens": args.ppl_tokens, "calib_text": "mixed-train",
           "calib_samples": args.calib_samples, "default_method": DEFAULT_QUANT_METHOD,
           "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "models": {}}
    rows, delta_rows = ROWS + HEAD_ROWS, DELTA_ROWS
    if args.head_only:
        rows, delta_rows = HEAD_ROWS, []
    elif args.rows:
        rows = [parse_row(x) for x in args.rows.split(",")]
        delta_rows = [r[:5] + (False,) for r in rows]  # each row again with float deltas (compressed model only)
    earlier = out / "quant_quality.json"  # the rows this run does not measure are kept from it
    if args.onnx_only and not earlier.is_file():
        raise SystemExit(f"--onnx-only keeps the PyTorch rows of an earlier run, and {earlier} does not exist")
    if (args.onnx_only or args.rows or args.head_only or args.symmetric) and earlier.is_file():
        import json

        res.update({k: v for k, v in json.loads(earlier.read_text()).items() if k != "seconds"})
    measure("original", args.model, args, res, out, rows, not args.no_onnx)
    if args.compressed:
        measure("compressed", args.compressed, args, res, out, rows + delta_rows, not args.no_onnx)
    save(res, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
