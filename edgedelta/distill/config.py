"""DistillConfig: everything that decides a recovery run's result. Validated on
construction, written into the output manifest and every checkpoint, and compared field by
field on --resume (fields in RESUME_FREE may change between a run and its resumption)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..configio import config_from_dict, config_from_json_file
from ..data.text import DEFAULT_TRAIN_TEXT
from ..errors import ConfigError
from ..recipes import DELTALLM, RECIPES, Recipe

SCHEDULES = ("plain", "linear", "curriculum", "constant")
TRAINABLE = ("deltas", "gates", "norms", "shared", "lora", "layer-lora")
CURRICULUM_ORDERS = ("deep-first", "shallow-first")
RECON_INPUTS = ("teacher", "student")
CONFIG_VERSION = 1
# operational fields: changing them does not change the numbers a run produces
RESUME_FREE = frozenset({"checkpoint_every", "keep_checkpoints", "log_every", "teacher_cache"})
# the library defaults are the deltallm recipe's distillation (edgedelta/recipes.py); the CLI and
# the pipeline start from the recipe they are given instead
_R = DELTALLM.distill


def _f(default, help_: str, **kw):
    return field(default=default, metadata={"help": help_}, **kw)


@dataclass
class DistillConfig:
    tokens: int = _f(_R.tokens, "training tokens (global, all processes together); must be > 0")
    seq_len: int = _f(256, "tokens per training sequence")
    batch_size: int = _f(_R.batch_size, "sequences per optimizer step (global: split over processes and accumulation)")
    grad_accum: int = _f(1, "micro-steps per optimizer step in each process")
    lr: float = _f(_R.lr, "peak AdamW learning rate")
    min_lr_ratio: float = _f(0.1, "cosine decays to lr * min_lr_ratio")
    warmup_frac: float = _f(0.05, "fraction of steps of linear warm-up")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: tuple[float, float] = _f((0.9, 0.95), "AdamW betas")
    clip: float = _f(1.0, "gradient-norm clipping (0 = off)")
    schedule: str = _f(_R.schedule, f"module replacement schedule: one of {SCHEDULES} (plain = all compressed from step 0)")
    p0: float = _f(0.5, "replacement probability at step 0 (linear/curriculum/constant)")
    ramp_frac: float = _f(0.5, "fraction of the run over which p rises to 1; fully compressed afterwards")
    curriculum_order: str = _f("deep-first", f"curriculum: which layers ramp first, one of {CURRICULUM_ORDERS}")
    temperature: float = _f(1.0, "softmax temperature of the logit KL (loss scaled by T^2)")
    kl_weight: float = _f(1.0, "weight of KL(teacher || student) on logits")
    hidden_weight: float = _f(0.0, "weight of the normalised hidden-state MSE on compressed layers' outputs")
    lm_weight: float = _f(0.0, "weight of the next-token cross-entropy on the data")
    teacher_topk: int = _f(0, "0 = full teacher logits; k > 0 = KL on the teacher's top-k tokens (cacheable)")
    teacher_cache: str | None = _f(None, "folder caching the teacher's top-k logits across runs (needs teacher_topk > 0)")
    trainable: list[str] = _f(None, f"parameter kinds to train, subset of {TRAINABLE} (default {'+'.join(_R.trainable)})")
    lora_rank: int = _f(_R.lora_rank, "rank of the LoRA on shared bases ('lora') and on each unshared layer ('layer-lora')")
    recon_tokens: int = _f(0, "tokens for the per-group reconstruction stage before distillation (0 = skip)")
    recon_epochs: int = _f(2, "passes over the reconstruction tokens per group")
    recon_lr: float = _f(1e-3, "AdamW learning rate of the reconstruction stage")
    recon_batch: int = _f(4, "sequences per reconstruction step")
    recon_inputs: str = _f("teacher", f"group inputs for reconstruction: {RECON_INPUTS} (student = after earlier groups were fit)")
    data: str = _f(DEFAULT_TRAIN_TEXT, "training text: sotu-train, wiki-train, mixed-train or a file/folder of your own")
    seed: int = _f(0, "seed for data order, replacement sampling and LoRA init")
    checkpoint_every: int = _f(50, "optimizer steps between checkpoints (0 = only at the end / on interrupt)")
    keep_checkpoints: int = _f(2, "checkpoints kept in the run folder")
    log_every: int = _f(1, "optimizer steps between JSONL log lines")
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if self.trainable is None:
            self.trainable = list(_R.trainable)
        self.trainable = list(self.trainable)
        self.betas = tuple(float(b) for b in self.betas)
        ints = ("tokens", "seq_len", "batch_size", "grad_accum", "lora_rank", "recon_tokens", "recon_epochs",
                "recon_batch", "teacher_topk", "checkpoint_every", "keep_checkpoints", "log_every", "seed")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
        if self.tokens <= 0:
            raise ConfigError(f"tokens must be > 0, got {self.tokens}")
        if self.seq_len < 8:
            raise ConfigError(f"seq_len must be >= 8, got {self.seq_len}")
        for name in ("batch_size", "grad_accum", "recon_epochs", "recon_batch", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("recon_tokens", "teacher_topk", "checkpoint_every", "lora_rank"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        for name in ("lr", "recon_lr"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a positive number, got {v}")
        for name in ("min_lr_ratio", "warmup_frac", "p0", "ramp_frac"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        for name in ("weight_decay", "clip", "kl_weight", "hidden_weight", "lm_weight"):
            if not float(getattr(self, name)) >= 0 or not math.isfinite(float(getattr(self, name))):
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.kl_weight + self.hidden_weight + self.lm_weight <= 0:
            raise ConfigError("all loss weights are 0: set kl_weight, hidden_weight or lm_weight")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule '{self.schedule}' is unknown; allowed: {', '.join(SCHEDULES)}")
        if self.curriculum_order not in CURRICULUM_ORDERS:
            raise ConfigError(f"curriculum_order '{self.curriculum_order}' is unknown; allowed: {', '.join(CURRICULUM_ORDERS)}")
        if self.recon_inputs not in RECON_INPUTS:
            raise ConfigError(f"recon_inputs '{self.recon_inputs}' is unknown; allowed: {', '.join(RECON_INPUTS)}")
        bad = [t for t in self.trainable if t not in TRAINABLE]
        if bad or not self.trainable:
            raise ConfigError(f"trainable {self.trainable} is invalid; choose from {', '.join(TRAINABLE)}")
        if "lora" in self.trainable and "shared" in self.trainable:
            raise ConfigError("trainable has both 'shared' and 'lora': choose one way to adapt the shared bases")
        if {"lora", "layer-lora"} & set(self.trainable) and self.lora_rank < 1:
            raise ConfigError(f"lora_rank must be >= 1 when 'lora' or 'layer-lora' is trainable, got {self.lora_rank}")
        if self.teacher_cache is not None and self.teacher_topk < 1:
            raise ConfigError("teacher_cache needs teacher_topk > 0 (the cache stores the teacher's top-k logits)")
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"DistillConfig version {self.version} is not supported (this edgedelta reads {CONFIG_VERSION})")

    # --- derived quantities -----------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.tokens / self.tokens_per_step))

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        return config_from_dict(cls, d, "distill")

    @classmethod
    def from_recipe(cls, recipe: Recipe, quick: bool = False, **overrides) -> "DistillConfig":
        """The recipe's distillation (its full or quick token budget), with `overrides` on top."""
        if recipe.distill is None:
            raise ConfigError(f"recipe '{recipe.name}' trains no compressed model (it heals a pruning baseline); "
                              f"choose one of: {', '.join(r.name for r in RECIPES.values() if r.distill is not None)}")
        return cls.from_dict({**recipe.distill.config_fields(quick), **overrides})

    @classmethod
    def from_json_file(cls, path) -> "DistillConfig":
        return config_from_json_file(cls, path, "distill")

    def differences(self, other: "DistillConfig") -> list[str]:
        """Fields (outside RESUME_FREE) whose values differ, as 'name: a -> b'."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in RESUME_FREE and a[k] != b.get(k)]

