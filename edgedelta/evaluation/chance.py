"""What a task's score means: its chance rate (guessing uniformly among the choices) and its
majority rate (always picking the most frequent gold position, e.g. always "yes" on BoolQ),
and the headline numbers that only count tasks where the reference model beats both.

A model that always answers "yes" scores the majority rate on BoolQ without reading the
passage, so a score at or below max(chance, majority) tells nothing about what compression
kept. The headline here is chance-normalised retention on the informative tasks,

    R = Σ_t (acc_t − chance_t) / Σ_t (orig_t − chance_t),

with a standard error from the per-item differences acc − orig on the same items."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from .metrics import paired_difference
from .tasks import TASKS, Item, load_task, select

INFORMATIVE_SE = 2.0  # the reference must beat max(chance, majority) by this many of its standard errors


def item_rates(items: Sequence[Item], kind: str = "mc") -> dict:
    """{'chance', 'majority'} of a list of items; a greedy task (LAMBADA: the whole word must
    be generated) has chance 0 and no majority class."""
    if kind == "greedy" or not items:
        return {"chance": 0.0, "majority": None}
    chance = sum(1.0 / len(it.continuations) for it in items) / len(items)
    top = Counter(it.gold for it in items).most_common(1)[0][1]
    return {"chance": chance, "majority": top / len(items)}


def task_rates(name: str, task: dict, config: dict) -> dict | None:
    """The rates stored with a task result, or computed from the same items (results written
    before the rates were stored); None for a user's task file that is no longer at hand."""
    if "chance" in task:
        return {"chance": task["chance"], "majority": task.get("majority")}
    if name not in TASKS:
        return None
    items = select(load_task(name), config.get("limit"), config.get("seed", 1234))
    return item_rates(items, TASKS[name].kind)


def floor(rates: dict) -> float:
    return max(rates["chance"], rates["majority"] or 0.0)


def informative_tasks(reference: dict) -> list[str]:
    """Tasks of an evaluate() result where the score beats max(chance, majority) by more than
    INFORMATIVE_SE standard errors."""
    out = []
    for name, t in reference["tasks"].items():
        rates = task_rates(name, t, reference.get("config") or {})
        se = t.get(t["primary"] + "_stderr") or 0.0
        if rates is not None and t["score"] - floor(rates) > INFORMATIVE_SE * se:
            out.append(name)
    return out


def normalised_retention(res: dict, reference: dict, tasks: list[str] | None = None) -> dict | None:
    """Chance-normalised retention of `res` against `reference` on `tasks` (default: the
    reference's informative tasks), with its paired standard error:
    {'value', 'se', 'tasks'}; None without per-item scores or informative tasks."""
    tasks = informative_tasks(reference) if tasks is None else tasks
    if not tasks or any(n not in res["tasks"] or "correct" not in res["tasks"][n] or "correct" not in reference["tasks"][n]
                        for n in tasks):
        return None
    cfg = reference.get("config") or {}
    headroom = sum(reference["tasks"][n]["score"] - task_rates(n, reference["tasks"][n], cfg)["chance"] for n in tasks) / len(tasks)
    diff, se = paired_difference([res["tasks"][n]["correct"] for n in tasks], [reference["tasks"][n]["correct"] for n in tasks])
    return {"value": 1.0 + diff / headroom, "se": se / headroom, "tasks": list(tasks)}


def paired_on(res: dict, other: dict, tasks: list[str]) -> tuple[float, float] | None:
    """(mean score difference res − other over `tasks`, its paired standard error), or None
    when a side lacks per-item scores or the two were not evaluated on the same items."""
    if not tasks or res.get("config") != other.get("config"):
        return None
    if any(n not in e["tasks"] or "correct" not in e["tasks"][n] for e in (res, other) for n in tasks):
        return None
    return paired_difference([res["tasks"][n]["correct"] for n in tasks], [other["tasks"][n]["correct"] for n in tasks])
