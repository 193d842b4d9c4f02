"""What the structured-pruning baselines share: their result and hitting a unique-parameter
budget. Measuring layers (models/similarity.py) and removing them (models/surgery.py) sit one
layer down, where removal before sharing (delta/removal.py) uses them too.

Every baseline is a free function `build(model, target, calib_ids) -> BaselineResult` that
works on a deep copy (the input model is never modified) and touches layers only through
the model adapter."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from torch import nn

from ..delta.accounting import count_parameters
from ..errors import ConfigError


@dataclass
class BaselineResult:
    model: nn.Module
    report: dict = field(default_factory=dict)


# --- budgets -----------------------------------------------------------------------------

def resolve_target(model: nn.Module, target: float | int) -> int:
    """A target as unique parameters: a fraction in (0, 1) of the model's, or an absolute count."""
    total = count_parameters(model)["total"]
    if isinstance(target, float) and 0 < target < 1:
        return int(round(total * target))
    t = int(target)
    if not 0 < t < total:
        raise ConfigError(f"target of {target} unique parameters is not below the model's {total} (give a fraction in (0, 1) or a smaller count)")
    return t


def budget_report(method: str, original: int, target: int, reached: int, granularity: int, detail: dict) -> dict:
    """The facts every baseline reports: how close to the budget it got, and why not closer."""
    gap = reached - target
    rep = {
        "method": method, "original_params": original, "target_params": target, "params": reached,
        "params_fraction": reached / original, "gap_params": gap, "gap_fraction_of_target": gap / target,
        "granularity_params": granularity, **detail,
    }
    if abs(gap) > granularity:
        raise ConfigError(f"{method} cannot reach {target} unique parameters: the closest it gets is {reached} "
                          f"({100 * gap / target:+.2f}%, steps of {granularity})")
    if gap:
        print(f"edgedelta: {method} reached {reached / 1e6:.3f}M unique parameters for a target of {target / 1e6:.3f}M "
              f"({100 * gap / target:+.2f}%; it removes parameters in steps of {granularity / 1e6:.3f}M)", file=sys.stderr)
    return rep
