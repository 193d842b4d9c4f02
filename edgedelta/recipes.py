"""Named recipes: every value a stage needs to turn a model into a compressed, recovered one.

A recipe sets the plan (how many layers go before sharing, what shares), the init, the
distillation of the compressed model (trainable set, LoRA rank, lr, batch, schedule, tokens
at full and quick budgets) and the healing of a baseline it is compared with (lr and batch,
equal to its own, so a comparison is fair). `edgedelta pipeline`, `compare`, `distill
--recipe` and the benchmarks read these objects; no stage keeps its own copy.

`best_for(target_params)` names the recipe measured best at a budget and the file in
bench/results/ that measured it. This module is plain data: it imports no stage, so every
stage can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass(frozen=True)
class PlanRecipe:
    """What is removed and what shares. `drop_share` gives, at measured budgets, how much of
    the parameter cut whole-layer removal takes: (target_params, layers removed / layers in
    the model / (1 - target_params)). 0 everywhere = pure sharing; None = removal only."""

    drop_share: tuple[tuple[float, float], ...] | None = ()
    share_attn: bool = True
    share_mlp: bool = True

    def drop_layers(self, target_params: float, num_layers: int) -> int:
        """Layers removed before sharing at this budget: the measured share of the cut,
        interpolated linearly between measured budgets and held constant outside them."""
        if self.drop_share is None:
            raise ConfigError("a removal-only recipe has no sharing plan: its layer count comes from the budget alone")
        if not self.drop_share:
            return 0
        pts = sorted(self.drop_share)
        if target_params <= pts[0][0]:
            share = pts[0][1]
        elif target_params >= pts[-1][0]:
            share = pts[-1][1]
        else:
            (t0, s0), (t1, s1) = next((a, b) for a, b in zip(pts, pts[1:]) if a[0] <= target_params <= b[0])
            share = s0 + (s1 - s0) * (target_params - t0) / (t1 - t0)
        return int(round(share * (1.0 - target_params) * num_layers))

    def measured_at(self, target_params: float) -> bool:
        return self.drop_share is not None and any(abs(t - target_params) < 1e-9 for t, _ in self.drop_share)


@dataclass(frozen=True)
class InitRecipe:
    """CompressConfig fields of the init (bench/results/compress_init.md measured each)."""

    base: str = "anchor"
    init: str = "asvd"
    gates: bool = True
    scale_base: bool = True
    calib_samples: int = 32
    quick_calib_samples: int = 8


@dataclass(frozen=True)
class DistillRecipe:
    """DistillConfig fields of the recovery, and its token budgets."""

    trainable: tuple[str, ...] = ("deltas", "gates")
    lora_rank: int = 8
    lr: float = 3e-4
    batch_size: int = 4
    schedule: str = "linear"
    recon_tokens: int = 32_768
    tokens: int = 200_000
    quick_tokens: int = 8192

    def config_fields(self, quick: bool = False) -> dict:
        """DistillConfig keyword arguments (tokens included)."""
        return {"trainable": list(self.trainable), "lora_rank": self.lora_rank, "lr": self.lr, "batch_size": self.batch_size,
                "schedule": self.schedule, "recon_tokens": min(self.recon_tokens, self.quick_tokens) if quick else self.recon_tokens,
                "tokens": self.quick_tokens if quick else self.tokens}


@dataclass(frozen=True)
class HealRecipe:
    """How a pruned baseline compared with this recipe is healed: a LoRA on every kept
    projection whose trainable size matches the delta model's (`lora_rank` 0) or has a fixed
    rank, at the same lr and batch as the recipe's distillation."""

    lr: float = 3e-4
    batch_size: int = 4
    lora_rank: int = 0


@dataclass(frozen=True)
class Evidence:
    """A measurement that made a recipe the best at a budget."""

    target_params: float
    file: str  # relative to the repository root
    what: str  # what the file shows, without its numbers (those stay in the file)


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    plan: PlanRecipe
    init: InitRecipe
    distill: DistillRecipe | None
    heal: HealRecipe
    shares: bool = True  # False: a pruning baseline (no DeltaLLM sharing)
    evidence: tuple[Evidence, ...] = field(default=())


_INIT = InitRecipe()

DELTALLM = Recipe(
    name="deltallm",
    summary="the paper's recipe: pure sharing, deltas and gates distilled with progressive module replacement",
    plan=PlanRecipe(drop_share=()),
    init=_INIT,
    distill=DistillRecipe(),
    heal=HealRecipe(lr=3e-4, batch_size=4),
)

# Removal then sharing, with LoRAs on the shared bases and the unshared layers (merged on save):
# at 12% it met the recovery target at batch 1, lr 1e-3, rank 20 (recovery_b1), and at 25% it
# led every baseline healed under the same protocol (quality_healed_b1_25_all). Layers removed:
# 3 of 30 at 12%, 8 of 30 at 25% (drop_sweep, drop_search).
DROP_SHARE = Recipe(
    name="drop-share",
    summary="remove the least influential layers, share pairs for the rest of the budget, distil with LoRAs on "
            "shared bases and unshared layers (merged)",
    plan=PlanRecipe(drop_share=((0.88, 3 / 30 / 0.12), (0.75, 8 / 30 / 0.25))),
    init=_INIT,
    # quick: 32k tokens, a third of the quick pipeline's time on 2 cores; with 8k the tasks fell short of
    # removal healed on as many tokens (bench/results/pipeline_quick.json measures the quick run)
    distill=DistillRecipe(trainable=("deltas", "gates", "norms", "lora", "layer-lora"), lora_rank=20, lr=1e-3, batch_size=1,
                          schedule="plain", recon_tokens=0, quick_tokens=32_768),
    heal=HealRecipe(lr=1e-3, batch_size=1),
    evidence=(
        Evidence(0.88, "bench/results/recovery_b1/b1_f_shared_lora.json",
                 "lowest held-out perplexity after 200k tokens, ahead of ShortGPT removal healed with the same tokens, batch and lr"),
        Evidence(0.88, "bench/results/quality_healed_b1_12_l300/quality.json",
                 "zero-shot tasks after healing: within one paired standard error of ShortGPT removal on the informative tasks"),
        Evidence(0.75, "bench/results/quality_healed_b1_25_all/quality.json",
                 "after healing: the lowest held-out perplexity of every method; on the informative tasks ahead of "
                 "ShortGPT removal within about one paired standard error, and of SliceGPT, JointDrop and LaCo by more"),
    ),
)

REMOVAL = Recipe(
    name="removal",
    summary="the reference: ShortGPT layer removal for the whole budget, healed by a LoRA on every kept projection",
    plan=PlanRecipe(drop_share=None),
    init=_INIT,
    distill=None,
    heal=HealRecipe(lr=1e-3, batch_size=1, lora_rank=20),
    shares=False,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (DELTALLM, DROP_SHARE, REMOVAL)}
# the recipe measured best at each measured budget (target_params -> name), on this model (every
# Evidence file measured it; the choice says where it comes from). A larger model may want another
# lr: on Qwen2.5-Coder-0.5B, lr 1e-3 at batch 1 spiked within 16 steps on both the pure-sharing
# and the drop-share build (distill/spike_guard.py rolls such a run back at half the lr), while the
# deltallm recipe's lr 3e-4 at batch 4 trained both without a spike
# (bench/results/quality_qwen2.5-coder-0.5b: the *_log_*.jsonl files, replayed by
# tests/distill/test_spike_guard.py)
BEST_MEASURED: dict[float, str] = {0.88: "drop-share", 0.75: "drop-share"}
MEASURED_ON = "SmolLM2-135M-Instruct"


def get(name: str) -> Recipe:
    """The recipe called `name`; a ConfigError listing the known ones otherwise."""
    try:
        return RECIPES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None


@dataclass(frozen=True)
class Choice:
    recipe: Recipe
    why: str  # one line: which measurement chose it


def best_for(target_params: float) -> Choice:
    """The recipe measured best at `target_params`, or at the nearest measured budget."""
    nearest = min(BEST_MEASURED, key=lambda t: (abs(t - target_params), t))
    recipe = RECIPES[BEST_MEASURED[nearest]]
    files = [e for e in recipe.evidence if e.target_params == nearest]
    where = "; ".join(f"{e.file}: {e.what}" for e in files)
    if abs(nearest - target_params) < 1e-9:
        why = f"measured best at keep {nearest:.0%} on {MEASURED_ON} ({where})"
    else:
        why = (f"not measured at keep {target_params:.0%}; measured best at the nearest budget, keep {nearest:.0%}, "
               f"on {MEASURED_ON} ({where})")
    return Choice(recipe, why)
