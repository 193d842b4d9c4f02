"""`edgedelta export DIR|default --out ART [--dtype fp32|fp16] [--quantize none|int8|int4]
[--float-zero-points] [--embedding-bits 4|8] [--embedding-block-size N] [--value-bits 4|8] [--tune-steps N] [--cpu-arch x86_64|arm64] [--force]`: an ONNX
artifact with a KV cache whose shared weights are stored once, validated against PyTorch
(logits, cached logits, 32-token greedy decode) and audited for duplicated weights."""

from __future__ import annotations

import sys

from edgedelta.data.text import DEFAULT_TRAIN_TEXT
from edgedelta.export.config import CPU_ARCHS, DEFAULT_QUANT_METHOD, DEFAULT_TUNE_STEPS, DTYPES, QUANT_METHODS, QUANTIZE

from .common import output_dir


def add_parser(subparsers):
    p = subparsers.add_parser("export", help="export a model (plain or compressed) to an ONNX artifact", description=__doc__)
    p.add_argument("model", help="'default', a built-in model name (`edgedelta models`), a Hugging Face model directory "
                                       "or an edgedelta compressed directory")
    p.add_argument("--out", type=output_dir, required=True, help="artifact folder (written atomically)")
    p.add_argument("--dtype", default="fp32", help=f"weights and activations: {'|'.join(DTYPES)} (default fp32)")
    p.add_argument("--quantize", default="none", help=f"weight-only quantization: {'|'.join(QUANTIZE)} (default none)")
    p.add_argument("--block-size", type=int, default=None,
                   help="quantization block size (default 64 for int4, 32 for int8 and with --float-zero-points)")
    p.add_argument("--accuracy-level", type=int, default=None, choices=(0, 4),
                   help="quantized MatMul compute: 0 = fp32 (exact), 4 = int8 activations (default when quantized; faster on x86, esp. int8)")
    p.add_argument("--symmetric", default="auto", choices=("auto", "on", "off"),
                   help="quantized blocks without zero points (faster decode, coarser grid): on|off|auto (default auto: "
                        "symmetric when the artifact passes its quality gate, else zero points)")
    p.add_argument("--float-zero-points", action="store_true",
                   help="float zero points on the projections (llama.cpp Q4_1-style blocks; holds a GGUF's Q4_1 weights "
                        "exactly): held-out perplexity near the float model's, slower decode (bench/results/peers.md)")
    p.add_argument("--embedding-bits", type=int, default=None, choices=(4, 8),
                   help="bits of the quantized embedding table and LM head (default: --quantize's); 8 holds a GGUF's Q8_0 embedding")
    p.add_argument("--embedding-block-size", type=int, default=None,
                   help="quantization block of the embedding table and LM head (default: --block-size); at int4, 32 takes off part "
                        "of the table's 4-bit loss, the largest single part of it, at a cost in decode speed "
                        "(bench/results/quant_sensitivity.md; bench/results/peers.md, the -t32 rows)")
    p.add_argument("--value-bits", type=int, default=None, choices=(4, 8),
                   help="bits of the attention value projection (v) when quantized (default: --quantize's, q/k/v one "
                        "fused weight); 8 at int4 takes a little perplexity off at a cost in decode speed "
                        "(bench/results/peers.md, the -v8 row)")
    p.add_argument("--tune-steps", type=int, default=None,
                   help="steps of end-to-end block-scale tuning after quantization: each block's scale is trained against "
                        "the float model on --calib-text, the codes kept; the same file and decode speed, lower perplexity "
                        "(bench/results/scale_tuning.md; bench/results/peers.md, the -untuned rows). Default: "
                        f"{DEFAULT_TUNE_STEPS} on an int4 export with integer codes where the model has a tokenizer and the "
                        "tuning fits in memory, else 0; 0: off")
    p.add_argument("--quant-method", default=DEFAULT_QUANT_METHOD,
                   help=f"how quantized codes are chosen: {'|'.join(QUANT_METHODS)} (default {DEFAULT_QUANT_METHOD}: data-aware, "
                        "from --calib-text)")
    p.add_argument("--calib-text", default=DEFAULT_TRAIN_TEXT,
                   help=f"calibration text of --quant-method gptq: a training text set or a file/folder of your own (default {DEFAULT_TRAIN_TEXT})")
    p.add_argument("--cpu-arch", default="x86_64", help=f"CPU the artifact will run on: {'|'.join(CPU_ARCHS)} (default x86_64); "
                   "lays fp32 shared weights out for ONNX Runtime's single-token kernel on that CPU, same results")
    p.add_argument("--no-validate", action="store_true", help="skip the PyTorch parity checks (checker and audit still run)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def run(args) -> int:
    from edgedelta.export import ExportConfig, export_onnx
    from edgedelta.manifest import read_manifest

    cfg = ExportConfig(dtype=args.dtype, quantize=args.quantize, block_size=args.block_size, accuracy_level=args.accuracy_level,
                       quant_method=args.quant_method, calib_text=args.calib_text,
                       cpu_arch=args.cpu_arch, validate=not args.no_validate,
                       symmetric={"auto": None, "on": True, "off": False}[args.symmetric],
                       float_zero_points=args.float_zero_points, embedding_bits=args.embedding_bits, value_bits=args.value_bits,
                       embedding_block_size=args.embedding_block_size, tune_steps=args.tune_steps)
    out = export_onnx(args.model, cfg, args.out, force=args.force, progress=lambda m: print(f"edgedelta export: {m}", file=sys.stderr))
    m = read_manifest(out)
    b, a = m["bytes"], m["audit"]
    shared = len(a["shared"])
    print(f"wrote {out}: model.onnx.data {b['data_file'] / 1e6:.2f} MB, {m['parameters']['total']:,} unique parameters, "
          f"{shared} shared weights, duplicated bytes {a['duplicated_bytes']}, export {m['timing_s']['total']:.1f} s")
    if cfg.quantize != "none":
        choice = m.get("symmetric_choice") or {}
        if cfg.float_zero_points:
            form = "symmetric codes with float zero points (per-block offsets) on the projections"
        else:
            form = "symmetric blocks (no zero points)" if choice.get("chosen") else "blocks with zero points"
        why = " (symmetric missed the quality gate)" if choice.get("rejected") else ""
        print(f"{cfg.quantize}: {form}{why}")
        if m.get("scale_tuning"):
            t = m["scale_tuning"]
            print(f"scale tuning: {t['steps']} steps, KL to the float model {t['kl_first']:.4f} -> {t['kl_last']:.4f}")
        elif (m.get("scale_tuning_choice") or {}).get("off_because"):
            print(f"no scale tuning: {m['scale_tuning_choice']['off_because']}")
    return 0
