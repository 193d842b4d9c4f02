"""One contender of bench/peers.py, measured in this (fresh) process:

  python bench/peers_worker.py SPEC.json OUT.json

SPEC: {"engine": "edgedelta"|"genai"|"llama", "path": model, "session": {kwargs}, "threads": 2,
       "provider": "cpu"|"cuda" (edgedelta and genai), "mode": "speed"|"ppl", "tokens": tokens.json,
       "new_tokens": 128, "prefill_reps": 3, "ctx": longest sequence (llama.cpp's KV cache size)}

speed: load, a short untimed warm-up, then greedy decode of `new_tokens` after the prompt
       (each step timed: one forward of one token + the argmax, or the engine's own greedy
       step), peak RSS so far; then prefill of each prompt length (one untimed warm-up, then
       `prefill_reps` timed runs, each a fresh sequence), peak RSS again.
ppl:   every window of tokens.json scored from an empty cache: one forward over the window,
       the log-probability of each next token from the logits at every position.

Peak RSS is the process's VmHWM (the same counter for every engine; mapped weight pages
count once touched). The script imports only numpy and the engine's own package, so it runs in
the project's env (edgedelta) or the peers' venv (onnxruntime-genai, llama.cpp's binding):
each engine's import sits in its adapter below because the other env does not have it."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def rss_peak_mib() -> float:
    """The process's own peak RSS: VmHWM of /proc/self/status (Linux), which exec resets.
    ru_maxrss is not used: Linux carries the parent's peak at fork into it, so every worker
    started from a parent that had imported torch (~380 MiB) reported at least that."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: KiB on most systems


def rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def nll_of_logits(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of ids[1:] under logits[:-1]. logits (S, V), ids (S,)."""
    x = logits[:-1].astype(np.float64)  # (S-1, V)
    m = x.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))  # (S-1,)
    tgt = x[np.arange(x.shape[0]), ids[1:]]
    return float((lse - tgt).sum()), int(x.shape[0])


# ---- engines: load, prefill (fresh sequence), greedy decode, all-position logits -------------------
def _finite(logits: np.ndarray) -> None:
    if not np.isfinite(logits).all():
        raise RuntimeError("non-finite logits")


class EdgeDelta:
    """edgedelta.runtime.Session over an exported artifact (public API: from_dir, new_cache, forward).
    A session with static_decode on (cuda_graph) gets its decode steps' mask over the whole
    cache, as generate() gives it."""

    def __init__(self, path: str, threads: int, session: dict, provider: str = "cpu"):
        from edgedelta.runtime import Session  # the project's env only

        self.s = Session.from_dir(path, provider=provider, threads=threads, tokenizer=None, **session)

    def _run(self, ids: list[int], cache, past: int, all_logits: bool = False):
        """ids at positions past.. of `cache` (which holds `past` positions)."""
        x = np.asarray([ids], np.int64)
        end = past + x.shape[1]
        if self.s.full_width_decode and x.shape[1] == 1:
            mask = np.zeros((1, cache.capacity), np.int64)
            mask[:, :end] = 1
        else:
            mask = np.ones((1, end), np.int64)
        return self.s.forward(x, mask, np.arange(past, end)[None], cache, all_logits=all_logits)

    def prefill_time(self, ids: list[int]) -> float:
        cache = self.s.new_cache(1, len(ids))
        t = time.perf_counter()
        self._run(ids, cache, 0)
        return time.perf_counter() - t

    def decode(self, prompt: list[int], n: int) -> tuple[list[float], list[int]]:
        cache = self.s.new_cache(1, len(prompt) + n + 1)
        logits = self._run(prompt, cache, 0)
        _finite(logits)
        tok = int(logits[0].argmax())
        out, times = [tok], []
        for i in range(n):
            t = time.perf_counter()
            logits = self._run([tok], cache, len(prompt) + i)
            tok = int(logits[0].argmax())
            times.append(time.perf_counter() - t)
            out.append(tok)
        _finite(logits)  # untimed: an artifact that decodes NaN would still report a speed
        return times, out

    def window_logits(self, ids: list[int]) -> np.ndarray:
        cache = self.s.new_cache(1, len(ids))
        return np.array(self._run(ids, cache, 0, all_logits=True)[0])  # (S, V), copied out of the reused buffer


class Genai:
    """onnxruntime-genai: its Model/Generator on `provider`, `threads` intra-op threads, its other
    session settings as its builder wrote them (genai_config.json). session: session options,
    and on CUDA "cuda_graph": true for the provider's enable_cuda_graph."""

    def __init__(self, path: str, threads: int, session: dict, provider: str = "cpu"):
        import onnxruntime_genai as og  # the peers' venv, or onnxruntime-genai-cuda on a GPU host

        self.og = og
        cfg = og.Config(path)
        cfg.clear_providers()
        session = dict(session)
        graph = session.pop("cuda_graph", False)
        if provider == "cuda":
            cfg.append_provider("cuda")
            cfg.set_provider_option("cuda", "enable_cuda_graph", "1" if graph else "0")
        opts = {"intra_op_num_threads": threads, "inter_op_num_threads": 1, **session}
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
        self.m = og.Model(cfg)

    def _gen(self, max_length: int):
        p = self.og.GeneratorParams(self.m)
        # min_length = max_length: EOS is never picked, so every run decodes exactly n tokens
        p.set_search_options(do_sample=False, max_length=max_length, min_length=max_length, batch_size=1)
        return self.og.Generator(self.m, p)

    def prefill_time(self, ids: list[int]) -> float:
        g = self._gen(len(ids) + 1)
        t = time.perf_counter()
        g.append_tokens(np.asarray([ids], np.int32))
        return time.perf_counter() - t

    def decode(self, prompt: list[int], n: int) -> tuple[list[float], list[int]]:
        g = self._gen(len(prompt) + n + 1)
        g.append_tokens(np.asarray([prompt], np.int32))
        g.generate_next_token()  # picks the first token from the prompt's logits (no forward)
        times = []
        for _ in range(n):  # each call: one forward of the last token + its greedy pick
            t = time.perf_counter()
            g.generate_next_token()
            times.append(time.perf_counter() - t)
        return times, [int(x) for x in g.get_sequence(0)[len(prompt):]]

    def window_logits(self, ids: list[int]) -> np.ndarray:
        g = self._gen(len(ids) + 1)
        g.append_tokens(np.asarray([ids], np.int32))
        out = np.asarray(g.get_output("logits"), dtype=np.float32)  # (1, S, V)
        return out.reshape(-1, out.shape[-1])[-len(ids):]


class LlamaCpp:
    """llama.cpp through llama-cpp-python's binding (ctypes over the libraries peers_build.py
    built). `ctx` positions of KV cache (f16, llama.cpp's default); `logits_all` keeps every
    position's logits (perplexity)."""

    def __init__(self, path: str, threads: int, session: dict, ctx: int = 640, logits_all: bool = False):
        from llama_cpp import Llama  # the peers' venv, PYTHONPATH = bench/_work/peers/llama.cpp/python

        kw = {"n_ctx": ctx, "n_batch": 512, "n_ubatch": 512, "n_threads": threads, "n_threads_batch": threads,
              "logits_all": logits_all, "verbose": False, **session}
        self.llm = Llama(model_path=path, **kw)

    def prefill_time(self, ids: list[int]) -> float:
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - t

    def _last(self) -> int:
        # the last position's logits straight from llama.cpp's output buffer (V,); the binding
        # fills `scores` only with logits_all
        ptr = self.llm._ctx.get_logits_ith(-1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))))

    def decode(self, prompt: list[int], n: int) -> tuple[list[float], list[int]]:
        self.llm.reset()
        self.llm.eval(prompt)
        tok = self._last()
        out, times = [tok], []
        for _ in range(n):
            t = time.perf_counter()
            self.llm.eval([tok])
            tok = self._last()
            times.append(time.perf_counter() - t)
            out.append(tok)
        return times, out

    def window_logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


ENGINES = {"edgedelta": EdgeDelta, "genai": Genai, "llama": LlamaCpp}


def measure_speed(eng, tokens: dict, new_tokens: int, reps: int) -> dict:
    prompt = tokens["prompt"]
    eng.decode(prompt, min(8, new_tokens))  # warm-up: allocations, thread pools, first-touch of weights
    times, ids = eng.decode(prompt, new_tokens)
    out = {"decode": {"step_s": times, "tokens_per_s": len(times) / sum(times), "token_ids": ids},
           "rss_peak_decode_mib": rss_peak_mib(), "prefill": {}}
    for n, ids in sorted(tokens["prefill"].items(), key=lambda kv: int(kv[0])):
        eng.prefill_time(ids)  # warm-up at this length
        ts = [eng.prefill_time(ids) for _ in range(reps)]
        out["prefill"][str(n)] = {"s": ts, "tokens_per_s": len(ids) / float(np.median(ts))}
    out["rss_peak_all_mib"] = rss_peak_mib()
    return out


def measure_ppl(eng, tokens: dict) -> dict:
    nll, count, per_window = 0.0, 0, []
    for w in tokens["ppl_windows"]:
        logits = eng.window_logits(w)
        if not np.isfinite(logits).all():
            return {"error": "non-finite logits"}
        s, c = nll_of_logits(logits, np.asarray(w))
        nll, count = nll + s, count + c
        per_window.append(s / c)
    return {"nll": nll / count, "ppl": float(np.exp(nll / count)), "scored_tokens": count, "window_nll": per_window}


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    tokens = json.loads(Path(spec["tokens"]).read_text())
    res: dict = {"rss_after_import_mib": rss_now_mib()}
    t = time.perf_counter()
    if spec["engine"] == "llama":  # CPU only
        kw = {"ctx": spec.get("ctx", 640), "logits_all": spec["mode"] == "ppl"}
    else:
        kw = {"provider": spec.get("provider", "cpu")}
    eng = ENGINES[spec["engine"]](spec["path"], spec["threads"], spec.get("session", {}), **kw)
    res["load_s"] = time.perf_counter() - t
    res["rss_after_load_mib"] = rss_now_mib()
    if spec["mode"] == "speed":
        res.update(measure_speed(eng, tokens, spec["new_tokens"], spec["prefill_reps"]))
    else:
        res.update(measure_ppl(eng, tokens))
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(res))
    tmp.replace(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
