"""The main job in one call: compress → distill → evaluate → export (original and compressed)
→ sample generation from the artifact → profile and plan per device → one report folder.

Every stage writes its output atomically and is recorded in `stages.json` with a key: the
hash of its config and of its inputs' manifests. A re-run after a failure or an interrupt
reuses each stage whose key is unchanged and whose output still verifies, so it resumes
instead of starting over."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, EdgeDeltaError, ModelLoadError
from .models.registry import is_builtin_name
from .models.size import stored_parameters
from .fsutil import check_creatable, write_json_atomic, write_text_atomic
from .evaluation.tasks import DEFAULT_TASKS, QUICK_TASKS
from .manifest import MANIFEST, verify_manifest
from .recipes import RECIPES, Recipe, best_for
from .recipes import get as get_recipe

PIPELINE_VERSION = 1
# Time estimates on 2 cores: what each stage cost at REFERENCE_PARAMS (SmolLM2-135M) in the quick
# pipeline's own stage times (bench/results/pipeline_quick.json, stage_seconds), scaled linearly
# with the stored parameters of the model being compressed. Checked at 1.5B (1,777,088,000 stored
# parameters, bench/results/stages_qwen2.5-coder-1.5b.json): the quick estimate is 96.7 min against
# 89.9 measured; per stage, measured/estimated is 0.62 for compress, 1.14 for distill, 0.81 for
# evaluate and 1.0 for the exports and plans together.
REFERENCE_PARAMS = 134_515_008
COMPRESS_S = 121  # one compression: calibration, layer sensitivity, group initialisation
DISTILL_TOK_S = 162  # distillation tokens per second (32,768 in 203 s)
EVAL_S_PER_ITEM = 0.1  # one zero-shot item, per model (300 items in about 30 s)
EVAL_S_PER_PPL_TOKEN = 1.4e-3  # one held-out token, per model (2 x 4,096 in about 11 s)
EXPORT_AND_PLAN_S = 33  # both fp32 exports, the sample generation and the device plans


# budgets (a recipe sets the method; these set how much is spent measuring it)
FULL_BUDGET = dict(contexts=[512, 2048], tasks=list(DEFAULT_TASKS), limit=500, ppl_tokens=16384)
QUICK_BUDGET = dict(contexts=[256, 1024], tasks=list(QUICK_TASKS), limit=100, ppl_tokens=4096)


@dataclass
class PipelineConfig:
    """The main job's settings. Fields left None come from the recipe (the one measured best
    at target_params unless `recipe` names one) and from the full or quick budget."""

    model: str = field(default="default", metadata={"help": "'default', a model directory or a .gguf file"})
    target_params: float = field(default=0.88, metadata={"help": "fraction of unique parameters to keep"})
    recipe: str | None = field(default=None, metadata={"help": "recipe name (edgedelta/recipes.py); None = measured best at target_params"})
    drop_layers: int | str | None = field(default=None, metadata={"help": "layers removed before sharing, or 'auto'; None = the recipe's"})
    tokens: int | None = field(default=None, metadata={"help": "distillation tokens (0 = no training); None = the recipe's budget"})
    recon_tokens: int | None = field(default=None, metadata={"help": "per-group reconstruction tokens; None = the recipe's"})
    devices: str = field(default="all", metadata={"help": "device names (comma-separated) or 'all'"})
    contexts: list[int] | None = field(default=None, metadata={"help": "context lengths to plan for"})
    cpu_arch: str = field(default="x86_64", metadata={"help": "CPU the artifacts are laid out for (export --cpu-arch)"})
    tasks: list[str] | None = None
    limit: int | None = field(default=None, metadata={"help": "items per zero-shot task"})
    ppl_tokens: int | None = field(default=None, metadata={"help": "tokens per held-out text for perplexity"})
    calib_samples: int | None = field(default=None, metadata={"help": "calibration sequences for compression"})
    prompt: str = field(default="What should I check first when a conveyor belt motor overheats?", metadata={"help": "sample generation prompt"})
    quick: bool = False
    recipe_why: str = ""  # filled in: why this recipe (the measurement that chose it)
    version: int = PIPELINE_VERSION

    def __post_init__(self):
        from .delta.config import check_drop_layers  # lazy: it imports torch
        from .export.config import ExportConfig

        if not 0 < self.target_params < 1:
            raise ConfigError(f"target_params must be in (0, 1), got {self.target_params}")
        if self.recipe is None:
            choice = best_for(self.target_params)
            self.recipe, self.recipe_why = choice.recipe.name, choice.why
        elif not self.recipe_why:
            self.recipe_why = "chosen with --recipe"
        recipe = self.the_recipe()
        if recipe.distill is None:
            raise ConfigError(f"recipe '{recipe.name}' is the pruning reference that compare and the benchmarks heal; the "
                              f"pipeline builds a shared model: choose one of {', '.join(r for r in RECIPES if RECIPES[r].shares)}")
        budget = QUICK_BUDGET if self.quick else FULL_BUDGET
        for name, value in budget.items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        dist = recipe.distill.config_fields(self.quick)
        if self.tokens is None:
            self.tokens = dist["tokens"]
        if self.recon_tokens is None:
            self.recon_tokens = dist["recon_tokens"]
        if self.calib_samples is None:
            self.calib_samples = recipe.init.quick_calib_samples if self.quick else recipe.init.calib_samples
        if self.drop_layers is not None:
            check_drop_layers(self.drop_layers)
        if self.tokens < 0 or self.recon_tokens < 0:
            raise ConfigError(f"tokens and recon_tokens must be >= 0, got {self.tokens}, {self.recon_tokens}")
        ExportConfig(cpu_arch=self.cpu_arch)  # the exporter's own check of the value
        if not self.contexts or any(c <= 0 for c in self.contexts):
            raise ConfigError(f"context lengths must be > 0, got {self.contexts}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be > 0, got {self.limit}")

    def the_recipe(self) -> Recipe:
        return get_recipe(self.recipe)

    @classmethod
    def quick_config(cls, **overrides) -> "PipelineConfig":
        """Budgets that finish in about 15 minutes on 2 cores: a real but small result."""
        return cls(quick=True, **{k: v for k, v in overrides.items() if v is not None})

    def quick_twin(self) -> "PipelineConfig":
        """This run's model, budget and recipe with the quick budgets."""
        return PipelineConfig.quick_config(model=self.model, target_params=self.target_params, recipe=self.recipe,
                                           drop_layers=self.drop_layers)

    @classmethod
    def from_json_file(cls, path) -> "PipelineConfig":
        from .configio import config_from_json_file

        return config_from_json_file(cls, path, "pipeline")

    def distill_config(self):
        """The DistillConfig of the distill stage: the recipe's, at this run's token budgets."""
        from .distill.config import DistillConfig

        return DistillConfig.from_recipe(self.the_recipe(), self.quick, tokens=self.tokens, recon_tokens=self.recon_tokens,
                                         checkpoint_every=20)

    def expected_minutes(self, params: int | None = None) -> float:
        """A rough wall-time estimate on 2 cores (printed before the run starts), for a model of
        `params` stored parameters (None: the reference model's size)."""
        compression = COMPRESS_S * (6 if self.drop_layers == "auto" else 1)  # 'auto' compresses once per count (about 5 at 12%)
        train = (self.tokens + 2 * self.recon_tokens) / DISTILL_TOK_S
        items = sum(t != "ppl" for t in self.tasks) * (self.limit or 1000)
        evaluation = 2 * (items * EVAL_S_PER_ITEM + 2 * self.ppl_tokens * EVAL_S_PER_PPL_TOKEN)  # original and compressed
        scale = (params or REFERENCE_PARAMS) / REFERENCE_PARAMS
        return round((compression + train + evaluation + EXPORT_AND_PLAN_S) * scale / 60, 1)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def manifest_digest(folder: Path) -> str:
    """A folder's identity: the hash of its manifest (which holds every file's sha256)."""
    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()[:16]


class Stages:
    """stages.json: which stage ran with which key and produced what."""

    def __init__(self, out: Path, log: Callable[[str], None], total: int):
        self.out, self.log, self.total, self.n = out, log, total, 0
        self.path = out / "stages.json"
        self.state: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.state = json.loads(self.path.read_text())
            except (ValueError, OSError) as e:  # JSONDecodeError, UnicodeDecodeError
                log(f"stages.json is unreadable ({type(e).__name__}); running every stage again")
            if not isinstance(self.state, dict):
                log("stages.json is not a table; running every stage again")
                self.state = {}

    def run(self, name: str, key_parts: Any, output: Path, fn: Callable[[], Any]) -> Any:
        self.n += 1
        key = _digest(key_parts)
        rec = self.state.get(name)
        if rec and rec.get("key") == key and _still_valid(output):
            self.log(f"[{self.n}/{self.total}] {name}: unchanged, reusing {output.relative_to(self.out)}")
            return rec.get("result")
        self.log(f"[{self.n}/{self.total}] {name} ...")
        t0 = time.time()
        result = fn()
        self.state[name] = {"key": key, "output": str(output.relative_to(self.out)), "seconds": round(time.time() - t0, 1), "result": result}
        write_json_atomic(self.path, self.state)
        self.log(f"[{self.n}/{self.total}] {name}: done in {time.time() - t0:.0f} s")
        return result

    def skip(self, name: str, why: str) -> None:
        self.n += 1
        self.log(f"[{self.n}/{self.total}] {name}: skipped ({why})")


def _still_valid(output: Path) -> bool:
    if output.is_dir():
        try:
            verify_manifest(output)
            return True
        except EdgeDeltaError:
            return False
    return output.is_file()


def run_pipeline(cfg: PipelineConfig, out: Path, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Path:
    """Run (or resume) the whole job into `out`; returns the path of index.md."""
    from .devices import select as select_devices

    devices = select_devices(cfg.devices)  # bad device names fail before any work
    _check_inputs(cfg, out)  # a missing model or a file at --out: refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "pipeline_config.json", asdict(cfg))
    stages = Stages(out, log, total=7)
    log(f"recipe {cfg.recipe}: {cfg.recipe_why}")
    params = stored_parameters(cfg.model)
    size = f" for {params / 1e6:,.0f}M parameters" if params else ""
    log(f"edgedelta pipeline: {'quick' if cfg.quick else 'full'} budgets, expect roughly {cfg.expected_minutes(params):.0f} min "
        f"on 2 cores{size}" + ("" if cfg.quick else f" (--quick: about {cfg.quick_twin().expected_minutes(params):.0f} min)"))
    ctx = _Context(cfg)

    comp_dir = out / "compressed"
    # keyed by what compression reads: changing the training or evaluation budgets reuses it
    recipe = cfg.the_recipe()
    compress_key = [cfg.model, cfg.target_params, asdict(recipe.plan), asdict(recipe.init), cfg.drop_layers, cfg.calib_samples,
                    cfg.version]
    stages.run("compress", compress_key, comp_dir, lambda: ctx.compress(comp_dir))
    final_dir = comp_dir
    if cfg.tokens > 0:
        final_dir = out / "distilled"
        dcfg = cfg.distill_config()
        stages.run("distill", [manifest_digest(comp_dir), dcfg.to_dict()], final_dir, lambda: ctx.distill(comp_dir, final_dir, dcfg))
    else:
        stages.skip("distill", "no training tokens")
    eval_path = out / "quality.json"
    quality = stages.run("evaluate", [manifest_digest(final_dir), cfg.tasks, cfg.limit, cfg.ppl_tokens, cfg.model], eval_path,
                         lambda: ctx.evaluate(final_dir, eval_path))
    ctx.release_original()
    art_orig, art_comp = out / "artifacts" / "original", out / "artifacts" / "compressed"
    stages.run("export original", [cfg.model, "fp32", cfg.cpu_arch], art_orig, lambda: ctx.export(cfg.model, art_orig))
    stages.run("export compressed", [manifest_digest(final_dir), "fp32", cfg.cpu_arch], art_comp,
               lambda: ctx.export(str(final_dir), art_comp))
    sample = stages.run("sample generation", [manifest_digest(art_comp), cfg.prompt], out / "sample.json",
                        lambda: ctx.sample(art_comp, out / "sample.json"))
    dev_dir = out / "devices"
    stages.run("devices", [manifest_digest(art_orig), manifest_digest(art_comp), cfg.devices, cfg.contexts], dev_dir / "report.md",
               lambda: ctx.devices(art_orig, art_comp, devices, dev_dir))
    return write_index(out, cfg, stages.state, quality, sample)


def _check_inputs(cfg: PipelineConfig, out: Path) -> None:
    check_creatable(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' exists and is not a folder")
    if is_builtin_name(cfg.model) and not Path(cfg.model).exists():  # 'default' or a built-in name: load_model resolves it
        return
    p = Path(cfg.model).expanduser()
    if not ((p.suffix == ".gguf" and p.is_file()) or (p / "config.json").is_file()):
        raise ModelLoadError(f"model '{cfg.model}' is not 'default', a .gguf file or a model folder with config.json")


class _Context:
    """Stage bodies; the original model is loaded once and kept for the stages that need it."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg, self._orig = cfg, None

    def release_original(self) -> None:
        """Drop the original model once no later stage reads it: each export loads what it
        exports, so holding it would keep one more model's weights (6 GB at 1.5B) through the
        export stages."""
        import gc

        self._orig = None
        gc.collect()

    def original(self):
        if self._orig is None:
            from .loading import load_model

            self._orig = load_model(self.cfg.model)
        return self._orig

    def compress(self, dest: Path) -> dict:
        from .delta.compress import compress, format_plan
        from .delta.config import CompressConfig
        from .delta.storage import save_compressed

        lm = self.original()
        recipe = self.cfg.the_recipe()
        drop = self.cfg.drop_layers
        if drop is None:
            drop = recipe.plan.drop_layers(self.cfg.target_params, lm.model.config.num_hidden_layers)
        ccfg = CompressConfig(target_params=self.cfg.target_params, calib_samples=self.cfg.calib_samples, drop_layers=drop,
                              share_attn=recipe.plan.share_attn, share_mlp=recipe.plan.share_mlp, base=recipe.init.base,
                              init=recipe.init.init, gates=recipe.init.gates, scale_base=recipe.init.scale_base)
        res = compress(lm.model, ccfg, tokenizer=lm.tokenizer, reuse_weights=True)  # saved, then dropped: nothing trains either model here
        facts = {"compress_config": ccfg.to_dict(), "plan": res.plan, "init_report": res.report["init"], "source": dict(lm.source)}
        save_compressed(res.model, dest, tokenizer=lm.tokenizer, manifest_facts=facts, force=True)
        plan_text = format_plan(res.plan)
        print(plan_text, file=sys.stderr)
        return {**{k: res.plan.get(k) for k in ("removed_layers", "groups", "ranks", "original_params", "compressed_params", "ratio")},
                "plan_text": plan_text}

    def distill(self, src: Path, dest: Path, dcfg) -> dict:
        from .delta.storage import load_compressed
        from .distill.api import distill
        from .distill.run_folder import run_dir_for
        from .distill.checkpoint import latest_checkpoint

        lm = self.original()
        run = run_dir_for(dest)
        resume = run.exists() and latest_checkpoint(run) is not None
        res = distill(load_compressed(src), dcfg, dest, teacher=lm.model, tokenizer=lm.tokenizer, resume=resume, force=True)
        return {"tokens": res.tokens, "seconds": round(res.seconds, 1), "tokens_per_s": round(res.tokens_per_s, 1), "final_loss": res.final_loss}

    def evaluate(self, final_dir: Path, dest: Path) -> dict:
        from .delta.accounting import count_parameters
        from .evaluation.api import EvalConfig, evaluate
        from .loading import load_model

        ecfg = EvalConfig(tasks=self.cfg.tasks, limit=self.cfg.limit, ppl_tokens=self.cfg.ppl_tokens,
                          ppl_seq_len=min(512, self.cfg.ppl_tokens))
        lm = self.original()
        comp = load_model(final_dir)
        n0 = count_parameters(lm.model)["total"]
        rows = []
        for name, m in (("original", lm), ("compressed", comp)):
            n = count_parameters(m.model)["total"]
            rows.append({"method": name, "params": n, "params_fraction": n / n0, "eval": evaluate(m.model, m.tokenizer, ecfg, progress=True)})
        write_json_atomic(dest, {"rows": rows, "model": self.cfg.model})
        return {r["method"]: {"average": r["eval"]["average"], "ppl": {k: v["ppl"] for k, v in (r["eval"]["ppl"] or {}).items()}} for r in rows}

    def export(self, model: str, dest: Path) -> dict:
        from .export import ExportConfig, export_onnx

        export_onnx(model, ExportConfig(cpu_arch=self.cfg.cpu_arch), dest, force=True)
        return {"path": str(dest)}

    def sample(self, artifact: Path, dest: Path) -> dict:
        from .runtime import Session

        s = Session.from_dir(artifact, provider="cpu")
        chat = getattr(s.tokenizer, "chat_template", None) is not None
        res = s.generate(self.cfg.prompt, max_new_tokens=48, chat=chat) if chat else s.generate(self.cfg.prompt, max_new_tokens=48)
        out = {"prompt": self.cfg.prompt, "text": res.text, "finish_reason": res.finish_reason}
        write_json_atomic(dest, out)
        return out

    def devices(self, art_orig: Path, art_comp: Path, devices, dest: Path) -> dict:
        from .devices.assess import assess
        from .devices.report import write_report
        from .fsutil import atomic_dir

        data = assess([art_orig, art_comp], self.cfg.contexts, devices, log=lambda m: print(m, file=sys.stderr))
        with atomic_dir(dest, force=True) as tmp:
            write_report(tmp, data, devices)
        return {"report": str(dest / "report.md")}


def write_index(out: Path, cfg: PipelineConfig, state: dict, quality: dict, sample: dict) -> Path:
    """index.md (+ index.html): plan, quality, artifact audit, device table, charts."""
    from .evaluation.report import markdown_compare
    from .export import audit, format_table

    comp = state["compress"]["result"]
    q = json.loads((out / "quality.json").read_text())
    lines = ["# edgedelta pipeline report", "",
             f"Model: `{cfg.model}`; target: keep {cfg.target_params:.0%} of unique parameters; "
             f"distillation: {cfg.tokens:,} tokens (+{cfg.recon_tokens:,} reconstruction){' — quick mode' if cfg.quick else ''}.", "",
             f"Recipe: `{cfg.recipe}` ({cfg.recipe_why}).", "",
             "## Compression plan", "",
             "Layers in the original model's numbering; each group shares one base per projection.", "",
             "```", comp["plan_text"], "```", "",
             "## Quality (original vs compressed)", "",
             "Perplexity on held-out text (never used for training or calibration): "
             + ", ".join(q["rows"][0]["eval"].get("ppl") or {}) + f"; zero-shot tasks limited to {cfg.limit} items each.", "",
             markdown_compare(q["rows"]), ""]
    if "distill" in state:
        d = state["distill"]["result"]
        lines += [f"Distillation: {d['tokens']:,} tokens in {d['seconds']:.0f} s ({d['tokens_per_s']:.0f} tok/s); loss curve: "
                  "[distilled/loss_curve.png](distilled/loss_curve.png)", ""]
    lines += ["## Artifacts (sharing audit)", ""]
    for name in ("original", "compressed"):
        lines += [f"### {name}", "", "```", format_table(audit(out / "artifacts" / name), max_rows=8), "```", ""]
    lines += ["## Sample generation (compressed artifact, ONNX Runtime CPU)", "", f"> {sample['prompt']}", "", "```",
              sample["text"].strip(), "```", "",
              "## Devices", "", "Full report: [devices/report.md](devices/report.md)", "",
              "![memory per device](devices/memory_per_device.png)", "", "![context vs memory](devices/context_memory.png)", ""]
    dev_md = (out / "devices" / "report.md").read_text()
    table_start = dev_md.find("## Fit and decode ceiling per device")
    if table_start >= 0:
        section = dev_md[table_start:].split("\n## ", 2)
        lines += [section[0].replace("## Fit and decode ceiling per device", "### Fit and decode ceiling per device"), ""]
    md = "\n".join(lines) + "\n"
    from .devices.report import md_to_html

    write_text_atomic(out / "index.html", md_to_html(md))
    write_text_atomic(out / "index.md", md)  # last: its presence means the report is complete
    return out / "index.md"
