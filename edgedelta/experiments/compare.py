"""`compare(...)`: DeltaLLM against the structured-pruning baselines at the same unique-parameter
count, optionally each healed with the same distillation tokens, all evaluated on the same
items. Writes results.json, results.md and retention.png (% of the original's average).

Fairness rules: the delta model is built first and its actual unique-parameter count becomes
every baseline's target (so all sit at the same budget, within each method's granularity,
reported); calibration rows (for planning/importance) and healing rows come from training
text (`text`, default mixed-train), disjoint from the evaluation items and held-out perplexity text; healing
uses the same rows for every method and one recipe (edgedelta/recipes.py): the DeltaLLM methods
distil with its distillation, the baselines train a LoRA (merged after) at its lr and batch,
sized to the first healed DeltaLLM method's trainable-parameter count."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.text import DEFAULT_TRAIN_TEXT, check_training_text
from ..delta.config import check_drop_layers
from .. import recipes
from ..errors import ConfigError, EdgeDeltaError
from ..evaluation.api import EvalConfig, evaluate
from .methods import DEFAULT_METHODS, METHODS


@dataclass
class CompareConfig:
    target_params: float = 0.88  # fraction of the original's unique parameters to keep
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    heal_tokens: int = 0  # distillation tokens per method (0 = no healing)
    heal_seq_len: int = 256
    calib_samples: int = 32  # calibration rows for planning / importance scores (compress's default)
    calib_seq_len: int = 256
    text: str = DEFAULT_TRAIN_TEXT  # calibration and healing text: a training text set or a file/folder
    seed: int = 0
    compress: dict = field(default_factory=dict)  # extra CompressConfig fields for DeltaLLM (e.g. ranks)
    # the healing protocol (edgedelta/recipes.py; None = the recipe measured best at target_params):
    # the DeltaLLM methods distil with its distillation, the baselines heal at its lr and batch
    recipe: str | None = None
    distill: dict = field(default_factory=dict)  # extra DistillConfig fields for the DeltaLLM methods' healing
    drop_layers: int | str | None = None  # layers deltallm-drop removes first; None = the drop-share recipe's count
    # folder keeping each DeltaLLM build (a compressed model directory per method and settings):
    # a later run at the same settings loads it instead of compressing again (minutes at 0.5B)
    build_cache: str | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if not 0 < float(self.target_params) < 1:
            raise ConfigError(f"target_params must be a fraction in (0, 1), got {self.target_params}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
        if self.drop_layers is not None:
            check_drop_layers(self.drop_layers, least=1)  # deltallm-drop's count ('auto': searched, 0 included)
        if self.recipe is None:
            self.recipe = recipes.best_for(float(self.target_params)).recipe.name
        if recipes.get(self.recipe).distill is None:
            raise ConfigError(f"recipe '{self.recipe}' heals only pruned models; the healing protocol needs one that also "
                              f"distils the DeltaLLM methods: {', '.join(n for n, r in recipes.RECIPES.items() if r.distill)}")
        if self.heal_tokens < 0:
            raise ConfigError(f"heal tokens must be >= 0, got {self.heal_tokens}")
        check_training_text(self.text)
        if 0 < self.heal_tokens < self.heal_seq_len:
            raise ConfigError(f"heal tokens ({self.heal_tokens}) must be at least one sequence ({self.heal_seq_len})")


def _log(msg: str) -> None:
    print(f"edgedelta compare: {msg}", file=sys.stderr, flush=True)


def _build(method: str, model, tok, target, calib, progress: bool, compress_kw: dict):
    """(model, report) for one method at `target` (fraction or absolute unique params)."""
    if method.startswith("deltallm"):
        try:
            from ..delta.compress import compress
        except ImportError as e:
            raise ConfigError(f"DeltaLLM is unavailable (edgedelta.delta.compress: {e})") from None
        from ..delta.accounting import count_parameters
        from ..delta.config import CompressConfig

        fraction = target / count_parameters(model)["total"] if isinstance(target, int) else float(target)
        ccfg = CompressConfig(**{"calib_samples": calib.shape[0], "calib_seq_len": calib.shape[1], **compress_kw,
                                 "target_params": fraction})
        res = compress(model, ccfg, tokenizer=tok, calib_ids=calib, progress=progress)
        return res.model, {"method": method, "plan": res.plan, "params": res.plan["compressed_params"]}
    from ..baselines import jointdrop, laco, shortgpt, slicegpt

    mod = {"shortgpt": shortgpt, "laco": laco, "jointdrop": jointdrop, "slicegpt": slicegpt}[method]
    # LaCo evaluates every candidate merge on the calibration set: a few rows suffice (paper: few-shot sentences)
    r = mod.build(model, target, calib[:2] if method == "laco" else calib)
    return r.model, r.report


def _cached_build(method: str, model, tok, target, calib, progress: bool, compress_kw: dict, config: CompareConfig,
                  source: dict | None):
    """_build, its time in report["build_seconds"]; through config.build_cache for the DeltaLLM
    methods: the key is everything the build depends on (method, target, calibration rows and
    text, compress settings, the model's source and size), so a kept build is the one this call
    would make, and it keeps the time its build took."""
    folder = key = None
    if config.build_cache and method.startswith("deltallm"):
        from ..delta.accounting import count_parameters
        from ..delta.storage import load_compressed
        from ..manifest import read_manifest

        key = {"method": method, "target": target, "calib": list(calib.shape), "calib_sum": int(calib.sum()),
               "seed": config.seed, "compress": compress_kw, "source": source or {}, "params": count_parameters(model)["total"]}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        folder = Path(config.build_cache) / f"{method}-{digest}"
        if folder.is_dir():
            _log(f"{method}: the build kept in {folder}")
            return load_compressed(folder).model, {**read_manifest(folder)["report"], "loaded_from": str(folder)}
    t0 = time.time()
    student, report = _build(method, model, tok, target, calib, progress, compress_kw)
    report["build_seconds"] = round(time.time() - t0, 1)
    if folder is not None:
        from ..delta.storage import save_compressed

        save_compressed(student, folder, tokenizer=tok, manifest_facts={"report": report, "build_key": key, "source": source or {}},
                        force=True)  # the source names the teacher for a later `edgedelta distill` of the kept build
    return student, report


def _heal(method: str, student, teacher, tok, rows, config: CompareConfig, lora_params: int, progress: bool) -> dict:
    """Heal `student` in place on `rows`; returns the report, with the trainable-parameter count."""
    recipe = recipes.get(config.recipe)
    if method.startswith("deltallm"):
        import torch

        from ..distill.api import distill
        from ..distill.config import DistillConfig

        cfg = DistillConfig.from_recipe(recipe, **{"tokens": int(rows.numel()), "seq_len": rows.shape[1], "recon_tokens": 0,
                                                    "checkpoint_every": 0, "seed": config.seed, **config.distill})
        how = (f"edgedelta.distill, recipe {recipe.name}: trains {'+'.join(cfg.trainable)}"
               + (f" (LoRA rank {cfg.lora_rank}, merged)" if {"lora", "layer-lora"} & set(cfg.trainable) else "")
               + f", schedule {cfg.schedule}")
        with tempfile.TemporaryDirectory(prefix="edgedelta-heal-") as run:
            r = distill(student, cfg, None, teacher=teacher, tokenizer=tok, train_rows=rows, run_dir=Path(run) / "run",
                        progress=progress, device="cpu" if not torch.cuda.is_available() else "auto")
        return {"tokens": r.tokens, "seconds": round(r.seconds, 1), "final_loss": r.final_loss,
                "trainable_params": r.trainable_params, "lr": cfg.lr, "batch": cfg.batch_size, "recipe": recipe.name, "how": how,
                "losses": [round(x["loss"], 4) for x in r.log], "rollbacks": len(r.rollbacks)}
    from ..baselines.heal import heal, rank_for_budget

    lr, batch = recipe.heal.lr, recipe.heal.batch_size
    rank = recipe.heal.lora_rank or (rank_for_budget(student, lora_params) if lora_params else 8)
    out = heal(student, teacher, rows, rank=rank, lr=lr, batch_size=batch, progress=progress, seed=config.seed)
    out["lr"], out["batch"], out["recipe"] = lr, batch, recipe.name
    if recipe.heal.lora_rank:
        out["how"] = f"LoRA rank {rank} (recipe {recipe.name}), merged"
    else:
        out["how"] = (f"LoRA rank {rank} (matched to the delta model's {lora_params / 1e6:.2f}M trainable parameters), merged"
                      if lora_params else f"LoRA rank {rank} (no delta model healed to match), merged")
    return out


def compare(model, tokenizer, config: CompareConfig, source: dict | None = None, progress: bool = True,
            original_eval: dict | None = None, on_row=None, previous: list[dict] | None = None) -> dict:
    """Build, (heal,) evaluate every method; returns the results dict (see write_results).
    `original_eval` reuses an evaluation of the original (same EvalConfig); `on_row(row)` is
    called after each newly evaluated row (benchmarks save partial results with it).
    `previous` holds the rows of an earlier run at the same budget and settings (an interrupted
    or a built-only one): a method whose last row (healed, or built without healing) is there is
    not rebuilt, and a rebuilt method keeps its built row when its unique-parameter count is
    the same (building is deterministic), so only healing and the healed evaluation are new."""
    from ..data.text import calibration_batches
    from ..delta.accounting import count_parameters

    t0 = time.time()
    original = count_parameters(model)["total"]
    calib = calibration_batches(tokenizer, config.calib_samples, config.calib_seq_len, seed=config.seed, source=config.text)
    heal_rows = None
    if config.heal_tokens:
        heal_rows = calibration_batches(tokenizer, config.heal_tokens // config.heal_seq_len, config.heal_seq_len,
                                        seed=config.seed + 1, source=config.text)
    if original_eval is None:
        _log(f"evaluating the original ({original / 1e6:.1f}M unique parameters)")
        original_eval = evaluate(model, tokenizer, config.eval, progress=progress)
    rows = [{"method": "original", "stage": "original", "params": original, "params_fraction": 1.0, "eval": original_eval}]
    notify = on_row or (lambda row: None)
    target: float | int = config.target_params
    lora_params = 0
    earlier = {(r["method"], r["stage"]): r for r in previous or [] if "eval" in r}
    last_stage = "healed" if heal_rows is not None else "built"
    # the DeltaLLM methods first (deltallm before deltallm-drop): the first one sets the budget of
    # the rest, and its healing the baselines' LoRA size
    methods = sorted(config.methods, key=lambda m: (not m.startswith("deltallm"), m != "deltallm"))
    for method in methods:
        if (method, last_stage) in earlier:
            kept = [earlier[k] for k in ((method, "built"), (method, "healed")) if k in earlier]
            _log(f"{method}: kept from the earlier run ({', '.join(r['stage'] for r in kept)})")
            rows += kept
            if method.startswith("deltallm") and not isinstance(target, int):
                target = kept[0]["params"]
            if method.startswith("deltallm") and not lora_params and "heal" in kept[-1]:
                lora_params = kept[-1]["heal"]["trainable_params"]
            continue
        _log(f"building {method} at {target if isinstance(target, int) else f'{100 * target:.0f}%'}")
        try:
            kw = {"calib_text": config.text, **config.compress}
            if method == "deltallm-drop":
                kw["drop_layers"] = config.drop_layers if config.drop_layers is not None else recipes.DROP_SHARE.plan.drop_layers(
                    float(config.target_params), model.config.num_hidden_layers)
            student, report = _cached_build(method, model, tokenizer, target, calib, progress, kw, config, source)
        except EdgeDeltaError as e:
            _log(f"{method} failed: {e}")
            rows.append({"method": method, "stage": "built", "error": str(e)})
            notify(rows[-1])
            continue
        params = count_parameters(student)["total"]
        report["params"] = params
        if method.startswith("deltallm") and not isinstance(target, int):
            target = params
        built = earlier.get((method, "built"))
        if built is not None and built["params"] == params:
            _log(f"{method}: same build as the earlier run ({params} parameters), its evaluation kept")
            rows.append(built)
        else:
            rows.append({"method": method, "stage": "built", "params": params, "params_fraction": params / original,
                         "report": report, "eval": evaluate(student, tokenizer, config.eval, progress=progress)})
            notify(rows[-1])
        if heal_rows is not None:
            _log(f"healing {method} on {heal_rows.numel()} tokens")
            h = _heal(method, student, model, tokenizer, heal_rows, config, lora_params, progress)
            if method.startswith("deltallm") and not lora_params:
                lora_params = h["trainable_params"]
            params = count_parameters(student)["total"]
            rows.append({"method": method, "stage": "healed", "params": params, "params_fraction": params / original,
                         "report": report, "heal": h, "eval": evaluate(student, tokenizer, config.eval, progress=progress)})
            notify(rows[-1])
        del student
    return {"config": {**asdict(config), "eval": asdict(config.eval)}, "source": source or {}, "original_params": original,
            "budget_params": target if isinstance(target, int) else round(original * target), "rows": rows,
            "seconds": round(time.time() - t0, 1), "eval_text": _texts_note(config)}


def _texts_note(config: CompareConfig) -> str:
    return (f"calibration and healing: {config.text}; perplexity: "
            f"{', '.join(config.eval.ppl_texts)}; tasks: {', '.join(t for t in config.eval.tasks if t != 'ppl')} "
            f"({'all items' if config.eval.limit is None else f'{config.eval.limit} items each, seed {config.eval.seed}'})")


def write_results(res: dict, out_dir: Path, title: str) -> None:
    """results.json, results.md, retention.png into out_dir (already a fresh folder)."""
    from ..fsutil import write_json_atomic
    from ..evaluation.report import markdown_compare, markdown_paired, retention, retention_chart

    write_json_atomic(out_dir / "results.json", res)
    ok = [r for r in res["rows"] if "eval" in r]
    ref = ok[0]
    md = [f"# {title}", "", res["eval_text"], ""]
    for stage in ("built", "healed"):
        sel = [ref] + [r for r in ok if r["stage"] == stage]
        if len(sel) > 1:
            md += [f"## {'without healing' if stage == 'built' else 'healed with equal tokens'}", "", markdown_compare(sel), "",
                   markdown_paired(sel)]
    failed = [r for r in res["rows"] if "error" in r]
    if failed:
        md += ["## not built", ""] + [f"- {r['method']}: {r['error']}" for r in failed] + [""]
    (out_dir / "results.md").write_text("\n".join(md))
    groups: dict[str, dict[str, float]] = {}
    for r in ok[1:]:
        ret = retention(r["eval"], ref["eval"])
        if ret is not None:
            groups.setdefault("healed" if r["stage"] == "healed" else "no healing", {})[r["method"]] = 100 * ret
    if groups:
        retention_chart(groups, out_dir / "retention.png", title)
