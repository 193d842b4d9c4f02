"""The quantized embedding lookup two ways, over ONE packed table that the tied LM head's
MatMulNBits also reads:

  dequantize   the exporter's graph (export/quantized_gather.py): Gather the looked-up rows of
               the packed codes and of the scales, unpack and dequantize them in a dozen
               small standard ops
  gbq          ONNX Runtime's GatherBlockQuantized (com.microsoft) reading the same 3-D packed
               table (N, blocks, block·bits/8) with quantize_axis = 2: one block per innermost
               row, so its scales must be (N, blocks, 1), which MatMulNBits refuses (it takes
               (N, blocks) or (N·blocks,)); a Reshape of the one scales initializer gives them,
               which ORT folds into a copy when the session loads. Uint zero points are
               unpacked into an (N, blocks, 1) initializer of their own (MatMulNBits packs two
               a byte).

The gbq graph is the exported graph with its lookup rewritten here (the exporter builds only
the dequantize form); both read the same model.onnx.data. Measured on the default model's
int4 exports (symmetric, and uint zero points):
  parity   the logits of a 64-token prompt, every position, both graphs
  decode   both loaded in one process, decoding in alternation (greedy, 32 steps after a
           32-token prompt, order reversed every alternation): median of per-alternation
           step-time ratios gbq/dequantize
  process  fresh processes, the forms alternating within a round (bench/arena.py's figures:
           64 decode steps, then a prefill of each `--prompts` length four times): peak RSS
           after decode, prefill tok/s, prefill peak RSS and RSS after the prefill, as
           same-round ratios

  python bench/embedding_lookup.py [--rounds 3] [--alternations 20] [--prompts 512 2048]

Writes bench/results/embedding_lookup.json and .md; artifacts in bench/_work/embedding_lookup/."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / "_work" / "embedding_lookup"
KINDS = {"int4": {"quantize": "int4", "symmetric": True}, "int4-zp": {"quantize": "int4", "symmetric": False}}
FORMS = ("dequantize", "gbq")
TABLE = "embed_tokens.weight"  # the exporter's names: codes, '.scales', '.zero_points'
SCOPE = "/embed/"  # node-name prefix of the lookup's ops


def gbq_graph(art: Path, out: Path) -> Path:
    """`out`: the artifact `art` with its embedding lookup as one GatherBlockQuantized (module
    docstring), the weight file hard-linked (or copied across file systems)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(art / "model.onnx", load_external_data=False)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    n_rows, n_blocks, row_bytes = inits[TABLE].dims  # (N, blocks, block·bits/8)
    lookup = [n for n in g.node if n.name.startswith(SCOPE)]
    produced = {o for n in lookup for o in n.output}
    read_after = {i for n in g.node if not n.name.startswith(SCOPE) for i in n.input}
    (rows_out,) = produced & read_after  # the (B, S, hidden) rows the first layer reads
    cfg = json.loads((art / "manifest.json").read_text())["export_config"]
    bits = cfg["embedding_bits"] or {"int4": 4, "int8": 8}[cfg["quantize"]]
    block = row_bytes * 8 // bits
    hidden = json.loads((art / "config.json").read_text())["hidden_size"]
    if n_blocks * block != hidden:  # the exporter pads K to whole blocks; GBQ's rows would carry the padding
        raise SystemExit(f"error: {art}: hidden size {hidden} is not a whole number of {block}-blocks; this rewrite needs it")
    gbq_in = [TABLE, "input_ids", "gbq.scales"]
    g.initializer.append(numpy_helper.from_array(np.array([n_rows, n_blocks, 1], np.int64), "gbq.scales_shape"))
    if TABLE + ".zero_points" in inits:  # (N, ceil(blocks·bits/8)) packed -> (N, blocks, 1), one a byte
        from edgedelta.export.quantize import _unpack_zp

        packed = _uint8_initializer(art, inits[TABLE + ".zero_points"])
        zp = _unpack_zp(packed, bits, n_rows, n_blocks).astype(np.uint8).reshape(n_rows, n_blocks, 1)
        g.initializer.append(numpy_helper.from_array(zp, "gbq.zero_points"))
        gbq_in.append("gbq.zero_points")
    nodes = [helper.make_node("Reshape", [TABLE + ".scales", "gbq.scales_shape"], ["gbq.scales"], name=SCOPE + "gbq/Reshape"),
             helper.make_node("GatherBlockQuantized", gbq_in, ["gbq.rows"], domain="com.microsoft", name=SCOPE + "gbq/Gather",
                              bits=bits, block_size=block, gather_axis=0, quantize_axis=2),  # (B, S, blocks, block)
             helper.make_node("Reshape", ["gbq.rows", "gbq.rows_shape"], [rows_out], name=SCOPE + "gbq/Rows")]  # (B, S, hidden)
    g.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "gbq.rows_shape"))
    rest = [n for n in g.node if not n.name.startswith(SCOPE)]
    del g.node[:]
    g.node.extend(nodes + rest)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in art.iterdir():
        if f.name == "model.onnx":
            continue
        try:
            os.link(f, out / f.name)
        except OSError:
            shutil.copy2(f, out / f.name)
    onnx.save(m, out / "model.onnx")
    return out


def _uint8_initializer(art: Path, t) -> np.ndarray:
    """A uint8 initializer of `art`'s graph, inline or in its external data file."""
    from onnx import numpy_helper

    ext = {e.key: e.value for e in t.external_data}
    if not ext:
        return numpy_helper.to_array(t)
    with open(art / ext["location"], "rb") as f:
        f.seek(int(ext.get("offset", 0)))
        return np.frombuffer(f.read(int(ext["length"])), np.uint8).reshape(tuple(t.dims))


def artifacts(model: str) -> dict[str, dict[str, Path]]:
    """kind -> form -> artifact dir: each kind exported once, its gbq graph beside it."""
    from arena import exports

    return {kind: {"dequantize": path, "gbq": gbq_graph(path, path.with_name(kind + "-gbq"))}
            for kind, path in exports(model, KINDS, WORK).items()}


def _session(path: Path, threads: int):
    from edgedelta.runtime import Session

    # verify=False: the manifest's checksums are those of the exported graph, not the rewritten one
    return Session.from_dir(path, provider="cpu", threads=threads, tokenizer=None, spin="on", verify=False)


def parity(forms: dict[str, Path], threads: int) -> float:
    """Largest |logit difference| between the forms over a 64-token prompt, every position."""
    logits = []
    for path in forms.values():
        s = _session(path, threads)
        ids = (np.arange(64, dtype=np.int64)[None] * 769 + 100) % s.artifact.vocab_size
        logits.append(s.forward(ids, np.ones((1, 64), np.int64), np.arange(64)[None], s.new_cache(1, 64), all_logits=True).copy())
    return float(np.abs(logits[0] - logits[1]).max())


def decode_ab(forms: dict[str, Path], threads: int, alternations: int, steps: int = 32) -> dict:
    """Both forms in one process, decoding in alternation: gbq/dequantize step-time ratios."""
    from zero_points import decode_step_median

    sessions = {f: _session(p, threads) for f, p in forms.items()}
    ratios, ms = [], {f: [] for f in FORMS}
    for i in range(alternations):
        t = {f: decode_step_median(sessions[f], steps) for f in (FORMS if i % 2 == 0 else FORMS[::-1])}
        for f in FORMS:
            ms[f].append(1e3 * t[f])
        ratios.append(t["gbq"] / t["dequantize"])
    return {"steps": steps, "alternations": alternations, "step_ms_median": {f: float(np.median(v)) for f, v in ms.items()},
            "gbq_over_dequantize": float(np.median(ratios)), "quartiles": np.percentile(ratios, [25, 75]).tolist()}


def processes(forms: dict[str, Path], rounds: int, prompt: int, threads: int) -> dict:
    """Fresh processes, the forms alternating within a round: bench/arena.py's figures each
    for a `prompt`-token prefill."""
    from arena import alternate

    rows = {f: [] for f in FORMS}
    for r in range(rounds):
        for f, row in alternate(FORMS, r, lambda f: [sys.executable, __file__, "--worker", str(forms[f]), str(prompt), str(threads)]).items():
            rows[f].append(row)
    metrics = list(rows["gbq"][0])
    return {"rows": rows, "median": {f: {m: float(np.median([x[m] for x in rows[f]])) for m in metrics} for f in FORMS},
            "gbq_over_dequantize": {m: float(np.median([a[m] / b[m] for a, b in zip(rows["gbq"], rows["dequantize"])]))
                                    for m in metrics}}


def report(res: dict) -> str:
    from summarize import embedding_lookup

    return "\n".join(["# Quantized embedding lookup: dequantizing Gather vs GatherBlockQuantized", "",
                      *embedding_lookup(res), "", "Written by `bench/embedding_lookup.py`; per-process figures in "
                      "`embedding_lookup.json`.", ""])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        from arena import process_figures

        art, prompt, threads = argv[1:4]
        print(json.dumps(process_figures(_session(Path(art), int(threads)), int(prompt))))
        return 0
    import onnxruntime as ort

    from arena import process_args, run_header
    from results_io import write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alternations", type=int, default=20)
    a = process_args(ap, argv)
    if a is None:
        return 2
    res = {**run_header(a, ort.__version__), "kinds": {}}
    for kind, forms in artifacts(a.model).items():
        print(f"{kind}: parity, decode A/B, {a.rounds} round(s) of processes", file=sys.stderr, flush=True)
        res["kinds"][kind] = {"max_abs_logit_diff": parity(forms, a.threads), "decode": decode_ab(forms, a.threads, a.alternations),
                              "process": {str(p): processes(forms, a.rounds, p, a.threads) for p in a.prompts}}
    write_results(a.out, "embedding_lookup", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
