"""Do edgedelta's artifacts load in onnxruntime-genai and generate what `edgedelta run` does?

For each artifact: greedy tokens from edgedelta.runtime and from `onnxruntime_genai.Model(ART)`
(run in the peers' own venv, bench/peers_build.py: onnxruntime-genai needs transformers >= 5),
on the same prompt ids. onnxruntime-genai treats its pad token (SmolLM2: eos = pad = 2) in a
prompt as padding, so prompts hold none. Writes bench/results/genai_compat.json and .md.

    python bench/genai_compat.py ART [ART ...] [--tokens 32] [--prompts 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from peers_build import VENV_PY  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PROMPTS = ["The maintenance log for pump 3 says", "Write a Python function that returns the mean of a list.",
           "A conveyor belt stopped because", "The difference between a PLC and a microcontroller is"]

def quantize_label(export_config: dict) -> str:
    """'none', or the bits with the blocks' zero-point form: 'int4 (symmetric)', 'int4 (zero points)'."""
    q = export_config.get("quantize") or "none"
    if q == "none":
        return q
    return f"{q} ({'symmetric' if export_config.get('symmetric') else 'zero points'})"


GENAI_CHILD = r"""
import json, sys, numpy as np, onnxruntime_genai as og
art, prompts, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
m = og.Model(art)
out = []
for ids in prompts:
    p = og.GeneratorParams(m)
    p.set_search_options(do_sample=False, max_length=len(ids) + n)
    g = og.Generator(m, p)
    g.append_tokens(np.array(ids, dtype=np.int32))
    toks = []
    while not g.is_done() and len(toks) < n:
        g.generate_next_token()
        toks.append(int(g.get_next_tokens()[0]))
    out.append(toks)
print(json.dumps(out))
"""


def edgedelta_tokens(art: Path, prompts: list[list[int]], n: int) -> list[list[int]]:
    from edgedelta.runtime import Session, generate_ids

    s = Session.from_dir(art, provider="cpu", tokenizer=None)
    return [generate_ids(s, [ids], max_new_tokens=n)[0].token_ids for ids in prompts]


def genai_tokens(art: Path, prompts: list[list[int]], n: int) -> list[list[int]]:
    r = subprocess.run([str(VENV_PY), "-c", GENAI_CHILD, str(art), json.dumps(prompts), str(n)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS / "genai_compat")
    a = ap.parse_args()
    if not VENV_PY.exists():
        sys.exit(f"genai_compat: error: {VENV_PY} is missing; run python bench/peers_build.py --only genai first")
    from tokenizers import Tokenizer

    rows = []
    for art in a.artifacts:
        tok = Tokenizer.from_file(str(art / "tokenizer.json"))
        prompts = [tok.encode(p).ids for p in PROMPTS]
        m = json.loads((art / "manifest.json").read_text())
        row = {"artifact": art.name, "export_config": m["export_config"], "kv_update": m.get("io", {}).get("kv_update"),
               "compressed": bool(m.get("sharing"))}
        ours = edgedelta_tokens(art, prompts, a.tokens)
        try:
            theirs = genai_tokens(art, prompts, a.tokens)
        except RuntimeError as e:
            row.update(loaded=False, error=str(e))
        else:
            # index of the first differing token per prompt (None: identical)
            same = [None if x == y else next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
                    for x, y in zip(ours, theirs)]
            row.update(loaded=True, prompts=len(prompts), identical=sum(x == y for x, y in zip(ours, theirs)),
                       first_divergence=same, edgedelta=ours, genai=theirs)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("edgedelta", "genai", "export_config")}))
    out = {"tokens": a.tokens, "prompts": PROMPTS, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(a.out.with_suffix(".json"))
    lines = ["# onnxruntime-genai loads edgedelta artifacts", "",
             f"Greedy, {a.tokens} new tokens, {len(PROMPTS)} prompts; `onnxruntime_genai.Model(ART)` against `edgedelta.runtime`.", "",
             "| artifact | quantize | KV update | compressed | loads | identical prompts | first divergence |", "|---|---|---|---|---|---:|---|"]
    for r in rows:
        q = quantize_label(r["export_config"])
        if r["loaded"]:
            lines.append(f"| {r['artifact']} | {q} | {r['kv_update']} | {r['compressed']} | yes | {r['identical']}/{r['prompts']} | {r['first_divergence']} |")
        else:
            lines.append(f"| {r['artifact']} | {q} | {r['kv_update']} | {r['compressed']} | no: {r['error']} | - | - |")
    md = a.out.with_suffix(".md")
    md.with_suffix(".md.tmp").write_text("\n".join(lines) + "\n")
    md.with_suffix(".md.tmp").replace(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
