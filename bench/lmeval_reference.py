"""Reference check: our scorer vs lm-eval-harness's HFLM on the same items of the default model.

lm-eval-harness (0.4.x) cannot fetch its datasets offline, but its model class can score local
requests: we give HFLM.loglikelihood the exact (context, continuation) pairs of our built-in
tasks and compare per-request log-likelihoods and greedy flags, and acc / acc_norm computed
from them with lm-eval's rule (argmax of ll, and of ll / len(choice)). lm-eval is not a
dependency: point --lm-eval-src at an unpacked wheel (pip download lm-eval --no-deps; unzip).

  python bench/lmeval_reference.py --lm-eval-src /tmp/lmeval/src --tasks arc_easy,piqa,winogrande --limit 40
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.evaluation import metrics  # noqa: E402
from edgedelta.evaluation.scoring import Request, TorchScorer  # noqa: E402
from edgedelta.evaluation.tasks import load_task, select  # noqa: E402
from edgedelta.fsutil import write_json_atomic  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm-eval-src", required=True, help="folder containing the lm_eval package")
    p.add_argument("--tasks", default="arc_easy,piqa,winogrande")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    sys.path.insert(0, a.lm_eval_src)
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from edgedelta.loading import load_model

    lm = load_model("default")
    ref = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=8)
    ours = TorchScorer(lm.model, lm.tokenizer)
    out = {"lm_eval_version": lm_eval.__version__, "limit": a.limit, "tasks": {}}
    md = [f"# Scorer vs lm-eval-harness {lm_eval.__version__} (HFLM.loglikelihood), default model, same items", "",
          "| task | n | our acc | lm-eval acc | our acc_norm | lm-eval acc_norm | max abs Δ loglik | greedy flags equal | our s | lm-eval s |",
          "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name in a.tasks.split(","):
        items = select(load_task(name), a.limit, 1234)
        reqs = [Request(c, k) for it in items for c, k in zip(it.contexts, it.continuations)]
        t = time.time()
        mine = ours.loglikelihood(reqs)
        t_mine = time.time() - t
        inst = [Instance(request_type="loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=i) for i, r in enumerate(reqs)]
        t = time.time()
        theirs = ref.loglikelihood(inst, disable_tqdm=True)
        t_ref = time.time() - t
        res = {}
        for who, rs in (("ours", mine), ("lm_eval", theirs)):
            lls, k = [], 0
            for it in items:
                lls.append([float(r[0]) for r in rs[k : k + len(it.continuations)]])
                k += len(it.continuations)
            res[who] = metrics.multiple_choice(lls, [it.gold for it in items], [it.norm_chars for it in items])
        diff = max(abs(x[0] - y[0]) for x, y in zip(mine, theirs))
        same_greedy = all(bool(x[1]) == bool(y[1]) for x, y in zip(mine, theirs))
        out["tasks"][name] = {"n": len(items), "ours": res["ours"], "lm_eval": res["lm_eval"], "max_abs_loglik_diff": diff,
                              "greedy_equal": same_greedy, "seconds_ours": round(t_mine, 1), "seconds_lm_eval": round(t_ref, 1)}
        o, r = res["ours"], res["lm_eval"]
        md.append(f"| {name} | {len(items)} | {100 * o['acc']:.1f} | {100 * r['acc']:.1f} | {100 * o['acc_norm']:.1f} | "
                  f"{100 * r['acc_norm']:.1f} | {diff:.2e} | {same_greedy} | {t_mine:.0f} | {t_ref:.0f} |")
        print(md[-1], flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(a.out) / "lmeval_reference.json", out)
    (Path(a.out) / "lmeval_reference.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
