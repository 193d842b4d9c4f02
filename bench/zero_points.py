"""Why an int4 export of a GGUF Q4_1 model loses perplexity that llama.cpp's Q4_1 does not,
and what the exact alternative would cost in ONNX Runtime.

The default model's float weights are its GGUF's Q4_1 blocks dequantized: each block of 32
weights along K is w = d·q + m with q in 0..15 and d, m float. MatMulNBits stores
w = s·(q − z); with uint4 zero points z is an integer, so a Q4_1 block is re-rounded unless
−m/d happens to be one, while float zero points (T1, the scale's type) hold every Q4_1 block
exactly. Two measurements:

  weights   every Q4_1 projection of the default model: relative Frobenius error of the
            export's data-free int4 (uint4 zero points, block 32 along K, the same blocks as
            Q4_1) and of the exact float-zero-point form
  kernels   MatMulNBits over one (K=576, N=1536) weight: no zero points, uint4 zero points and
            float zero points, accuracy levels 0 and 4, at M = 1 (a decode step) and M = 512
            (a prefill), interleaved in one process; reported as time relative to uint4
            zero points at the same level and M (ratios: the host is shared)
  decode    the model exported at int4 three times: uint4 zero points, symmetric
            (ExportConfig.symmetric: none stored) and float zero points (ExportConfig.
            float_zero_points: symmetric codes plus an 8-bit per-block offset table), all loaded
            in one process and decoding in alternation (greedy, 32 steps after a 32-token
            prompt, order reversed every alternation): per-alternation ratios of median step
            times against the symmetric form, and each export's quality gate

  python bench/zero_points.py [--reps 2000] [--alternations 20]

Writes bench/results/zero_points.json and .md."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

import numpy as np  # noqa: E402

from results_io import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "_work" / "zero_points"
BLOCK = 32  # Q4_1's block (the export's block_size with float zero points)
K, N = 576, 1536  # SmolLM2-135M's gate projection


def q4_1_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Recover (codes, d, m, exact) of weights that are dequantized Q4_1: per block of 32 the
    values are m + d·q with m the block's minimum and d = (max − min)/15 (llama.cpp's
    quantize_row_q4_1), codes (N, nb, 32), d and m (N, nb). exact: whether every value of the
    block lies on that grid (to float rounding)."""
    n, k = w.shape
    b = w.reshape(n, k // BLOCK, BLOCK).astype(np.float64)
    lo, hi = b.min(-1), b.max(-1)
    d = (hi - lo) / 15
    safe = np.where(d > 0, d, 1.0)
    t = (b - lo[..., None]) / safe[..., None]
    q = np.rint(t)
    exact = np.abs(t - q).max(-1) < 1e-3
    return q.astype(np.uint8), d, lo, exact


def weight_errors(model_spec: str) -> dict:
    from edgedelta.loading import load_model
    from edgedelta.export.quantize import quantize_blockwise

    lm = load_model(model_spec)
    rows, on_grid, blocks, num, den_int, num_float = [], 0, 0, 0.0, 0.0, 0.0
    for name, p in lm.model.named_parameters():
        if p.ndim != 2 or "embed" in name or p.shape[1] % BLOCK:
            continue
        w = p.detach().float().numpy()
        q, d, m, exact = q4_1_blocks(w)
        on_grid += int(exact.sum())
        blocks += exact.size
        rtn = quantize_blockwise(w, 4, BLOCK).dequantize()
        exact_w = (m[..., None] + d[..., None] * q).reshape(w.shape)  # float zero point z = −m/d: s·(q − z) = d·q + m
        e_int = float(np.linalg.norm(rtn - w))
        e_float = float(np.linalg.norm(exact_w - w))
        norm = float(np.linalg.norm(w))
        num += norm ** 2
        den_int += e_int ** 2
        num_float += e_float ** 2
        rows.append({"name": name, "shape": list(w.shape), "rel_err_uint4_zp": e_int / norm, "rel_err_float_zp": e_float / norm})
    return {"model": lm.source.get("name", model_spec), "tensors": len(rows), "blocks": blocks,
            "blocks_on_q4_1_grid": on_grid, "rel_err_uint4_zp": (den_int / num) ** 0.5,
            "rel_err_float_zp": (num_float / num) ** 0.5, "per_tensor": rows}


def kernel_model(zp: np.ndarray | None, acc: int, packed: np.ndarray, scales: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")]
    ins = ["A", "B", "S"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "Z"))
        ins.append("Z")
    node = helper.make_node("MatMulNBits", ins, ["Y"], domain="com.microsoft", K=K, N=N, bits=4, block_size=BLOCK,
                            accuracy_level=acc)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return m.SerializeToString()


def kernels(reps: int, threads: int) -> list[dict]:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    nb = K // BLOCK
    q = rng.integers(0, 16, (N, nb, BLOCK)).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)  # (N, nb, 16)
    scales = (rng.random((N, nb)) * 0.01 + 1e-3).astype(np.float32).reshape(-1)
    z_int = rng.integers(0, 16, (N, nb)).astype(np.uint8)
    zp_u4 = (z_int[:, 0::2] | (z_int[:, 1::2] << 4)).reshape(-1)  # nb = 18: even, no row padding
    zp_f = (z_int + rng.random((N, nb))).astype(np.float32).reshape(-1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    kinds = {"none": None, "uint4": zp_u4, "float": zp_f}
    sessions = {(kind, acc): ort.InferenceSession(kernel_model(z, acc, packed, scales), so, providers=["CPUExecutionProvider"])
                for kind, z in kinds.items() for acc in (0, 4)}
    out = []
    for m in (1, 512):
        a = rng.standard_normal((m, K)).astype(np.float32)
        n = reps if m == 1 else max(5, reps // 100)
        times = {k: [] for k in sessions}
        for s in sessions.values():
            s.run(None, {"A": a})
        for _ in range(3):  # rounds, interleaved
            for key, s in sessions.items():
                t = time.perf_counter()
                for _ in range(n):
                    s.run(None, {"A": a})
                times[key].append((time.perf_counter() - t) / n)
        for (kind, acc), ts in times.items():
            base = float(np.median(times[("uint4", acc)]))
            out.append({"m": m, "zero_points": kind, "accuracy_level": acc, "us": float(np.median(ts)) * 1e6,
                        "x_uint4": float(np.median(ts)) / base})
    return out


# the int4 forms decode_ab exports: zero-point kind -> ExportConfig fields
FORMS = {"uint4": {"symmetric": False}, "none": {"symmetric": True}, "float": {"float_zero_points": True}}


def decode_ab(model_spec: str, threads: int, alternations: int, steps: int = 32) -> dict:
    """Step time of int4 decode in each zero-point form (FORMS), in one process."""
    from edgedelta.export import ExportConfig, export_onnx
    from edgedelta.runtime import Session

    arts, work = {}, WORK if model_spec == "default" else WORK / Path(model_spec).name
    for kind, fields in FORMS.items():
        path = work / kind
        if not (path / "manifest.json").is_file():
            print(f"exporting {model_spec} int4 ({kind} zero points) to {path}", file=sys.stderr, flush=True)
            export_onnx(model_spec, ExportConfig(quantize="int4", block_size=BLOCK, **fields), path, force=True)
        arts[kind] = Session.from_dir(path, provider="cpu", threads=threads, tokenizer=None, spin="on")

    ratios, ms = {k: [] for k in arts if k != "none"}, {k: [] for k in arts}
    for i in range(alternations):
        order = list(arts) if i % 2 == 0 else list(arts)[::-1]
        t = {k: decode_step_median(arts[k], steps) for k in order}
        for k in arts:
            ms[k].append(t[k] * 1e3)
        for k in ratios:
            ratios[k].append(t[k] / t["none"])
    return {"model": model_spec, "steps": steps, "alternations": alternations, "spin": "on",
            "step_ms_median": {k: float(np.median(v)) for k, v in ms.items()},
            **{f"{k}_over_none": float(np.median(r)) for k, r in ratios.items()},
            **{f"{k}_over_none_quartiles": np.percentile(r, [25, 75]).tolist() for k, r in ratios.items()},
            "quality_gate": {k: _gate(work / k) for k in arts},
            "file_mib": {k: sum((work / k / f).stat().st_size for f in ("model.onnx", "model.onnx.data")) / 2**20 for k in arts}}


def decode_step_median(s, steps: int) -> float:
    """Median seconds of `steps` greedy decode steps of Session `s` after a fixed 32-token prompt."""
    cache = s.new_cache(1, 32 + steps + 1)

    def run(ids):
        x = np.asarray([ids], np.int64)
        past = cache.length
        return s.forward(x, np.ones((1, past + x.shape[1]), np.int64), np.arange(past, past + x.shape[1])[None], cache)

    tok, times = int(run([(100 + i) % s.artifact.vocab_size for i in range(32)])[0].argmax()), []
    for _ in range(steps):
        t = time.perf_counter()
        tok = int(run([tok])[0].argmax())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _gate(art: Path) -> dict | None:
    """The export's quality gate of an artifact (held-out perplexity ratio and greedy agreement
    against the float model), from its manifest."""
    g = (json.loads((art / "manifest.json").read_text()).get("parity") or {}).get("quality_gate") or {}
    return {k: g[k] for k in ("ppl_ratio", "agreement")} if "ppl_ratio" in g else None


def _fmt_gate(d: dict, kind: str, key: str) -> str:
    g = (d.get("quality_gate") or {}).get(kind)
    return f"{g[key]:.3f}" if g else "-"


def report(res: dict) -> str:
    w = res["weights"]
    md = ["# Zero points: re-rounding Q4_1 blocks vs holding them exactly", "",
          f"Machine: {res['machine']}, {res['threads']} threads, onnxruntime {res['onnxruntime']}. Written by bench/zero_points.py.", "",
          f"## {w['model']}: int4 error of the projections ({w['tensors']} tensors)", "",
          f"Blocks of 32 on a Q4_1 grid (m + d·q, q in 0..15): {w['blocks_on_q4_1_grid']:,} of {w['blocks']:,}.", "",
          "| zero points | relative Frobenius error of the int4 weights |", "|---|---:|",
          f"| uint4 (the export's MatMulNBits format, RTN) | {w['rel_err_uint4_zp']:.4f} |",
          f"| float (−m/d: the Q4_1 block exactly) | {w['rel_err_float_zp']:.2e} |", "",
          f"## MatMulNBits time by zero-point type (K={K}, N={N}, block {BLOCK})", "",
          "| M | accuracy level | zero points | µs | × uint4 zero points |", "|---:|---:|---|---:|---:|"]
    for r in res["kernels"]:
        md.append(f"| {r['m']} | {r['accuracy_level']} | {r['zero_points']} | {r['us']:.1f} | {r['x_uint4']:.2f} |")
    d = res.get("decode")
    if d:
        q = d["uint4_over_none_quartiles"]
        kinds = [k for k in ("uint4", "none", "float") if k in d["step_ms_median"]]
        md += ["", f"## Decode of the whole int4 model ({d['model']}): zero-point forms", "",
               f"One process, the artifacts loaded together, {d['alternations']} alternations of {d['steps']} greedy steps "
               f"(threads spinning); ratio = a form's step time / the symmetric form's, same alternation. float = "
               f"symmetric codes plus an 8-bit per-block offset table (ExportConfig.float_zero_points).", "",
               "| zero points | median step ms | graph + weights MiB | quality gate: perplexity ratio | argmax agreement |",
               "|---|---:|---:|---:|---:|",
               *(f"| {k} | {d['step_ms_median'][k]:.2f} | {d['file_mib'][k]:.1f} | {_fmt_gate(d, k, 'ppl_ratio')} | "
                 f"{_fmt_gate(d, k, 'agreement')} |" for k in kinds), "",
               f"uint4 / none: {d['uint4_over_none']:.3f} (quartiles {q[0]:.3f}-{q[1]:.3f}): symmetric decodes "
               f"{d['uint4_over_none']:.2f}x as fast."]
        if "float_over_none" in d:
            fq = d["float_over_none_quartiles"]
            md.append(f"float / none: {d['float_over_none']:.3f} (quartiles {fq[0]:.3f}-{fq[1]:.3f}).")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--reps", type=int, default=2000, help="runs per timing at M = 1 (M = 512: a hundredth)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alternations", type=int, default=20, help="decode alternations of the two int4 artifacts")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.reps < 1 or a.threads < 1 or a.alternations < 2:
        raise SystemExit(f"--reps and --threads must be >= 1 and --alternations >= 2, got {a.reps}, {a.threads}, {a.alternations}")
    res = {"machine": platform.machine(), "threads": a.threads, "onnxruntime": ort.__version__,
           "weights": weight_errors(a.model), "kernels": kernels(a.reps, a.threads),
           "decode": decode_ab(a.model, a.threads, a.alternations)}
    write_results(a.out, "zero_points", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
