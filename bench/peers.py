"""edgedelta's artifacts side by side with onnxruntime-genai and llama.cpp on SmolLM2-135M
(issue 24's targets). Every contender runs in a fresh process (bench/peers_worker.py), all of
them interleaved round by round, on the same prompt token ids, `--threads` threads, batch 1,
greedy:

  decode      tok/s of `--new-tokens` greedy steps after a `--prompt-tokens` prompt
  prefill     tok/s of one forward over a prompt of each `--prefill` length
  peak RSS    the worker's peak RSS (VmHWM) after load + decode (and after the prefills too)
  file        bytes of the model files on disk (graph + weights; tokenizer files not counted)
  perplexity  held-out text (edgedelta.data EVAL_DATASETS: python-docs, sotu-recent), the same
              windows for every contender, each scored from an empty cache, every position

The edgedelta contenders are data (EDGEDELTA below, or `--table FILE.json`): a label, the model
('original' = the default model, 'compressed' = a DeltaLLM-compressed dir), ExportConfig fields
and Session.from_dir kwargs. A field this edgedelta does not have skips that row with a note.
Peers come from bench/peers_build.py (run it first). Ratios are taken round by round (same-
round pairs, median over rounds) against onnxruntime-genai int4 and fp32; the issue's targets
are computed from the JSON (TARGETS) and marked met/missed with their numbers.

  python bench/peers_build.py                     # once: builds the peers (~15 min)
  python bench/peers.py                           # 3 rounds (~25-35 min on 2 quiet cores)
  python bench/peers.py --quick                   # 1 round, fewer tokens (~5 min after exports)
  python bench/peers.py --only 'edgedelta-int4,genai-int4' --rounds 5
  python bench/peers.py --provider cuda --no-ppl  # a GPU host: EDGEDELTA_CUDA against genai's CUDA int4
Writes bench/results/peers.json, peers.md and peers.png (a --quick run: bench/_work/peers/quick/;
--provider cuda: peers_cuda.*, speed targets only, TARGETS_CUDA).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers_build  # noqa: E402  (paths and versions of the peers; stdlib only)

RESULTS = ROOT / "bench" / "results"
WORK = peers_build.WORK
WORKER = Path(__file__).resolve().parent / "peers_worker.py"
ARTIFACTS = WORK / "artifacts"

# ---- the contenders ----------------------------------------------------------------------------
# edgedelta rows: label, model ('original' | 'compressed'), ExportConfig fields, Session.from_dir
# kwargs, role (the targets read a row by its role; roles are unique). A new export option is one row.
EDGEDELTA: list[tuple[str, str, dict, dict, str | None]] = [
    # the roles run with ORT's threads spinning, as onnxruntime-genai does by default and as
    # `spin auto` does on a device whose cores are idle; the spin-off rows show what it is worth
    ("edgedelta-fp32", "original", {"dtype": "fp32"}, {"spin": "off"}, None),
    ("edgedelta-fp32-spin", "original", {"dtype": "fp32"}, {"spin": "on"}, "original-fp32"),
    ("edgedelta-int4", "original", {"quantize": "int4", "accuracy_level": 4}, {"spin": "off"}, None),
    ("edgedelta-int4-spin", "original", {"quantize": "int4", "accuracy_level": 4}, {"spin": "on"}, "original-int4"),
    ("edgedelta-int8-spin", "original", {"quantize": "int8", "accuracy_level": 4}, {"spin": "on"}, None),
    ("edgedelta-compressed-fp32-spin", "compressed", {"dtype": "fp32"}, {"spin": "on"}, "compressed-fp32"),
    ("edgedelta-compressed-int4", "compressed", {"quantize": "int4", "accuracy_level": 4}, {"spin": "off"}, None),
    ("edgedelta-compressed-int4-spin", "compressed", {"quantize": "int4", "accuracy_level": 4}, {"spin": "on"}, "compressed-int4"),
    # quantized rows export with ExportConfig.symmetric auto: symmetric blocks (no zero points,
    # faster single-token MatMulNBits) where the artifact passes its quality gate, else uint zero
    # points (the manifest's symmetric_choice, kept in this JSON's exports); this row is the
    # zero-point form of the original, the quality-first choice, beside it
    # block 32 (the default is 64 for int4: ExportConfig.block_size): what the larger block costs in perplexity and saves in time
    ("edgedelta-int4-b32-spin", "original", {"quantize": "int4", "accuracy_level": 4, "block_size": 32}, {"spin": "on"}, None),
    # the embedding table and LM head at 8 bits (the GGUF's Q8_0 table held), projections as the default
    ("edgedelta-int4-e8-spin", "original", {"quantize": "int4", "accuracy_level": 4, "embedding_bits": 8}, {"spin": "on"}, None),
    ("edgedelta-int4-zp-spin", "original", {"quantize": "int4", "accuracy_level": 4, "symmetric": False}, {"spin": "on"}, None),
    # the value projection at 8 bits (ExportConfig.value_bits; the default keeps it at the projections' 4,
    # q/k/v one fused MatMulNBits): q/k fused and v a second MatMulNBits, what 8 bits take off the perplexity
    ("edgedelta-int4-v8-spin", "original", {"quantize": "int4", "accuracy_level": 4, "value_bits": 8}, {"spin": "on"}, None),
    ("edgedelta-compressed-int4-v8-spin", "compressed", {"quantize": "int4", "accuracy_level": 4, "value_bits": 8},
     {"spin": "on"}, None),
    # the embedding table / LM head in blocks of 32 (ExportConfig.embedding_block_size; the default
    # takes the projections' 64): part of the table's 4-bit loss back, at a cost in decode speed
    ("edgedelta-int4-t32-spin", "original", {"quantize": "int4", "accuracy_level": 4, "embedding_block_size": 32}, {"spin": "on"}, None),
    ("edgedelta-compressed-int4-t32-spin", "compressed", {"quantize": "int4", "accuracy_level": 4, "embedding_block_size": 32},
     {"spin": "on"}, None),
    # the default int4 form without block-scale tuning (ExportConfig.tune_steps; the default tunes
    # 50 steps): the same codes, bytes and graph, what the tuning takes off the perplexity
    ("edgedelta-int4-untuned-spin", "original", {"quantize": "int4", "accuracy_level": 4, "tune_steps": 0}, {"spin": "on"}, None),
    ("edgedelta-compressed-int4-untuned-spin", "compressed", {"quantize": "int4", "accuracy_level": 4, "tune_steps": 0},
     {"spin": "on"}, None),
    # float zero points (ExportConfig.float_zero_points: a GGUF's Q4_1 projections held exactly) with the
    # embedding/LM head at 4 bits, and at 8 (the GGUF's Q8_0 table held too): quality against decode speed
    ("edgedelta-int4-fzp-spin", "original", {"quantize": "int4", "accuracy_level": 4, "float_zero_points": True}, {"spin": "on"}, None),
    ("edgedelta-int4-fzp-e8-spin", "original", {"quantize": "int4", "accuracy_level": 4, "float_zero_points": True, "embedding_bits": 8},
     {"spin": "on"}, None),
    ("edgedelta-compressed-int4-fzp-spin", "compressed", {"quantize": "int4", "accuracy_level": 4, "float_zero_points": True},
     {"spin": "on"}, None),
]
# `--provider cuda` (a GPU host): the same rows' CUDA forms, speed only. ONNX Runtime's CUDA
# GroupQueryAttention is fp16/bf16 only, so activations are fp16. int4 in the CPU default's
# form (symmetric blocks of 64, the table shared by lookup and head) with GPTQ codes untuned
# and no parity checks or quality gate: the graph and its bytes are the tuned artifact's,
# decode speed does not depend on the code values, and tuning and the gate would take
# minutes of a GPU lease (their quality is the CPU run's). Each with and without CUDA graphs.
_CUDA_INT4 = {"dtype": "fp16", "quantize": "int4", "symmetric": True, "tune_steps": 0, "validate": False}
EDGEDELTA_CUDA: list[tuple[str, str, dict, dict, str | None]] = [
    ("edgedelta-fp16", "original", {"dtype": "fp16"}, {}, None),
    ("edgedelta-fp16-graph", "original", {"dtype": "fp16"}, {"cuda_graph": True}, "original-fp16"),
    ("edgedelta-int4", "original", _CUDA_INT4, {}, None),
    ("edgedelta-int4-graph", "original", _CUDA_INT4, {"cuda_graph": True}, "original-int4"),
    ("edgedelta-compressed-int4", "compressed", _CUDA_INT4, {}, None),
    ("edgedelta-compressed-int4-graph", "compressed", _CUDA_INT4, {"cuda_graph": True}, "compressed-int4"),
]
# peers: label -> (engine, build key in bench/_work/peers/peers.json, role, provider, session)
PEERS: dict[str, tuple[str, str, str | None, str, dict]] = {
    "genai-int4": ("genai", "genai-int4", "genai-int4", "cpu", {}),
    "genai-int4-kquant": ("genai", "genai-int4-kquant", None, "cpu", {}),
    "genai-int8": ("genai", "genai-int8", None, "cpu", {}),
    "genai-fp32": ("genai", "genai-fp32", "genai-fp32", "cpu", {}),
    "llama.cpp-Q4_1": ("llama", "Q4_1", "llama-q4_1", "cpu", {}),
    "llama.cpp-Q8_0": ("llama", "Q8_0", None, "cpu", {}),
    "llama.cpp-F32": ("llama", "F32", None, "cpu", {}),
    "genai-cuda-int4": ("genai", "genai-cuda-int4", None, "cuda", {}),
    "genai-cuda-int4-graph": ("genai", "genai-cuda-int4", "genai-int4", "cuda", {"cuda_graph": True}),
}
REFERENCES = ("genai-int4", "genai-fp32")  # roles the md table gives ratios against
# how each engine runs besides the thread count (peers_worker.py), stated in the results
ENGINE_SETTINGS = {
    "edgedelta": "Session.from_dir(provider=P, threads=N, **row kwargs): the runtime's defaults otherwise",
    "genai": "onnxruntime-genai Model/Generator, provider P, intra-op threads N, inter-op 1, the builder's other session "
             "settings (ORT thread spinning at its default, on); greedy via min_length = max_length (EOS never picked)",
    "llama": "llama-cpp-python binding, n_threads = n_threads_batch = N, n_ctx = the longest sequence of the run, n_batch = n_ubatch = 512, KV cache f16 (its default)",
}


@dataclass
class Contender:
    label: str
    engine: str  # edgedelta | genai | llama
    role: str | None = None
    model: str | None = None  # edgedelta: original | compressed
    export: dict = field(default_factory=dict)  # edgedelta: ExportConfig fields
    session: dict = field(default_factory=dict)  # edgedelta: Session.from_dir kwargs
    peer: str | None = None  # peers: build key
    artifact: str | None = None  # edgedelta: an already-exported artifact to measure as is (no export)
    path: str | None = None  # the model the worker loads (set by prepare)
    skip: str | None = None  # why it is not measured


ROW_KEYS = ("label", "model", "export", "session", "role", "artifact")


def parse_table(rows: list) -> list[Contender]:
    """edgedelta rows as tuples (label, model, export, session[, role]) or dicts with the keys
    ROW_KEYS ('artifact': an exported artifact dir measured as is, instead of `export`).
    Raises ValueError naming the bad row (a user error: labels unique, model known, dicts)."""
    out, seen, roles = [], set(), set()
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            d = dict(row)
        elif isinstance(row, (list, tuple)) and len(row) in (4, 5):
            d = dict(zip(("label", "model", "export", "session", "role"), row))
        else:
            raise ValueError(f"table row {i} must be (label, model, export, session[, role]) or a dict, got {row!r}")
        unknown = set(d) - set(ROW_KEYS)
        if unknown:
            raise ValueError(f"table row {i}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(ROW_KEYS)}")
        label = d.get("label")
        if not isinstance(label, str) or not label:
            raise ValueError(f"table row {i}: label must be a non-empty string, got {label!r}")
        if label in seen:
            raise ValueError(f"table row {i}: duplicate label '{label}'")
        if d.get("model") not in ("original", "compressed"):
            raise ValueError(f"table row '{label}': model must be 'original' or 'compressed', got {d.get('model')!r}")
        for k in ("export", "session"):
            if not isinstance(d.get(k, {}), dict):
                raise ValueError(f"table row '{label}': {k} must be a dict of fields, got {d.get(k)!r}")
        if d.get("artifact") is not None and d.get("export"):
            raise ValueError(f"table row '{label}': give either export fields or an artifact, not both")
        role = d.get("role")
        if role is not None and role in roles:
            raise ValueError(f"table row '{label}': role '{role}' is already given to another row")
        seen.add(label)
        roles.add(role)
        out.append(Contender(label, "edgedelta", role, d["model"], dict(d.get("export") or {}), dict(d.get("session") or {}),
                             artifact=d.get("artifact")))
    return out


def peer_contenders(provider: str = "cpu") -> list[Contender]:
    return [Contender(label, engine, role, session=dict(session), peer=key)
            for label, (engine, key, role, prov, session) in PEERS.items() if prov == provider]


def select(contenders: list[Contender], only: str | None) -> list[Contender]:
    """Keep the contenders whose label matches one of the comma-separated names/globs in `only`."""
    if not only:
        return contenders
    pats = [p.strip() for p in only.split(",") if p.strip()]
    labels = [c.label for c in contenders]
    for p in pats:
        if not fnmatch.filter(labels, p):
            raise ValueError(f"--only: '{p}' matches no contender; known: {', '.join(labels)}")
    return [c for c in contenders if any(fnmatch.fnmatch(c.label, p) for p in pats)]


# ---- edgedelta: API checks and cached exports -----------------------------------------------------
def check_api(c: Contender, export_fields: set[str], session_params: set[str]) -> str | None:
    """The reason this row cannot run on this edgedelta (a field or kwarg it does not have), or None."""
    bad = sorted(set(c.export) - export_fields)
    if bad:
        return f"ExportConfig has no field(s) {', '.join(bad)}"
    bad = sorted(set(c.session) - session_params - {"threads", "provider"})
    if bad:
        return f"Session.from_dir has no parameter(s) {', '.join(bad)}"
    if {"threads", "provider"} & set(c.session):
        return "threads and provider are set by the benchmark (--threads, --provider), not per row"
    return None


def artifact_key(model_id: str, export: dict, revision, code: str = "") -> str:
    """Cache key of an exported artifact: the model, the fields, the graph revision and the
    exporter's source (`code`: an exporter edited without a revision bump still re-exports)."""
    blob = json.dumps({"model": model_id, "export": export, "graph_revision": revision, "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def exporter_code_hash() -> str:
    """sha256 over the exporter's Python sources (export/*.py)."""
    h = hashlib.sha256()
    for f in sorted((ROOT / "export").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def model_identity(model_dir: Path) -> str:
    """What the export depends on in a model dir: its manifest (sha256 of every file) when it has one."""
    m = model_dir / "manifest.json"
    return hashlib.sha256(m.read_bytes()).hexdigest() if m.is_file() else str(model_dir.resolve())


def prepare_edgedelta(cs: list[Contender], sources: dict[str, Path | None], reexport: bool, root: Path = ARTIFACTS) -> dict:
    """Export each distinct (model, ExportConfig) once into root/<key>/ (reused while the model,
    the fields and GRAPH_REVISION are unchanged). sources: 'original'/'compressed' -> model dir.
    Sets c.path, or c.skip with the reason."""
    import dataclasses
    import gc

    from tqdm.auto import tqdm

    # imported here, not at the top: --list and bad arguments answer without loading torch
    from edgedelta.export import GRAPH_REVISION, ExportConfig, export_onnx
    from edgedelta.runtime import Session

    fields = {f.name for f in dataclasses.fields(ExportConfig)}
    params = set(inspect.signature(Session.from_dir).parameters) - {"cls", "path"}
    notes = {}
    todo = []
    for c in cs:
        c.skip = check_api(c, fields, params)
        if c.skip is None and c.artifact is not None:
            if (Path(c.artifact) / "manifest.json").is_file():
                c.path = c.artifact
                man = json.loads((Path(c.artifact) / "manifest.json").read_text())
                notes[c.artifact] = {"model": c.model, "labels": [c.label], "given_artifact": True,
                                     **{k: man.get(k) for k in ("graph_revision", "export_config", "symmetric_choice", "io", "parity")}}
            else:
                c.skip = f"artifact '{c.artifact}' has no manifest.json"
            continue
        if c.skip is None and sources.get(c.model) is None:
            c.skip = "no compressed model (pass --compressed DIR or run bench/peers_build.py)"
        if c.skip is None:
            try:
                ExportConfig(**c.export)
            except Exception as e:  # ConfigError for a bad value; anything else is reported as is
                c.skip = f"ExportConfig({c.export}) refused: {e}"
        if c.skip is None:
            todo.append(c)
    by_key: dict[str, list[Contender]] = {}
    code = exporter_code_hash()
    for c in todo:
        key = artifact_key(model_identity(sources[c.model]), c.export, GRAPH_REVISION, code)
        by_key.setdefault(key, []).append(c)
    for key, group in tqdm(by_key.items(), desc="edgedelta exports", disable=not by_key):
        c0 = group[0]
        out = root / key
        if reexport or not (out / "manifest.json").is_file():
            try:
                export_onnx(str(sources[c0.model]), ExportConfig(**c0.export), out, force=True)
            except Exception as e:  # a failed export (parity, audit, a bug) skips its rows, named
                for c in group:
                    c.skip = f"export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                continue
            finally:
                gc.collect()
        for c in group:
            c.path = str(out)
        man = json.loads((out / "manifest.json").read_text())  # what the exporter actually did, defaults filled in
        notes[key] = {"model": c0.model, "source": str(sources[c0.model]), "export": c0.export, "labels": [c.label for c in group],
                      "graph_revision": man.get("graph_revision"), "export_config": man.get("export_config"),
                      "symmetric_choice": man.get("symmetric_choice"), "io": man.get("io"), "parity": man.get("parity"),
                      "exporter_code_sha256": code}
    return notes


def prepare_peers(cs: list[Contender], manifest: dict, peers_root: Path | None = None) -> None:
    """Set each peer's model path from peers_build's manifest, or peers_root/<build key> (the
    models carried to a host where peers_build did not run)."""
    for c in cs:
        if peers_root is not None:
            p = str(peers_root / c.peer)
        elif c.engine == "genai":
            p = manifest.get("genai", {}).get(c.peer, {}).get("dir")
        else:
            p = manifest.get("gguf", {}).get(c.peer, {}).get("path")
        if not p or not Path(p).exists():
            c.skip = f"peer '{c.peer}' not built (run python bench/peers_build.py)"
        else:
            c.path = p


def file_mib(c: Contender) -> float:
    """Model files on disk: the graph and its weights (ONNX) or the GGUF; tokenizer files excluded."""
    p = Path(c.path)
    if p.is_file():
        return p.stat().st_size / 2**20
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and (f.suffix == ".onnx" or f.name.endswith((".onnx.data", ".data")))) / 2**20


# ---- tokens: the same ids for every contender -------------------------------------------------------
def make_tokens(prompt_tokens: int, prefill: list[int], windows_per_set: int, window: int) -> dict:
    """Prompt and prefill ids from the start of sotu-recent; perplexity windows from each held-out
    set (python-docs, sotu-recent) packed as edgedelta's perplexity protocol does (documents joined
    with EOS, consecutive non-overlapping windows of `window` tokens)."""
    from edgedelta.data.text import EVAL_DATASETS, dataset_texts, pack, tokenize_stream
    from edgedelta.models.loading import ensure_default_model_dir, load_tokenizer

    tok = load_tokenizer(ensure_default_model_dir())
    streams = {name: tokenize_stream(tok, dataset_texts(name)) for name in EVAL_DATASETS}
    head = streams["sotu-recent"]
    need = max([prompt_tokens, *prefill])
    if head.numel() < need:
        raise ValueError(f"held-out text has {head.numel()} tokens, fewer than {need}")
    wins, names = [], []
    for name in EVAL_DATASETS:
        rows = pack(streams[name], window, windows_per_set * window)[:windows_per_set]
        wins += rows.tolist()
        names += [name] * rows.shape[0]
    return {"prompt": head[:prompt_tokens].tolist(), "prefill": {str(n): head[:n].tolist() for n in prefill},
            "ppl_windows": wins, "ppl_window_sets": names, "ppl_text": list(EVAL_DATASETS), "window": window}


# ---- running workers -------------------------------------------------------------------------------
def worker_command(c: Contender, manifest: dict, peer_python: str | None = None) -> tuple[list[str], dict]:
    env = dict(os.environ)
    if c.engine == "edgedelta":
        return [sys.executable, str(WORKER)], env
    py = peer_python or manifest.get("venv", {}).get("python", str(peers_build.VENV_PY))
    if c.engine == "llama":
        env["PYTHONPATH"] = manifest.get("llama.cpp", {}).get("python_path", str(peers_build.LLAMA_PY))
    return [py, str(WORKER)], env


def run_worker(c: Contender, manifest: dict, mode: str, run_dir: Path, opts: dict, timeout: float) -> dict:
    """One fresh process measuring `c`; its JSON result, or {'error': ...} with the stderr tail."""
    tag = f"{c.label}.{mode}.{time.time_ns()}"
    spec = {"engine": c.engine, "path": c.path, "session": c.session, "mode": mode, **opts}
    spec_path, out_path = run_dir / f"{tag}.spec.json", run_dir / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    cmd, env = worker_command(c, manifest, opts.get("peer_python"))
    env["OMP_NUM_THREADS"] = str(opts["threads"])
    try:
        p = subprocess.run(cmd + [str(spec_path), str(out_path)], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode or not out_path.is_file():
        tail = (p.stderr or "").strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)}
    res = json.loads(out_path.read_text())
    spec_path.unlink()
    out_path.unlink()
    return res


def llama_bench(c: Contender, manifest: dict, threads: int, prefill: list[int], new_tokens: int, timeout: float) -> dict:
    """llama.cpp's own llama-bench on the same GGUF: a cross-check of the binding's figures (its
    decode test starts from an empty context, not after the prompt; one repetition)."""
    exe = Path(manifest.get("llama.cpp", {}).get("bin", str(peers_build.LLAMA_BIN))) / "llama-bench"
    cmd = [str(exe), "-m", c.path, "-t", str(threads), "-p", ",".join(map(str, prefill)), "-n", str(new_tokens), "-r", "1", "-o", "json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rows = json.loads(p.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    out = {"command": " ".join(cmd[1:]).replace(c.path, Path(c.path).name)}
    for r in rows:
        key = f"decode{r['n_gen']}" if r.get("n_gen") else f"prefill{r['n_prompt']}"
        out[key] = r.get("avg_ts")
    return out


def round_order(labels: list[str], r: int) -> list[str]:
    """Round r starts r positions further along, so no contender always runs first or last."""
    k = r % len(labels) if labels else 0
    return labels[k:] + labels[:k]


# ---- aggregation, ratios, targets ------------------------------------------------------------------
def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rounds: dict[str, list[dict]], ppl: dict[str, dict], files: dict[str, float], prefill: list[int]) -> dict:
    """Per contender: medians over rounds of decode/prefill tok/s and peak RSS, plus file MiB and ppl."""
    out = {}
    for label in set(rounds) | set(ppl) | set(files):
        ok = [r for r in rounds.get(label, []) if "error" not in r]
        s = {"rounds_ok": len(ok), "rounds": len(rounds.get(label, [])), "file_mib": files.get(label)}
        s["decode_tps"] = _med([r["decode"]["tokens_per_s"] for r in ok])
        s["prefill_tps"] = {str(n): _med([r["prefill"].get(str(n), {}).get("tokens_per_s") for r in ok]) for n in prefill}
        s["peak_rss_mib"] = _med([r["rss_peak_decode_mib"] for r in ok])
        s["peak_rss_prefill_mib"] = _med([r["rss_peak_all_mib"] for r in ok])
        s["load_s"] = _med([r["load_s"] for r in ok])
        p = ppl.get(label, {})
        s["ppl"] = p.get("ppl")
        errors = [r["error"] for r in rounds.get(label, []) if "error" in r] + ([p["error"]] if "error" in p else [])
        if errors:
            s["errors"] = errors
        out[label] = s
    return out


def round_ratios(rounds: dict[str, list[dict]], a: str, b: str, metric) -> list[float]:
    """metric(a's round r) / metric(b's round r) for each round both measured without error."""
    rs = []
    for ra, rb in zip(rounds.get(a, []), rounds.get(b, [])):
        if "error" in ra or "error" in rb:
            continue
        x, y = metric(ra), metric(rb)
        if x is not None and y:
            rs.append(x / y)
    return rs


def paired_ratio(rounds: dict[str, list[dict]], a: str, b: str, metric) -> float | None:
    """Median over rounds of metric(a's round r) / metric(b's round r): same-round pairs only."""
    rs = round_ratios(rounds, a, b, metric)
    return statistics.median(rs) if rs else None


METRICS = {  # name -> (round metric or None for a per-contender value, summary key)
    "decode": (lambda r: r["decode"]["tokens_per_s"], "decode_tps"),
    "prefill32": (lambda r: r["prefill"].get("32", {}).get("tokens_per_s"), None),
    "prefill512": (lambda r: r["prefill"].get("512", {}).get("tokens_per_s"), None),
    "rss": (None, "peak_rss_mib"),
    "file": (None, "file_mib"),
    "ppl": (None, "ppl"),
}


def ratio(metric: str, a: str, b: str, rounds: dict, summary: dict) -> float | None:
    """a/b for `metric`: speed from same-round pairs; RSS, file size and perplexity from the summary."""
    per_round, key = METRICS[metric]
    if per_round is not None:
        return paired_ratio(rounds, a, b, per_round)
    x, y = summary.get(a, {}).get(key), summary.get(b, {}).get(key)
    return x / y if x is not None and y else None


# The targets: (text, metric, numerator role, denominator role, op, threshold)
TARGETS = [
    ("compressed int4 decode ≥ 1.0× genai int4", "decode", "compressed-int4", "genai-int4", ">=", 1.0),
    ("original int4 decode ≥ 1.05× genai int4", "decode", "original-int4", "genai-int4", ">=", 1.05),
    ("compressed int4 file ≤ 0.90× genai int4", "file", "compressed-int4", "genai-int4", "<=", 0.90),
    ("compressed int4 peak RSS ≤ 0.90× genai int4", "rss", "compressed-int4", "genai-int4", "<=", 0.90),
    ("fp32 decode ≥ 1.0× genai fp32", "decode", "original-fp32", "genai-fp32", ">=", 1.0),
    ("int4 prefill@32 ≥ 1.0× genai int4", "prefill32", "original-int4", "genai-int4", ">=", 1.0),
    ("int4 prefill@512 ≥ 1.0× genai int4", "prefill512", "original-int4", "genai-int4", ">=", 1.0),
    ("fp32 prefill@32 ≥ 1.0× genai fp32", "prefill32", "original-fp32", "genai-fp32", ">=", 1.0),
    ("fp32 prefill@512 ≥ 1.0× genai fp32", "prefill512", "original-fp32", "genai-fp32", ">=", 1.0),
    ("int4 perplexity ≤ 1.05× float", "ppl", "original-int4", "original-fp32", "<=", 1.05),
    ("compressed int4 perplexity ≤ 1.05× its float", "ppl", "compressed-int4", "compressed-fp32", "<=", 1.05),
    ("int4 perplexity below genai int4's", "ppl", "original-int4", "genai-int4", "<", 1.0),
    ("int4 perplexity below llama.cpp Q4_1's", "ppl", "original-int4", "llama-q4_1", "<", 1.0),
    ("compressed/original int4 decode ≥ 0.95", "decode", "compressed-int4", "original-int4", ">=", 0.95),
]
# On a GPU the host's RSS and the CPU's perplexity targets do not apply: speed only.
TARGETS_CUDA = [t for t in TARGETS if t[1] in ("decode", "prefill32", "prefill512") and "fp32" not in t[2]]
OPS = {">=": lambda x, t: x >= t, "<=": lambda x, t: x <= t, "<": lambda x, t: x < t, ">": lambda x, t: x > t}


def evaluate_targets(roles: dict[str, str], rounds: dict, summary: dict, targets=TARGETS) -> list[dict]:
    """Each target with its measured ratio and met (True/False) or None with the reason it was not measured."""
    out = []
    for text, metric, num, den, op, thr in targets:
        row = {"target": text, "metric": metric, "numerator": roles.get(num), "denominator": roles.get(den), "op": op,
               "threshold": thr, "value": None, "met": None}
        if row["numerator"] is None or row["denominator"] is None:
            row["note"] = f"no contender with role {num if row['numerator'] is None else den}"
        else:
            row["value"] = ratio(metric, row["numerator"], row["denominator"], rounds, summary)
            if row["value"] is None:
                row["note"] = "not measured (skipped or failed)"
            else:
                row["met"] = bool(OPS[op](row["value"], thr))
        out.append(row)
    return out


def greedy_agreement(rounds: dict[str, list[dict]], ref: str | None) -> dict[str, int]:
    """Leading greedy tokens (first round) equal to the reference contender's."""
    if not ref or not rounds.get(ref) or "error" in rounds[ref][0]:
        return {}
    base = rounds[ref][0]["decode"]["token_ids"]
    out = {}
    for label, rs in rounds.items():
        r = next((x for x in rs if "error" not in x), None)
        if r is None:
            continue
        ids = r["decode"]["token_ids"]
        n = 0
        while n < min(len(ids), len(base)) and ids[n] == base[n]:
            n += 1
        out[label] = n
    return out


# ---- report ------------------------------------------------------------------------------------------
def _f(x, fmt="{:.1f}") -> str:
    return "—" if x is None else fmt.format(x)


def render_markdown(res: dict) -> str:
    """The results as a markdown page: setup, one table of every contender, ratios, targets, skips."""
    cfg, summ, roles = res["config"], res["summary"], res["roles"]
    refs = [(r, roles.get(r)) for r in REFERENCES]
    provider = cfg.get("provider", "cpu")
    if provider == "cpu":
        lines = [f"# edgedelta vs onnxruntime-genai and llama.cpp ({res['model']})", ""]
    else:
        lines = [f"# edgedelta vs onnxruntime-genai on {provider.upper()} ({res['model']}, {res['machine'].get('gpu', '')})", ""]
    if cfg.get("quick"):
        lines += ["**A `--quick` smoke run (1 round, fewer tokens): not the benchmark's figures.**", ""]
    lines += [f"{cfg['rounds']} round(s), contenders interleaved, each in a fresh process; provider {provider}, "
              f"{cfg['threads']} threads, batch 1, "
              f"greedy; decode: {cfg['new_tokens']} tokens after a {cfg['prompt_tokens']}-token prompt; prefill: "
              f"{', '.join(map(str, cfg['prefill']))} tokens; the same token ids for all. "
              + (f"Perplexity: {res['tokens']['ppl_scored_positions']} positions in {res['tokens']['ppl_windows']} windows of "
                 f"{res['tokens']['window']} tokens of held-out text ({', '.join(res['tokens']['ppl_text'])}), each window from "
                 f"an empty cache, every position after the first scored, for every contender. " if cfg.get("ppl", True) else
                 "No perplexity in this run. ")
              + f"Speed figures are medians over "
              f"rounds; ratios are medians of same-round ratios. Peak RSS: the worker process's VmHWM after load and "
              f"decode. MiB = 2^20 bytes. Load average (1, 5, 15 min) at start: {res['machine'].get('loadavg_start')}.", ""]
    lines += [f"- {k}: {v}" for k, v in res.get("engine_settings", {}).items()] + ["",
              "| contender | decode tok/s | prefill@" + " tok/s | prefill@".join(map(str, cfg["prefill"])) + " tok/s "
              "| peak RSS MiB | file MiB | perplexity | " + " | ".join(f"decode ×{r}" for r, _ in refs) + " | greedy = fp32 |",
              "|---|" + "---:|" * (5 + len(cfg["prefill"]) + len(refs))]
    for label in res["order"]:
        s = summ.get(label)
        if s is None:
            continue
        tag = f"**{label}**" if label in roles.values() else label
        rr = [_f(ratio("decode", label, ref, res["rounds"], summ), "{:.2f}") if ref else "—" for _, ref in refs]
        lines.append(f"| {tag} | {_f(s['decode_tps'])} | " + " | ".join(_f(s["prefill_tps"].get(str(n))) for n in cfg["prefill"])
                     + f" | {_f(s['peak_rss_mib'], '{:.0f}')} | {_f(s['file_mib'])} | {_f(s['ppl'], '{:.3f}')} | "
                     + " | ".join(rr) + f" | {res['greedy_agreement'].get(label, '—')} |")
    lines += ["", "Bold rows carry a role the targets read (" + ", ".join(f"{k} = {v}" for k, v in sorted(roles.items())) + ").",
              "'greedy = fp32': leading decode tokens equal to the fp32 reference's (onnxruntime-genai's runs forbid EOS "
              "through min_length; the others ignore EOS).", "", "## Targets (issue 24)", "",
              "| target | measured | met |", "|---|---:|---|"]
    for t in res["targets"]:
        met = "—" if t["met"] is None else ("met" if t["met"] else "**missed**")
        val = _f(t["value"], "{:.3f}×") if t["value"] is not None else t.get("note", "—")
        lines.append(f"| {t['target']} | {val} | {met} |")
    if res["skipped"]:
        lines += ["", "## Not measured", ""] + [f"- {k}: {v}" for k, v in res["skipped"].items()]
    errs = {k: v["errors"] for k, v in summ.items() if v.get("errors")}
    if errs:
        lines += ["", "## Failed runs", ""] + [f"- {k}: {'; '.join(v)}" for k, v in errs.items()]
    if res.get("llama_bench"):
        lines += ["", "llama.cpp's own `llama-bench` on the same files (one repetition; its decode starts from an empty "
                  "context), as a check on the binding's figures:", ""]
        for k, v in res["llama_bench"].items():
            lines.append(f"- {k}: " + (v["error"] if "error" in v else
                                       ", ".join(f"{m} {x:.1f} tok/s" for m, x in v.items() if m != "command" and x is not None)))
    lines += ["", "## How the peers were built", ""]
    for k, v in res["peers"].get("genai", {}).items():
        lines.append(f"- {k}: `{v['builder_command']}` (onnxruntime-genai {(res['versions'].get('peers_venv') or {}).get('onnxruntime-genai')})")
    for k, v in res["peers"].get("gguf", {}).items():
        lines.append(f"- llama.cpp {k}: {v['source']}")
    lc = res["peers"].get("llama.cpp", {})
    if lc:
        on = [k for k, v in lc.get("cmake_flags", {}).items() if k.startswith("GGML_") and v == "ON"]
        lines.append(f"- llama.cpp from llama-cpp-python {lc.get('llama_cpp_python')}'s vendored sources, GGML_NATIVE=OFF, "
                     f"AMX off, on: {', '.join(on)}; measured through its Python binding (same protocol as the others)")
    lines += ["", f"Written by `bench/peers.py`; raw measurements, versions and options in `{res['json_name']}`.", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Decode tok/s against peak RSS, one point per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = {"edgedelta": "tab:blue", "genai": "tab:orange", "llama": "tab:green"}
    for label in res["order"]:
        s = res["summary"].get(label, {})
        if s.get("decode_tps") is None or s.get("peak_rss_mib") is None:
            continue
        eng = res["engines"][label]
        ax.scatter(s["peak_rss_mib"], s["decode_tps"], color=colors[eng], s=30)
        ax.annotate(label, (s["peak_rss_mib"], s["decode_tps"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    for eng, col in colors.items():
        ax.scatter([], [], color=col, label=eng)
    ax.set_xlabel("peak RSS (MiB)")
    ax.set_ylabel("decode tok/s")
    ax.set_title(f"{res['model']}, {res['config']['threads']} threads, median of {res['config']['rounds']} round(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def machine_facts(provider: str = "cpu") -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "")
    out = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
           "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    if provider == "cuda":
        try:
            out["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out["gpu"] = "unknown"
    return out


def project_versions() -> dict:
    import importlib.metadata as m

    import onnxruntime

    # onnxruntime's own version: on a GPU host the distribution is onnxruntime-gpu
    v = {"onnxruntime": onnxruntime.__version__, **{p: m.version(p) for p in ("numpy", "edgedelta")}}
    try:
        v["edgedelta_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                               text=True).stdout.strip()
        v["edgedelta_tree_dirty"] = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                                                        text=True).stdout.strip())
    except OSError:
        pass
    return v


# ---- main ------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 32 new tokens, prefill 32/512 once, 1 ppl window per text")
    ap.add_argument("--only", default=None, help="comma-separated labels or globs (e.g. 'edgedelta-int4*,genai-int4')")
    ap.add_argument("--list", action="store_true", help="print the contenders and exit")
    ap.add_argument("--table", default=None, help="a JSON file with the edgedelta rows (list of dicts: label, model, export, session, role)")
    ap.add_argument("--compressed", default=None, help="a DeltaLLM-compressed model dir (default: the one peers_build.py made)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"],
                    help="cuda (a GPU host): the CUDA rows (EDGEDELTA_CUDA, the genai CUDA build), speed only")
    ap.add_argument("--peers-root", default=None, help="a folder with the peers' models by build key (default: peers_build's manifest)")
    ap.add_argument("--peer-python", default=None, help="the python that runs onnxruntime-genai (default: peers_build's venv)")
    ap.add_argument("--new-tokens", type=int, default=None, help="decode tokens (default 128; --quick: 32)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--prefill", default="32,512", help="prefill lengths, comma-separated")
    ap.add_argument("--prefill-reps", type=int, default=None, help="timed prefills per length and round (default 3; --quick: 1)")
    ap.add_argument("--ppl-windows", type=int, default=None, help="perplexity windows per held-out text set (default 8; --quick: 1)")
    ap.add_argument("--ppl-window", type=int, default=512, help="tokens per perplexity window")
    ap.add_argument("--no-ppl", action="store_true", help="skip perplexity")
    ap.add_argument("--reexport", action="store_true", help="export the edgedelta artifacts again even if cached")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one worker may take")
    ap.add_argument("--out", default=None, help="output folder (default bench/results; --quick: bench/_work/peers/quick)")
    return ap.parse_args(argv)


def fail(msg: str) -> int:
    print(f"peers: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    a = parse_args(argv)
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    new_tokens = a.new_tokens if a.new_tokens is not None else (32 if a.quick else 128)
    reps = a.prefill_reps if a.prefill_reps is not None else (1 if a.quick else 3)
    windows = a.ppl_windows if a.ppl_windows is not None else (1 if a.quick else 8)
    try:
        prefill = sorted({int(x) for x in a.prefill.split(",") if x.strip()})
    except ValueError:
        return fail(f"--prefill must be comma-separated integers, got '{a.prefill}'")
    for name, v, lo in (("--rounds", rounds, 1), ("--threads", a.threads, 1), ("--new-tokens", new_tokens, 1),
                        ("--prompt-tokens", a.prompt_tokens, 1), ("--prefill-reps", reps, 1), ("--ppl-windows", windows, 1),
                        ("--ppl-window", a.ppl_window, 2)):
        if v < lo:
            return fail(f"{name} must be >= {lo}, got {v}")
    if not prefill or prefill[0] < 1:
        return fail(f"--prefill lengths must be >= 1, got '{a.prefill}'")
    try:
        rows = json.loads(Path(a.table).read_text()) if a.table else (EDGEDELTA_CUDA if a.provider == "cuda" else EDGEDELTA)
        contenders = select(parse_table(rows) + peer_contenders(a.provider), a.only)
    except (OSError, json.JSONDecodeError, ValueError) as e:
        return fail(str(e))
    if a.list:
        for c in contenders:
            print(f"{c.label:34s} {c.engine:9s} role={c.role or '-':16s} {c.model or c.peer} {c.export or ''} {c.session or ''}")
        return 0
    manifest = peers_build.read_manifest()
    compressed = Path(a.compressed) if a.compressed else Path(manifest.get("compressed", {}).get("dir", "/nonexistent"))
    if not a.compressed and not (compressed / "config.json").is_file():
        compressed = None  # not built: the compressed rows are skipped with a note
    if a.compressed:
        if not (compressed / "config.json").is_file() or "edgedelta" not in json.loads((compressed / "config.json").read_text()):
            return fail(f"--compressed '{compressed}' is not an edgedelta compressed model dir (config.json with an 'edgedelta' section)")
    out_dir = Path(a.out) if a.out else (WORK / "quick" if a.quick else RESULTS)
    run_dir = WORK / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))

    t_start = time.time()
    print(f"peers: {len(contenders)} contenders, {rounds} round(s); load average {os.getloadavg()}", file=sys.stderr)
    tokens = make_tokens(a.prompt_tokens, prefill, windows, a.ppl_window)
    tok_path = run_dir / "tokens.json"
    tok_path.write_text(json.dumps(tokens))
    eds = [c for c in contenders if c.engine == "edgedelta"]
    from edgedelta.models.loading import ensure_default_model_dir

    sources = {"original": ensure_default_model_dir() if any(c.model == "original" for c in eds) else None, "compressed": compressed}
    exports = prepare_edgedelta(eds, sources, a.reexport)
    prepare_peers([c for c in contenders if c.engine != "edgedelta"], manifest, Path(a.peers_root) if a.peers_root else None)
    live = [c for c in contenders if c.skip is None]
    skipped = {c.label: c.skip for c in contenders if c.skip}
    for k, v in skipped.items():
        print(f"peers: skipping {k}: {v}", file=sys.stderr)
    by_label = {c.label: c for c in live}
    # ctx: the longest sequence of the run (llama.cpp allocates its KV cache for it up front)
    opts = {"threads": a.threads, "provider": a.provider, "peer_python": a.peer_python, "tokens": str(tok_path),
            "new_tokens": new_tokens, "prefill_reps": reps, "ctx": max([*prefill, a.prompt_tokens + new_tokens + 1, a.ppl_window])}

    from tqdm.auto import tqdm

    results: dict[str, list[dict]] = {c.label: [] for c in live}
    load: list[list[float]] = []
    bar = tqdm(total=rounds * len(live) + (0 if a.no_ppl else len(live)), desc="peers")
    for r in range(rounds):
        load.append(list(os.getloadavg()))
        for label in round_order(list(by_label), r):
            bar.set_postfix_str(f"round {r + 1}: {label}")
            res = run_worker(by_label[label], manifest, "speed", run_dir, opts, a.timeout)
            res["round"] = r
            results[label].append(res)
            bar.update()
    cross = {c.label: llama_bench(c, manifest, a.threads, prefill, new_tokens, a.timeout) for c in live if c.engine == "llama"}
    ppl: dict[str, dict] = {}
    if not a.no_ppl:
        scored: dict[tuple, dict] = {}  # rows that differ only in session settings score the same model once
        for c in live:
            bar.set_postfix_str(f"perplexity: {c.label}")
            key = (c.engine, c.path)
            if key not in scored:
                scored[key] = {**run_worker(c, manifest, "ppl", run_dir, opts, a.timeout), "scored_as": c.label}
            ppl[c.label] = scored[key]
            bar.update()
    bar.close()

    files = {c.label: file_mib(c) for c in live}
    summary = summarize(results, ppl, files, prefill)
    roles = {c.role: c.label for c in live if c.role}
    stem = "peers" if a.provider == "cpu" else f"peers_{a.provider}"
    res = {
        "model": "SmolLM2-135M-Instruct", "json_name": f"{stem}.json",
        "config": {"rounds": rounds, "threads": a.threads, "provider": a.provider, "new_tokens": new_tokens,
                   "prompt_tokens": a.prompt_tokens,
                   "prefill": prefill, "prefill_reps": reps, "quick": a.quick, "ppl": not a.no_ppl},
        "tokens": {"prompt": tokens["prompt"], "prompt_text": "sotu-recent (start)", "ppl_text": tokens["ppl_text"],
                   "ppl_windows": len(tokens["ppl_windows"]), "window": a.ppl_window,
                   "ppl_scored_positions": len(tokens["ppl_windows"]) * (a.ppl_window - 1)},
        "order": [c.label for c in contenders], "engines": {c.label: c.engine for c in contenders},
        "contenders": {c.label: {"engine": c.engine, "role": c.role, "model": c.model, "export": c.export, "session": c.session,
                                 "peer": c.peer, "path": c.path} for c in contenders},
        "exports": exports, "skipped": skipped, "roles": roles, "engine_settings": ENGINE_SETTINGS,
        "summary": summary, "rounds": results, "perplexity": ppl, "llama_bench": cross,
        "ratios": {label: {ref: {m: ratio(m, label, roles[ref], results, summary) for m in METRICS} for ref in REFERENCES if ref in roles}
                   for label in by_label},
        "greedy_agreement": greedy_agreement(results, roles.get("original-fp32") or roles.get("original-fp16")),
        "targets": None,
        "peers": {k: manifest.get(k) for k in ("genai", "gguf", "llama.cpp", "compressed") if manifest.get(k)},
        "versions": {**project_versions(), "peers_venv": manifest.get("venv", {}).get("versions")},
        "machine": {**machine_facts(a.provider), "loadavg_start": load[0] if load else None, "loadavg_per_round": load,
                    "loadavg_end": list(os.getloadavg())},
        "wall_s": round(time.time() - t_start, 1),
    }
    res["targets"] = evaluate_targets(roles, results, summary, TARGETS_CUDA if a.provider == "cuda" else TARGETS)
    from edgedelta.fsutil import write_json_atomic, write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{stem}.json", res)
    write_text_atomic(out_dir / f"{stem}.md", render_markdown(res))
    plot(res, out_dir / f"{stem}.png")
    print(render_markdown(res))
    print(f"peers: wrote {out_dir / stem}.json, .md, .png ({res['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
