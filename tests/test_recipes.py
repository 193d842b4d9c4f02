"""edgedelta/recipes.py: one source of every recipe value, the measured best by budget, and
the stages read it (no stage keeps a copy)."""

import dataclasses
from pathlib import Path

import pytest

from edgedelta import recipes
from edgedelta.distill.config import DistillConfig
from edgedelta.errors import ConfigError
from edgedelta.recipes import DELTALLM, DROP_SHARE, RECIPES, REMOVAL, best_for

ROOT = Path(__file__).resolve().parents[1]


def test_recipes_are_frozen_and_named():
    assert set(RECIPES) == {"deltallm", "drop-share", "removal"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        DROP_SHARE.distill.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="known: deltallm, drop-share, removal"):
        recipes.get("fastest")


@pytest.mark.parametrize("recipe", [DELTALLM, DROP_SHARE])
def test_baselines_heal_at_the_recipes_own_lr_and_batch(recipe):
    """A comparison under a recipe is fair only if the baselines train at its lr and batch."""
    assert (recipe.heal.lr, recipe.heal.batch_size) == (recipe.distill.lr, recipe.distill.batch_size)


def test_drop_share_is_the_measured_configuration():
    """The values bench/results/recovery_b1/ and quality_healed_b1_25_all/ measured."""
    d = DROP_SHARE.distill
    assert (d.lr, d.batch_size, d.lora_rank, d.schedule) == (1e-3, 1, 20, "plain")
    assert set(d.trainable) == {"deltas", "gates", "norms", "lora", "layer-lora"}
    assert DROP_SHARE.plan.drop_layers(0.88, 30) == 3 and DROP_SHARE.plan.drop_layers(0.75, 30) == 8
    assert DELTALLM.plan.drop_layers(0.75, 30) == 0
    with pytest.raises(ConfigError, match="removal-only"):
        REMOVAL.plan.drop_layers(0.88, 30)


def test_drop_count_between_and_beyond_measured_budgets():
    plan = DROP_SHARE.plan
    counts = [plan.drop_layers(t, 30) for t in (0.95, 0.9, 0.88, 0.8, 0.75, 0.6)]
    assert counts == sorted(counts) and counts[0] >= 1  # more cut, more layers removed
    assert plan.measured_at(0.88) and not plan.measured_at(0.8)
    assert plan.drop_layers(0.88, 24) == round(0.1 * 24)  # scaled by the model's depth


def test_best_for_names_an_existing_result_file():
    for target in (0.88, 0.75):
        choice = best_for(target)
        assert choice.recipe is DROP_SHARE and choice.why.startswith(f"measured best at keep {target:.0%}")
        for ev in (e for e in choice.recipe.evidence if e.target_params == target):
            assert (ROOT / ev.file).is_file(), ev.file
            assert ev.file in choice.why
    far = best_for(0.5)
    assert far.why.startswith("not measured at keep 50%") and "keep 75%" in far.why
    assert all("on SmolLM2-135M-Instruct (" in best_for(t).why for t in (0.88, 0.75, 0.5))  # the model measured is named


def test_distill_config_reads_the_recipes():
    """DistillConfig's defaults are deltallm's; from_recipe gives the recipe's trainer."""
    default = DistillConfig()
    assert (default.lr, default.batch_size, default.schedule, default.trainable, default.tokens) == (
        DELTALLM.distill.lr, DELTALLM.distill.batch_size, DELTALLM.distill.schedule, list(DELTALLM.distill.trainable),
        DELTALLM.distill.tokens)
    quick = DistillConfig.from_recipe(DROP_SHARE, quick=True)
    assert quick.tokens == DROP_SHARE.distill.quick_tokens and quick.recon_tokens == 0 and quick.lora_rank == 20
    assert DistillConfig.from_recipe(DROP_SHARE, lr=5e-4).lr == 5e-4
    with pytest.raises(ConfigError, match="trains no compressed model"):
        DistillConfig.from_recipe(REMOVAL)


def test_no_stage_keeps_its_own_copy():
    """The recipe values appear in recipes.py only: the stages and the benchmarks that used to
    define them import them instead."""
    for rel in ("edgedelta/pipeline.py", "edgedelta/experiments/compare.py",
                "edgedelta/cli/compare_cmd.py", "edgedelta/cli/pipeline_cmd.py", "edgedelta/cli/distill_cmd.py", "bench/quality.py"):
        text = (ROOT / rel).read_text()
        for literal in ("1e-3", "3e-4", "layer_lora_recipe", "heal_lr", "heal_batch"):
            assert literal not in text, f"{rel} still holds {literal}"
