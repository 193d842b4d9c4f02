"""Chance and majority rates, informative tasks and chance-normalised retention, by hand."""

import pytest

from edgedelta.evaluation.chance import informative_tasks, item_rates, normalised_retention, paired_on
from edgedelta.evaluation.tasks import Item


def _item(n_choices: int, gold: int) -> Item:
    return Item("x", ("c",) * n_choices, tuple(f" {i}" for i in range(n_choices)), gold, (1,) * n_choices)


def test_item_rates_by_hand():
    items = [_item(2, 0), _item(2, 0), _item(2, 1), _item(4, 0)]
    r = item_rates(items)
    assert r["chance"] == pytest.approx((0.5 * 3 + 0.25) / 4) and r["majority"] == 0.75
    assert item_rates(items, kind="greedy") == {"chance": 0.0, "majority": None}


def _task(correct, chance, majority, se):
    return {"primary": "acc", "score": sum(correct) / len(correct), "acc_stderr": se, "correct": correct,
            "chance": chance, "majority": majority}


def test_a_task_at_its_majority_rate_is_not_informative():
    """BoolQ-like: the original below the always-yes rate tells nothing about retention."""
    ref = {"config": "c", "tasks": {"boolq": _task([1, 0, 0, 0, 1], 0.5, 0.65, 0.1),
                                    "arc": _task([1, 1, 1, 1, 0], 0.25, 0.3, 0.1)}}
    assert informative_tasks(ref) == ["arc"]  # 0.8 - 0.3 > 2 * 0.1; 0.4 < 0.65


def test_normalised_retention_and_paired_difference_by_hand():
    ref = {"config": "c", "tasks": {"t": _task([1, 1, 1, 1], 0.5, 0.5, 0.0)}}
    res = {"config": "c", "tasks": {"t": _task([1, 1, 0, 1], 0.5, 0.5, 0.0)}}
    r = normalised_retention(res, ref)
    # (0.75 - 0.5) / (1.0 - 0.5) = 0.5; paired d = 0, 0, -1, 0: se = sqrt(0.25 / 4) = 0.25, scaled by 1 / 0.5
    assert r["value"] == pytest.approx(0.5) and r["se"] == pytest.approx(0.5) and r["tasks"] == ["t"]
    assert paired_on(res, ref, ["t"]) == pytest.approx((-0.25, 0.25))
    assert paired_on(res, {**ref, "config": "other"}, ["t"]) is None  # not evaluated alike
