"""Benchmark: how redundant are consecutive layers at 135M, 0.5B and 1.5B?

For each built-in model, on the same number of calibration rows of the planner's default text
(mixed-train: State of the Union speeches and Wikipedia passages, BoolQ train), three
statistics per depth:
- pair KL: the budget planner's sensitivity of each candidate pair (l, l+1): the pair alone
  shared with the default compression recipe (anchor base, whitened SVD deltas at the
  planner's starting ranks, fitted sub-layer gates), KL(original ‖ shared) in nats/token
  (edgedelta.delta.plan.group_sensitivity, exactly what plan_budget ranks groups by);
- block cos: cosine similarity of the hidden state entering and leaving each layer, averaged
  over tokens (ShortGPT's 1 − block influence): near 1 = the layer changes little;
- weight distance: ‖W_{l+1} − W_l‖_F / ‖W_l‖_F averaged over the 7 projections of the pair
  (about 1.41 for unrelated matrices of equal norm; 0 for identical ones).
Each pair runs on the model cut at its first layer (tail_model: the cached hidden state
entering layer l stands in for the embedding; its logits equal the full model's, checked
once per model), so the unchanged layers before the pair are not run again for every
candidate. The input covariances the planner whitens with are gathered per pair (only the
pair's two layers; the forward stops after them), because every layer's at once would not
fit the 1.5B model's MLP inputs (8960² float64 per layer) in memory.

Each model runs in a fresh process, which also measures loading it: the first load
dequantises the GGUF into the fp32 safetensors cache (time, peak RSS), a second fresh
process loads that cache (time, peak RSS). For the Qwen GGUFs, which store the LM head apart
from the embedding, `tie_check` compares the two tensors after dequantisation and the KL of
re-tying them (LM head := embedding) on the calibration rows.

Writes redundancy.{json,md,png} to --out (default bench/results).

    python bench/redundancy.py                       # the three models, 2 rows x 64 tokens, 1 thread
    python bench/redundancy.py --models qwen2.5-coder-1.5b --kl-every 4   # one model, kept beside the others
    python bench/redundancy.py --models smollm2-135m --rows 4 --seq-len 128 --out bench/_work/red
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from torch import nn  # noqa: E402

from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
UNRELATED = 2 ** 0.5  # ‖A − B‖/‖A‖ for independent matrices of equal norm


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    # 2 x 64 tokens: the 1.5B model's 27 pairs then take about half an hour on a shared 2-core machine
    p.add_argument("--rows", type=int, default=2, help="calibration rows (the planner's sensitivity uses 4)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per row")
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 threads on a loaded 2-core machine ran 7x slower)")
    p.add_argument("--kl-every", type=int, default=1,
                   help="measure the pair KL on pairs (l, l+1) with l a multiple of this (1: all); the other statistics cover all")
    p.add_argument("--load-only", action="store_true", help="only measure loading again, for models already in the results")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one phase in this process
    return p.parse_args(argv)


# ---- child phases (fresh process each) ---------------------------------------------------------

def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child_load(name: str) -> dict:
    """Build the cache if absent (timed), else load it (timed); peak RSS of this process."""
    import torch

    from edgedelta.loading import load_model
    from edgedelta.models.loading import builtin_cache_dir, ensure_builtin_model_dir
    from edgedelta.models.registry import get_builtin

    torch.set_num_threads(ARGS.threads)
    m = get_builtin(name)
    built = not builtin_cache_dir(m).is_dir()
    t0 = time.perf_counter()
    if built:
        ensure_builtin_model_dir(m)
        return {"phase": "build cache (GGUF → fp32 safetensors)", "seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_bytes": _peak_rss()}
    lm = load_model(name)
    loaded_s, loaded_rss = time.perf_counter() - t0, _peak_rss()  # safetensors are memory-mapped: pages not yet read
    with torch.no_grad():  # one short forward reads every weight: the RSS a user of the model sees
        lm.model(input_ids=lm.tokenizer("def main():", return_tensors="pt").input_ids)
    params = sum(p.numel() for p in lm.model.parameters())
    return {"phase": "load from cache", "seconds": round(loaded_s, 1), "peak_rss_after_load_bytes": loaded_rss,
            "peak_rss_bytes": _peak_rss(), "peak_rss_note": "after load and one short forward (every weight read)",
            "parameters": params, "tied": lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight}


class _Stop(Exception):
    pass


def _collect_covariances(model, adapter, layers, projections, ids):
    """input_covariances' result, gathered with hooks that survive the early stop."""
    import torch

    from edgedelta.delta.calibration import input_readers, readers_of

    dec = adapter.decoder_layers(model)
    covs, hooks = {}, []
    readers = input_readers(adapter, projections)

    def make_hook(key):
        def hook(_m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
            covs[key] = (x.T @ x).double()
        return hook

    for li in layers:
        for p in readers:
            hooks.append(adapter.get_linear(dec[li], p).register_forward_pre_hook(make_hook((li, p))))

    def stop(*_):
        raise _Stop

    hooks.append(dec[max(layers)].register_forward_hook(stop))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return {(li, p): covs[(li, readers_of(adapter, p))] for li in layers for p in projections}


class _FixedInput(nn.Module):
    """Stands in for the embedding of a model cut at layer l: returns the hidden state that
    enters layer l for the calibration rows (rows, T, hidden), whatever ids it is given."""

    def __init__(self, h):
        super().__init__()
        self.h = h

    def forward(self, ids):
        assert tuple(ids.shape) == tuple(self.h.shape[:2]), (ids.shape, self.h.shape)
        return self.h


def tail_model(model, li: int, h):
    """The same model from decoder layer `li` on (the same layer, norm and head objects), fed
    the cached hidden state entering layer li: its logits are the full model's, and a pair
    (li, li+1) becomes its layers (0, 1). The layers before li do not change when the pair is
    shared, so running them again for every candidate would only repeat the same numbers.
    Llama/Qwen2 only (no embedding scale inside the decoder stack)."""
    import copy

    from torch import nn

    base = model.model
    tail = copy.copy(base)
    tail._modules = dict(base._modules)  # a copy.copy'd Module shares its _modules dict: give it its own
    tail._modules["layers"] = nn.ModuleList(list(base.layers)[li:])
    tail._modules["embed_tokens"] = _FixedInput(h)
    top = copy.copy(model)
    top._modules = dict(model._modules)
    top._modules["model"] = tail
    return top


def layer_inputs(model, adapter, ids) -> list:
    """The hidden state entering each decoder layer, (rows, T, hidden) each."""
    import torch

    hs, hooks = {}, []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        hooks.append(layer.register_forward_pre_hook(lambda _m, args, kwargs, i=i: hs.__setitem__(i, (args[0] if args else kwargs["hidden_states"]).detach().clone()),
                                                     with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [hs[i] for i in range(len(hs))]


def child_redundancy(name: str) -> dict:
    import torch
    from tqdm.auto import tqdm

    from edgedelta.data.text import calibration_batches
    from edgedelta.delta.calibration import WhiteningCache
    from edgedelta.delta.groups import build_spec
    from edgedelta.delta.config import CompressConfig
    from edgedelta.delta.plan import group_sensitivity, kl_to, log_probs
    from edgedelta.models.adapters import adapter_for
    from edgedelta.loading import load_model
    from edgedelta.models.similarity import layer_similarities

    torch.set_num_threads(ARGS.threads)
    t0 = time.perf_counter()
    lm = load_model(name)
    model, tok = lm.model.eval(), lm.tokenizer
    load_s = time.perf_counter() - t0
    cfg = CompressConfig(target_params=0.88)  # the planner's defaults (anchor, asvd, gates, scale_base)
    adapter = adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    n = len(layers)
    ids = calibration_batches(tok, ARGS.rows, ARGS.seq_len, cfg.seed, cfg.calib_text)  # (rows, seq_len)
    sims = layer_similarities(model, ids)
    influence = [1.0 - s["block_cos"] for s in sims]
    projections = list(cfg.shared_projections(adapter))
    # the planner's starting ranks (plan_budget): configured ranks capped at 1/8 of the smaller side
    ranks = {p: min(cfg.rank_for(p, adapter.kinds[p]), max(1, min(adapter.get_linear(layers[0], p).weight.shape) // 8))
             for p in projections}
    ref = log_probs(model, ids)  # (rows, T, vocab)
    hidden = layer_inputs(model, adapter, ids)
    mid = n // 2  # the cut model reproduces the full one (checked once)
    cut_check = float((log_probs(tail_model(model, mid, hidden[mid]), ids) - ref).abs().max())
    assert cut_check < 1e-3, f"the model cut at layer {mid} differs from the full one by {cut_check}"
    pairs = []
    with torch.no_grad():
        for li in tqdm(range(n - 1), desc=f"{name} pairs"):
            wd = [float((adapter.get_linear(layers[li + 1], p).weight - adapter.get_linear(layers[li], p).weight).norm()
                        / adapter.get_linear(layers[li], p).weight.norm()) for p in projections]
            kl = None
            if li % ARGS.kl_every == 0:
                sub = tail_model(model, li, hidden[li])
                covs = _collect_covariances(sub, adapter, [0, 1], projections, ids)
                spec = build_spec(cfg, adapter, [[0, 1]], sub, ranks, influence[li:])
                kl = group_sensitivity(sub, adapter, spec, cfg, covs, ids, ref, WhiteningCache(cfg.damping))
                del covs, sub
            pairs.append({"pair": [li, li + 1], "kl": kl, "weight_rel_diff": sum(wd) / len(wd),
                          "weight_rel_diff_by_proj": dict(zip(projections, [round(x, 4) for x in wd]))})
    out = {"name": name, "title": lm.source.get("name"), "layers": n, "parameters": sum(p.numel() for p in model.parameters()),
           "load_s": round(load_s, 1), "ranks": ranks, "kl_every": ARGS.kl_every, "rows": ARGS.rows, "seq_len": ARGS.seq_len, "cut_model_max_abs_logprob_diff": cut_check,
           "layer_block_cos": [s["block_cos"] for s in sims], "pairs": pairs}
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is not emb.weight:  # an untied head: would re-tying it change the model?
        d = (head.weight.double() - emb.weight.double())
        saved = head.weight
        head.weight = emb.weight
        try:
            kl_retie = kl_to(ref, log_probs(model, ids))
        finally:
            head.weight = saved
        out["tie_check"] = {"rel_frobenius_diff": float(d.norm() / emb.weight.double().norm()), "max_abs_diff": float(d.abs().max()),
                            "kl_retied_nats_per_token": kl_retie, "embedding_params": emb.weight.numel()}
    out["peak_rss_bytes"] = _peak_rss()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ---- parent: orchestration and report ------------------------------------------------------------

def run_child(phase: str, name: str) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{phase}:{name}", "--rows", str(ARGS.rows), "--seq-len", str(ARGS.seq_len),
           "--threads", str(ARGS.threads), "--kl-every", str(ARGS.kl_every)]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{phase} of {name} failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for i, m in enumerate(res["models"]):
        n = m["layers"]
        col = f"C{i}"
        label = f"{m['title']} ({m['parameters'] / 1e6:,.0f}M, {n} layers)"
        xp = [(p["pair"][0] + 1) / n for p in m["pairs"]]  # the boundary between the pair's layers
        measured = [(x, p["kl"]) for x, p in zip(xp, m["pairs"]) if p["kl"] is not None]
        every = m.get("kl_every", 1)
        axes[0].plot(*zip(*measured), "o-", ms=3, color=col, label=label + (f"; every {every}th pair" if every > 1 else ""))
        axes[1].plot([(li + 0.5) / n for li in range(n)], m["layer_block_cos"], "o-", ms=3, color=col, label=label)
        axes[2].plot(xp, [p["weight_rel_diff"] for p in m["pairs"]], "o-", ms=3, color=col, label=label)
    axes[0].set_yscale("log")
    axes[0].set_title("planner: KL(original ‖ pair (l, l+1) shared), nats/token\n(lower = more redundant)")
    axes[1].set_title("cos(hidden state entering, leaving layer l)\n(higher = the layer changes less)")
    axes[2].set_title("‖W(l+1) − W(l)‖ / ‖W(l)‖, mean over 7 projections\n(lower = more alike; unrelated ≈ 1.41)")
    axes[2].axhline(UNRELATED, color="grey", ls=":", lw=1)
    for ax in axes:
        ax.set_xlabel("relative depth")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Consecutive-layer redundancy across sizes ({res['rows']} calibration rows x {res['seq_len']} tokens, "
                 f"{res['calib_text']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _median(xs):
    s = sorted(xs)
    return (s[len(s) // 2] + s[(len(s) - 1) // 2]) / 2


def write_report(res: dict, out: Path) -> None:
    md = ["# Consecutive-layer redundancy at 135M, 0.5B and 1.5B", "",
          f"Machine: {res['machine']}. Calibration: {res['rows']} rows x {res['seq_len']} tokens of {res['calib_text']} "
          "(each model's own tokenizer), the same rows for every statistic. Written by bench/redundancy.py.", "",
          "| model | params | layers | pairs with KL | pair KL median | pair KL min (pair) | pair KL max | block cos median | "
          "weight distance median | load from cache s | peak RSS, load + one forward | cache build s | build peak RSS |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        kls = [p["kl"] for p in m["pairs"] if p["kl"] is not None]
        best = min((p for p in m["pairs"] if p["kl"] is not None), key=lambda p: p["kl"])
        ld, bd = m.get("load") or {}, m.get("build") or {}
        gib = lambda b: f"{b / 2**30:.2f} GiB" if b else "-"  # noqa: E731
        md.append(f"| {m['title']} | {m['parameters'] / 1e6:,.0f}M | {m['layers']} | {len(kls)} of {len(m['pairs'])} | {_median(kls):.4f} | {best['kl']:.4f} "
                  f"({best['pair'][0]},{best['pair'][1]}) | {max(kls):.3f} | {_median(m['layer_block_cos']):.3f} | "
                  f"{_median([p['weight_rel_diff'] for p in m['pairs']]):.3f} | {ld.get('seconds', '-')} | "
                  f"{gib(ld.get('peak_rss_bytes'))} | {bd.get('seconds', '-')} | {gib(bd.get('peak_rss_bytes'))} |")
    md += ["", "![redundancy](redundancy.png)", "",
           "Pair KL: the budget planner's sensitivity (one pair shared with the default recipe at the planner's starting "
           "ranks, KL of the next-token distribution from the original's). Block cos: ShortGPT's similarity of a layer's "
           "input and output. Weight distance: relative Frobenius distance of the pair's weights (1.41 for unrelated "
           "matrices). Load: a fresh process loading the cached fp32 safetensors; build: the first load, which dequantises "
           "the GGUF and writes that cache."]
    ties = [m for m in res["models"] if m.get("tie_check")]
    if ties:
        md += ["", "## LM head and embedding (GGUFs that store both)", "",
               "| model | relative Frobenius difference | max abs difference | KL if re-tied (nats/token) | embedding params |",
               "|---|---|---|---|---|"]
        md += [f"| {m['title']} | {m['tie_check']['rel_frobenius_diff']:.4f} | {m['tie_check']['max_abs_diff']:.4f} | "
               f"{m['tie_check']['kl_retied_nats_per_token']:.4f} | {m['tie_check']['embedding_params'] / 1e6:.0f}M |" for m in ties]
    write_text_atomic(out / "redundancy.md", "\n".join(md) + "\n")


def main() -> None:
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {"machine": f"{platform.machine()}, {ARGS.threads} threads", "rows": ARGS.rows, "seq_len": ARGS.seq_len,
           "calib_text": "mixed-train", "models": []}
    names = ARGS.models.split(",")
    old = out / "redundancy.json"
    if old.is_file():  # keep other models measured with the same rows (runs per model can be split)
        prev = json.loads(old.read_text())
        if (prev.get("rows"), prev.get("seq_len"), prev.get("calib_text")) == (ARGS.rows, ARGS.seq_len, "mixed-train"):
            res["models"] = [m for m in prev.get("models", []) if m["name"] not in names]
    order = {n: i for i, n in enumerate(MODELS)}
    if ARGS.load_only:
        prev = json.loads(old.read_text())
        for m in prev["models"]:
            if m["name"] in names:
                m["load"] = run_child("load", m["name"])
        write_json_atomic(old, prev)
        write_report(prev, out)
        return
    for name in names:
        build = run_child("load", name)
        load = run_child("load", name) if build["phase"].startswith("build") else build
        print(f"{name}: {load}", file=sys.stderr)
        r = run_child("redundancy", name)
        r["build"] = build if build is not load else None
        r["load"] = load
        res["models"].append(r)
        res["models"].sort(key=lambda m: order.get(m["name"], len(order)))
        res["seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(out / "redundancy.json", res)
        write_report(res, out)
        chart(res, out / "redundancy.png")


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.child:
        phase, name = ARGS.child.split(":", 1)
        print(json.dumps(child_load(name) if phase == "load" else child_redundancy(name)))
    else:
        main()
