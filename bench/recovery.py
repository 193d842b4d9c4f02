"""Recovery benchmark: how fast does distillation bring a 12%-compressed model (--model, default
SmolLM2-135M) back, compared with ShortGPT layer removal at the same parameters healed with the
same tokens?

Arms (same training text, --data, default mixed-train; evaluation: python-docs and sotu-recent, never trained on)
  init      best compress() init (the default): budget planner, anchor base, activation-whitened
            SVD, base scale α, sub-layer gates fitted on real sub-layer outputs
  recon-*   + per-group reconstruction (teacher inputs / student inputs), the better one kept
  a         best init + progressive module replacement (linear schedule) + logit KL
  b         best init + plain distillation (all layers compressed from step 0)
  c         ShortGPT removal at equal unique parameters + LoRA (merged, no extra params) + norms,
            healed with the same KL, tokens, batch and schedule
  d         arm a + a LoRA on the unshared layers behind the first shared one (merged: no extra
            params), as c trains every layer it keeps
  e         compress(drop_layers=--drop-layers): the least influential layers removed, delta sharing
            of what is left, at the same unique parameters; plain distillation of the deltas
  f         arm e + a LoRA (--dense-lora-rank, merged) on its unshared layers at c's learning rate
            (--heal-lr): what c's healing trains that e does not
Each arm trains for --tokens and is evaluated at every --eval-at point (perplexity on capped
token counts and KL(teacher || model) per token). Results are written after every point to
<out>/recovery.json, so an interrupted run still reports what it measured; recovery.md and
recovery_loss.png are regenerated from the JSON (--report-only does just that).

  python bench/recovery.py                       # CPU defaults (about an hour on 2 cores)
  python bench/recovery.py --tokens 200000 --eval-at 50000,200000
  python bench/recovery.py --device cuda --tokens 10000000 --target 0.75   # see gpu_recovery.sh
  python bench/recovery.py --device cuda --model qwen2.5-coder-1.5b --grad-accum 4 --deadline 480 ...
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.cli.common import nonneg_int  # noqa: E402
from edgedelta.data.text import DEFAULT_TRAIN_TEXT, dataset_texts, pack, tokenize_stream, training_texts  # noqa: E402
from edgedelta.delta.accounting import count_parameters  # noqa: E402
from edgedelta.fsutil import write_json_atomic  # noqa: E402
from edgedelta.recipes import DELTALLM, DROP_SHARE, REMOVAL  # noqa: E402
from edgedelta.distill.config import DistillConfig  # noqa: E402
from edgedelta.distill.data import TrainData  # noqa: E402
from edgedelta.distill.distributed import setup  # noqa: E402
from edgedelta.distill.hybrid import HybridModel, WholeStudent  # noqa: E402
from edgedelta.distill.logs import JsonlLog, loss_curve_png  # noqa: E402
from edgedelta.distill.reconstruct import reconstruct_groups  # noqa: E402
from edgedelta.distill.trainable import add_dense_lora, select_trainable  # noqa: E402
from edgedelta.distill.trainer import LoopState, TrainingInterrupted, train_loop  # noqa: E402

EVAL_SETS = ("python-docs", "sotu-recent")


# --- evaluation --------------------------------------------------------------------------

class Evaluator:
    """Perplexity and KL(teacher || model) on fixed windows of the evaluation texts. The
    teacher's logits are computed once and kept in fp16 on the model's device (V=49k: ~0.4 GB
    per 4k tokens), so on a GPU the whole evaluation stays there."""

    def __init__(self, teacher, tok, tokens: int, seq_len: int, device, batch: int = 4):
        self.device, self.batch = device, batch
        self.last_seconds = None
        self.ids = {n: pack(tokenize_stream(tok, dataset_texts(n)), seq_len, tokens) for n in EVAL_SETS}
        self.t_logits = {n: self._logits(teacher, ids) for n, ids in self.ids.items()}

    def _amp(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @torch.no_grad()
    def _logits(self, model, ids):
        model.eval()
        outs = []
        for s in range(0, ids.shape[0], self.batch):
            with self._amp():
                outs.append(model(input_ids=ids[s:s + self.batch].to(self.device), use_cache=False).logits.half())
        return torch.cat(outs)  # (n, T, V) fp16

    @torch.no_grad()
    def __call__(self, model) -> dict:
        out = {}
        t0 = time.time()
        for n, ids in self.ids.items():
            nll = kl = 0.0
            for s in range(0, ids.shape[0], self.batch):
                x = ids[s:s + self.batch].to(self.device)
                with self._amp():
                    lg = model(input_ids=x, use_cache=False).logits.float()  # (b, T, V)
                nll += F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
                lt = F.log_softmax(self.t_logits[n][s:s + self.batch].float(), -1)
                kl += (lt.exp() * (lt - F.log_softmax(lg, -1))).sum().item()
            out[n] = {"ppl": round(math.exp(nll / (ids.shape[0] * (ids.shape[1] - 1))), 3),
                      "kl": round(kl / ids.numel(), 4), "tokens": ids.numel()}
        out["eval_seconds"] = self.last_seconds = round(time.time() - t0, 1)
        model.train()
        return out


# --- results file ------------------------------------------------------------------------

class Results:
    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() and meta.get("append") else {"meta": meta, "points": [], "arms": {}}
        self.data["meta"].update({k: v for k, v in meta.items() if k != "append"})

    def point(self, arm: str, tokens: int, metrics: dict, **extra) -> None:
        row = {"arm": arm, "tokens": tokens, **metrics, **extra, "loadavg_1m": round(os.getloadavg()[0], 1),
               "at": time.strftime("%H:%M:%S")}
        self.data["points"].append(row)
        print(f"[{time.strftime('%H:%M:%S')}] {arm} @ {tokens} tokens: " +
              ", ".join(f"{n} ppl {metrics[n]['ppl']} kl {metrics[n]['kl']}" for n in EVAL_SETS), flush=True)
        self.save()

    def arm(self, arm: str, info: dict) -> None:
        self.data["arms"].setdefault(arm, {}).update(info)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


# --- arms --------------------------------------------------------------------------------

def run_arm(name: str, view, teacher, params, data: TrainData, cfg: DistillConfig, ctx, evaluate, results: Results,
            eval_at: list[int], after_train=None) -> None:
    """Train `view.student` for cfg.tokens, evaluating at each eval_at token count (the loop
    stops via stop_after and continues with the same optimizer and state)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    state, log = LoopState(), JsonlLog(None)
    steps_at = sorted({min(cfg.total_steps, max(1, round(t / cfg.tokens_per_step))) for t in eval_at})
    t0 = time.time()
    for target in steps_at:
        try:
            train_loop(view, teacher, params, opt, data, cfg, ctx, state, log, lambda s: None,
                       progress=True, stop_after=target - state.step)
        except TrainingInterrupted as e:
            if getattr(e, "by_signal", False):  # Ctrl-C / SIGTERM ends the benchmark
                raise
        with view.all_compressed() as model:  # evaluate the pure student, never a hybrid mask
            if after_train is not None:
                model = after_train(model)
            metrics = evaluate(model)
        results.point(name, state.tokens, metrics, train_seconds=round(state.seconds, 1),
                      train_tok_s=round(state.tokens / max(state.seconds, 1e-9), 1))
        results.arm(name, {"log": log.lines, "config": cfg.to_dict(), "wall_seconds": round(time.time() - t0, 1)})


def probe_tok_s(view, params, cfg: DistillConfig, teacher, data: TrainData, ctx, steps: int = 4) -> float:
    """Training tokens/s of one arm's configuration: one warm-up step (allocations, kernel
    selection), then `steps` timed steps, on a throw-away copy."""
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    state = LoopState()
    for n in (1, steps):
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t0, before = time.time(), state.tokens
        try:
            train_loop(view, teacher, params, opt, data, cfg, ctx, state, JsonlLog(None), lambda s: None,
                       progress=False, stop_after=n)
        except TrainingInterrupted as e:
            if getattr(e, "by_signal", False):
                raise
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
    return (state.tokens - before) / (time.time() - t0)


def probe_fitting(build, base_cfg: dict, teacher, data: TrainData, ctx) -> tuple[float, float | None]:
    """probe_tok_s of the arm that build() makes, halving the micro-batch (doubling
    base_cfg["grad_accum"], which every later arm then uses) while a step runs out of GPU
    memory. Returns (tokens/s, peak GPU memory in GiB or None on the CPU)."""
    while True:
        view, params, cfg = build()
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            rate = probe_tok_s(view, params, cfg, teacher, data, ctx)
        except torch.cuda.OutOfMemoryError:
            if base_cfg["grad_accum"] * 2 > base_cfg["batch_size"] or base_cfg["batch_size"] % (base_cfg["grad_accum"] * 2):
                raise
            rate = None
        if rate is None:  # out of the except block: its traceback no longer holds the step's tensors
            del view, params, cfg
            base_cfg["grad_accum"] *= 2
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"probe: out of GPU memory; grad_accum -> {base_cfg['grad_accum']}", flush=True)
            continue
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if ctx.device.type == "cuda" else None
        return rate, peak


def model_slug(spec) -> str:
    """A file-name-safe name of --model for the init cache (a built-in name, or a path's last parts)."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", "/".join(Path(str(spec)).parts[-2:])).strip("_")[-60:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results", help="folder for recovery.json / .md / _loss.png")
    ap.add_argument("--model", default="default", help="the teacher: a built-in model name, a GGUF file or a Hugging Face directory")
    ap.add_argument("--target", type=float, default=0.88, help="fraction of unique parameters kept")
    ap.add_argument("--groups", default=None, help="explicit sharing pairs instead of the budget planner, e.g. 4-5,8-9 (cheaper)")
    ap.add_argument("--rank", type=int, default=40, help="delta rank with --groups")
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration sequences of compress()")
    ap.add_argument("--calib-text", default=DEFAULT_TRAIN_TEXT, help="calibration text of compress() (a training text set)")
    ap.add_argument("--data", default=DEFAULT_TRAIN_TEXT, help="training text of every arm (a training text set)")
    ap.add_argument("--init", default="asvd", choices=["asvd", "svd"], help="compress() delta init (svd needs no calibration: cheap)")
    ap.add_argument("--base", default="anchor", choices=["anchor", "first", "mean", "alternating"], help="compress() shared base")
    ap.add_argument("--no-gates", action="store_true", help="compress() without sub-layer gates")
    ap.add_argument("--tokens", type=int, default=50_000, help="training tokens per arm")
    ap.add_argument("--eval-at", default="25000,50000", help="token counts at which each arm is evaluated")
    ap.add_argument("--eval-tokens", type=int, default=4096, help="tokens per evaluation text")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=DELTALLM.distill.batch_size)
    ap.add_argument("--grad-accum", type=int, default=1,
                    help="micro-steps per optimizer step: the same batch in smaller pieces (less memory, same result); "
                         "with --deadline on CUDA it doubles by itself while a probe step runs out of GPU memory")
    ap.add_argument("--lr", type=float, default=DELTALLM.distill.lr)
    ap.add_argument("--heal-lr", type=float, default=REMOVAL.heal.lr, help="learning rate of the LoRA healing of arm c")
    ap.add_argument("--recon-tokens", type=int, default=16_384)
    ap.add_argument("--recon-epochs", type=int, default=4)
    ap.add_argument("--recon-lr", type=float, default=1e-3)
    ap.add_argument("--arms", default="a,c,b", help="arms to train, in order (a, b, c, d, e, f)")
    ap.add_argument("--trainable", default="deltas,gates,norms", help="what arms a, b and d train (distill's kinds, e.g. +shared)")
    ap.add_argument("--drop-layers", type=int, default=None,
                    help="arm e: layers removed before sharing (default: the drop-share recipe's count at --target for the model's layers)")
    ap.add_argument("--c-lora-rank", type=nonneg_int, default=0,
                    help="arm c's LoRA rank (0: sized to arm a's trainable deltas and gates, rank 20 at 12%%)")
    ap.add_argument("--dense-lora-rank", type=int, default=DROP_SHARE.distill.lora_rank, help="arm d's LoRA rank (arm c's rank at 12%% is 20)")
    ap.add_argument("--recon-variants", default="teacher,student", help="reconstruction inputs to try (best kept)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds from the start by which every arm must be done: a short probe of each arm's "
                         "throughput sets the tokens per arm (at most --tokens; the same for every arm) and scales --eval-at")
    ap.add_argument("--work", default="bench/_work", help="cache of the compressed init (gitignored)")
    ap.add_argument("--report-only", action="store_true", help="rewrite recovery.md / png from recovery.json")
    ap.add_argument("--tag", default="recovery", help="file name stem of the results")
    ap.add_argument("--append", action="store_true", help="keep the points already in <tag>.json (e.g. to add an arm)")
    ap.add_argument("--skip-recon", action="store_true", help="no reconstruction stage (the init goes straight to the arms)")
    ap.add_argument("--note", action="append", default=[], help="a finding to print under the table (repeatable; kept in the JSON)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        if args.note:
            path = out / f"{args.tag}.json"
            data = json.loads(path.read_text())
            data["meta"]["notes"] = data["meta"].get("notes", []) + args.note
            write_json_atomic(path, data)
        write_report(out, args.tag)
        return 0

    from edgedelta.baselines import shortgpt
    from edgedelta.data.text import calibration_batches
    from edgedelta.delta.compress import compress
    from edgedelta.delta.config import CompressConfig
    from edgedelta.errors import ConfigError, EdgeDeltaError
    from edgedelta.loading import load_model

    ctx = setup(args.device)
    t_start = time.time()
    try:
        lm = load_model(args.model)
    except EdgeDeltaError as e:
        raise SystemExit(f"recovery: {e}") from None
    teacher, tok = lm.model.to(ctx.device).eval().requires_grad_(False), lm.tokenizer
    n_layers = teacher.config.num_hidden_layers
    if args.drop_layers is None:
        args.drop_layers = DROP_SHARE.plan.drop_layers(args.target, n_layers)
    model_name = lm.source.get("name") or Path(str(args.model)).name
    meta = {"model": f"{model_name} ({n_layers} layers, {count_parameters(teacher)['total']:,} parameters)",
            "target_params": args.target if not args.groups else f"groups {args.groups} rank {args.rank}",
            "init": f"{args.init}, base {args.base}, gates {not args.no_gates}", "train_text": args.data, "calib_text": args.calib_text,
            "eval_texts": list(EVAL_SETS), "eval_tokens_per_text": args.eval_tokens, "seq_len": args.seq_len,
            "batch": args.batch, "grad_accum": args.grad_accum, "device": str(ctx.device), "threads": torch.get_num_threads(), "host": platform.node(),
            "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "append": args.append}
    results = Results(out / f"{args.tag}.json", meta)
    evaluate = Evaluator(teacher, tok, args.eval_tokens, args.seq_len, ctx.device)
    if not any(p["arm"] == "teacher" for p in results.data["points"]):
        results.point("teacher", 0, evaluate(teacher))
    teacher.eval()
    data = TrainData.from_texts(tok, training_texts(args.data), args.seq_len, seed=0)
    eval_at = [int(t) for t in args.eval_at.split(",") if t]

    # --- best init: budget planner + whitened SVD + gates, then per-group reconstruction -------
    t0 = time.time()
    init_key = f"{model_slug(args.model)}-c{args.calib_samples}-{args.init}-{args.base}-g{int(not args.no_gates)}-{args.calib_text}"  # cache name: what the init depends on
    if args.groups:
        groups = [list(range(int(a), int(b) + 1)) for a, b in (g.split("-") for g in args.groups.split(","))]
        ccfg = CompressConfig(groups=groups, rank_attn=args.rank, rank_mlp=args.rank, calib_samples=args.calib_samples,
                              init=args.init, base=args.base, gates=not args.no_gates, calib_text=args.calib_text)
        cache = Path(args.work) / f"init-{args.groups}-r{args.rank}-{init_key}"
    else:
        ccfg = CompressConfig(target_params=args.target, calib_samples=args.calib_samples, init=args.init, base=args.base,
                              gates=not args.no_gates, calib_text=args.calib_text)
        cache = Path(args.work) / f"init-{args.target}-{init_key}"
    only_c = [a for a in args.arms.split(",") if a] == ["c"]
    if only_c and args.groups and not cache.is_dir():
        # arm c needs only the compressed model's parameter count: build the structure, no init
        from edgedelta.delta.groups import build_spec
        from edgedelta.delta.structure import apply_sharing
        from edgedelta.models.adapters import adapter_for

        student = copy.deepcopy(teacher)
        spec = build_spec(ccfg, adapter_for(teacher.config), groups, student)
        apply_sharing(student, spec)
        student.edgedelta_spec, plan = spec, {"mode": "structure only (arm c)"}
    elif cache.is_dir():  # the compressed init is deterministic: reuse it between bench runs
        from edgedelta.delta.storage import load_compressed
        from edgedelta.manifest import read_manifest

        student, plan = load_compressed(cache).model, read_manifest(cache)["plan"]
    else:
        from edgedelta.delta.storage import save_compressed

        try:
            res = compress(teacher, ccfg, tokenizer=tok, progress=True)
        except Exception as e:  # noqa: BLE001 -- never run on an accelerator before: fall back rather than lose the lease
            if ctx.device.type == "cpu":
                raise
            print(f"compress() on {ctx.device} failed ({type(e).__name__}: {str(e)[:200]}); compressing on the CPU", flush=True)
            res = compress(teacher.cpu(), ccfg, tokenizer=tok, progress=True)
            teacher.to(ctx.device)
        student, plan = res.model, res.plan
        if ctx.device.type == "cpu":  # a GPU host is bare each time: nothing to reuse there
            save_compressed(student, cache, tokenizer=tok, manifest_facts={"plan": plan, "source": lm.source}, force=True)
    student = student.to(ctx.device)
    spec = student.edgedelta_spec
    n_student = count_parameters(student)["total"]
    results.arm("init", {"plan": {k: v for k, v in plan.items() if k != "sensitivity"}, "seconds": round(time.time() - t0, 1),
                         "params": n_student, "teacher_params": count_parameters(teacher)["total"]})
    if not only_c and not any(p["arm"] == "init" for p in results.data["points"]):
        results.point("init", 0, evaluate(student))
    recon_rows = data.rows[torch.randperm(data.num_rows, generator=torch.Generator().manual_seed(1))[: -(-args.recon_tokens // args.seq_len)]]
    best, best_score = student, None
    for variant in [v for v in args.recon_variants.split(",") if v and not (args.skip_recon or only_c)]:
        cand = copy.deepcopy(student)
        tps = select_trainable(cand, spec, ["deltas", "gates", "norms"])
        t0 = time.time()
        rep = reconstruct_groups(cand, teacher, spec, tps, recon_rows, lr=args.recon_lr, epochs=args.recon_epochs,
                                 batch=args.batch, inputs=variant, device=ctx.device, autocast=ctx.use_autocast)
        secs = time.time() - t0
        m = evaluate(cand)
        results.point(f"recon-{variant}", 0, m, recon_tokens=int(recon_rows.numel()), recon_epochs=args.recon_epochs,
                      recon_seconds=round(secs, 1))
        results.arm(f"recon-{variant}", {"groups": rep, "seconds": round(secs, 1)})
        score = sum(m[n]["kl"] for n in EVAL_SETS)
        if best_score is None or score < best_score:
            best, best_score = cand, score
    results.arm("init", {"best_recon": None if best is student else "kept (lowest KL)"})

    arms = [a for a in args.arms.split(",") if a]
    base_cfg = dict(tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch, grad_accum=args.grad_accum, lr=args.lr,
                    checkpoint_every=0, trainable=args.trainable.split(","))
    calib = calibration_batches(tok, 32, args.seq_len, 0) if "c" in arms else None

    built: dict = {}

    def build_drop_init():
        """Arm e/f's compressed init: (model, plan), cached in --work like the best init."""
        from edgedelta.delta.storage import load_compressed, save_compressed
        from edgedelta.manifest import read_manifest

        e_cache = Path(args.work) / f"drop{args.drop_layers}-{n_student}-{init_key}"
        if e_cache.is_dir():
            return load_compressed(e_cache).model, read_manifest(e_cache)["plan"]
        try:
            res = compress(teacher, CompressConfig(
                target_params=n_student / count_parameters(teacher)["total"], drop_layers=args.drop_layers,
                calib_samples=args.calib_samples, init=args.init, base=args.base, gates=not args.no_gates,
                calib_text=args.calib_text), tokenizer=tok, progress=True)
        except ConfigError as e:
            raise SystemExit(f"arm e: {e}") from None
        if ctx.device.type == "cpu":
            save_compressed(res.model, e_cache, tokenizer=tok, manifest_facts={"plan": res.plan, "source": lm.source}, force=True)
        return res.model, res.plan

    def build_arm(arm: str, tokens: int):
        """A freshly built arm: (view, trainable params, config, facts for the report)."""
        if arm in ("a", "b", "d"):
            s = copy.deepcopy(best)
            cfg = DistillConfig(**{**base_cfg, "tokens": tokens}, schedule="plain" if arm == "b" else "linear")
            tps = select_trainable(s, spec, cfg.trainable)
            what = "best init + " + ("plain distillation" if arm == "b" else "progressive replacement (linear, p0 0.5, ramp 50%)")
            replaced = sorted(li for g in spec.groups for li in g)
            if arm == "d":
                # + LoRA on the unshared layers behind the first shared one (the ones before it
                # are the reused teacher prefix); they join the replacement schedule, so a step
                # that keeps one of them original never sees its LoRA
                dense = [li for li in range(replaced[0], teacher.config.num_hidden_layers) if li not in replaced]
                tps += add_dense_lora(s, args.dense_lora_rank, norms=False, layers=dense, freeze=False)
                replaced = sorted(replaced + dense)
                what += f" + LoRA r={args.dense_lora_rank} on unshared layers {dense} (merged: no extra parameters)"
            info = {"what": what, "trains": cfg.trainable, "trainable_params": sum(tp.param.numel() for tp in tps)}
            return HybridModel(s, teacher, replaced), [tp.param for tp in tps], cfg, info
        if arm in ("e", "f"):  # remove the --drop-layers least influential layers, share pairs for the rest of the budget
            if "e" not in built:  # built once per run (the throughput probe builds every arm too; the copy below trains)
                built["e"] = build_drop_init()
            e_model, e_plan = built["e"]
            s = copy.deepcopy(e_model).to(ctx.device)
            es = s.edgedelta_spec
            what = (f"CompressConfig.drop_layers={args.drop_layers}: removal of layers {e_plan['removed_layers']} + delta "
                    f"sharing {[[es.source_of(li) for li in g] for g in es.groups]} (original numbering), plain distillation")
            extra = {}
            if arm == "f":  # + what c's healing has: distill's 'layer-lora' (every unshared layer), at c's learning rate
                extra = {"lr": args.heal_lr, "trainable": base_cfg["trainable"] + ["layer-lora"], "lora_rank": args.dense_lora_rank}
                what += (f" + LoRA r={args.dense_lora_rank} on the {len(es.source_layers) - sum(map(len, es.groups))} unshared layers "
                         f"(merged: no extra parameters), lr {args.heal_lr}")
                if "lora" in base_cfg["trainable"]:
                    what += f", + LoRA r={args.dense_lora_rank} on each shared base (merged into it)"
            cfg = DistillConfig(**{**base_cfg, "tokens": tokens, **extra}, schedule="plain")
            n_params = count_parameters(s)["total"]  # before a LoRA is attached (merged later: no extra parameters)
            tps = select_trainable(s, es, cfg.trainable, cfg.lora_rank, cfg.seed)
            info = {"what": what, "params": n_params, "trains": cfg.trainable,
                    "trainable_params": sum(tp.param.numel() for tp in tps)}
            # as distill() builds it: with arm f's LoRA every layer is swapped, no teacher prefix
            return HybridModel.for_spec(s, teacher, es, arm == "f"), [tp.param for tp in tps], cfg, info
        if "c" not in built:  # as for e: block influence and removal once per run
            built["c"] = shortgpt.build(teacher, n_student, calib)
        base = built["c"]
        s = copy.deepcopy(base.model).to(ctx.device)
        trainable_a = sum(p.numel() for n, p in student.named_parameters() if "delta_" in n or n.endswith(".gate"))
        per_rank = sum(lin.in_features + lin.out_features for lin in s.modules() if isinstance(lin, torch.nn.Linear)
                       and lin is not s.get_output_embeddings())
        rank = args.c_lora_rank or max(1, round(trainable_a / per_rank))
        n_params = count_parameters(s)["total"]  # before the LoRA is attached, as for arm f
        tps = add_dense_lora(s, rank, norms=True)
        cfg = DistillConfig(**{**base_cfg, "tokens": tokens, "lr": args.heal_lr, "trainable": ["lora", "norms"]}, schedule="plain")
        info = {"what": f"ShortGPT removal ({base.report.get('detail', base.report)}) + LoRA r={rank} merged + norms",
                "params": n_params, "lora_rank": rank, "report": base.report,
                "trainable_params": sum(tp.param.numel() for tp in tps)}
        # evaluated with the LoRA parametrization in place (the same function as merged; a
        # deepcopy + merge would strip the parametrized class shared with the original)
        return WholeStudent(s), [tp.param for tp in tps], cfg, info

    tokens = args.tokens
    if args.deadline:  # fit the tokens per arm to the time left: same tokens for every arm
        rates, peak = {}, {}
        for arm in arms:
            rates[arm], peak[arm] = probe_fitting(lambda: build_arm(arm, args.tokens)[:3], base_cfg, teacher, data, ctx)
        results.data["meta"].update(grad_accum=base_cfg["grad_accum"], probe_peak_gib=peak)
        evals = len(arms) * len(eval_at) + ("c" in arms)
        left = args.deadline - (time.time() - t_start) - evals * (evaluate.last_seconds or 30) - 15
        fit = int(0.9 * max(left, 0) / sum(1 / r for r in rates.values()))
        per_step = args.batch * args.seq_len
        tokens = max(per_step, min(args.tokens, fit // per_step * per_step))
        eval_at = sorted({max(per_step, round(t * tokens / args.tokens)) for t in eval_at})
        results.data["meta"]["deadline"] = {"seconds": args.deadline, "probe_tok_s": {a: round(r) for a, r in rates.items()},
                                            "tokens_per_arm": tokens, "asked": args.tokens, "eval_at": eval_at}
        print(f"deadline {args.deadline}s: probe {rates} tok/s (grad_accum {base_cfg['grad_accum']}, peak GiB {peak}) -> "
              f"{tokens:,} tokens per arm (asked {args.tokens:,}), eval at {eval_at}", flush=True)
    for arm in arms:
        view, params, cfg, info = build_arm(arm, tokens)
        results.arm(arm, info)
        if arm in ("c", "e", "f"):
            results.point(arm, 0, evaluate(view.student))
        run_arm(arm, view, teacher, params, data, cfg, ctx, evaluate, results, eval_at)
    results.data["meta"]["total_seconds"] = round(time.time() - t_start, 1)
    results.save()
    write_report(out, args.tag)
    return 0


# --- report ------------------------------------------------------------------------------

def write_report(out: Path, tag: str) -> None:
    data = json.loads((out / f"{tag}.json").read_text())
    meta, pts, arms = data["meta"], data["points"], data.get("arms", {})
    teacher = next((p for p in pts if p["arm"] == "teacher"), None)
    lines = [f"# Recovery benchmark ({tag})", "",
             f"Model {meta.get('model')}, keep {meta.get('target_params')} of unique parameters; device {meta.get('device')} "
             f"({meta.get('threads')} threads), seq {meta.get('seq_len')}, batch {meta.get('batch')}. Training text: "
             f"{meta.get('train_text')}. Evaluation: {', '.join(meta.get('eval_texts', []))}, first {meta.get('eval_tokens_per_text')} "
             "tokens of each (never trained on). KL = KL(teacher || model) per token, nats.", ""]
    if meta.get("deadline"):
        d = meta["deadline"]
        lines += [f"Time-boxed: every arm done within {d['seconds']:.0f} s of the start; a {len(d['probe_tok_s'])}-arm throughput "
                  f"probe ({', '.join(f'{a}: {r:,} tok/s' for a, r in d['probe_tok_s'].items())}) set {d['tokens_per_arm']:,} "
                  f"training tokens per arm (asked: {d['asked']:,}).", ""]
    lines += ["| arm | tokens | ppl python-docs | ppl sotu-recent | KL python-docs | KL sotu-recent | ppl / teacher (mean) | train tok/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in pts:
        ratio = ""
        if teacher:
            ratio = f"{sum(p[n]['ppl'] / teacher[n]['ppl'] for n in EVAL_SETS) / len(EVAL_SETS):.2f}x"
        lines.append(f"| {p['arm']} | {p['tokens']:,} | {p['python-docs']['ppl']} | {p['sotu-recent']['ppl']} | {p['python-docs']['kl']} | "
                     f"{p['sotu-recent']['kl']} | {ratio} | {p.get('train_tok_s', '')} |")
    if meta.get("notes"):
        lines += ["", "## Findings", "", *[f"- {n}" for n in meta["notes"]]]
    lines += ["", "## Arms", ""]
    for name, info in arms.items():
        short = {k: v for k, v in info.items() if k not in ("log", "config", "groups", "report", "plan")}
        lines.append(f"- **{name}**: {json.dumps(short)}")
        if "groups" in info:
            for g in info["groups"]:
                lines.append(f"  - group {g['group']}: normalised MSE {g['mse_before']:.4f} -> {g['mse_after']:.4f} "
                             f"({g['tokens_processed']:,} tokens processed, {g['seconds']} s)")
        if "plan" in info:
            lines.append(f"  - plan: {json.dumps(info['plan'])}")
    lines += ["", f"Started {meta.get('started')}; total {meta.get('total_seconds', 'unfinished')} s. Loss curves: {tag}_loss.png.", ""]
    (out / f"{tag}.md").write_text("\n".join(lines))
    curves = {k: v["log"] for k, v in arms.items() if v.get("log")}
    if curves:
        (out / f"{tag}_loss.png").write_bytes(loss_curve_png([], title="recovery: training loss", curves=curves))


if __name__ == "__main__":
    raise SystemExit(main())
