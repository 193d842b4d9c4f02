"""Argument types and helpers shared by subcommands: every bad value is a one-line error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..fsutil import check_creatable


def _int_at_least(text: str, low: int, bound: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be {bound}, got {v}")
    return v


def number_in(text: str, low: float, high: float, unit: str, low_open: bool = False) -> float:
    """A float in [low, high] ((low, high] with low_open), e.g. seconds or milliseconds."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of {unit}") from None
    if not ((low < v) if low_open else (low <= v)) or not v <= high:
        raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low:g}, {high:g}] {unit}, got {v:g}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "> 0")


def nonneg_int(text: str) -> int:
    return _int_at_least(text, 0, ">= 0")


def drop_count(text: str, least: int = 0) -> int | str:
    """--drop-layers: a layer count or 'auto' (search the count, CompressConfig.drop_layers)."""
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = None
    if count is None or count < least:
        raise argparse.ArgumentTypeError(f"'{text}' is not a layer count >= {least} or 'auto'")
    return count


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction strictly between 0 and 1, got {v}")
    return v


def int_list(text: str) -> list[int]:
    """'512,2048' -> [512, 2048] (each > 0)."""
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be > 0, got '{text}'")
    return vals


def groups_arg(text: str) -> list[list[int]]:
    """'2-3,5-7' -> [[2,3],[5,6,7]]."""
    groups = []
    for part in text.split(","):
        try:
            a, b = (int(x) for x in part.split("-"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"group '{part}' is not of the form START-END (e.g. 2-3)") from None
        if b <= a:
            raise argparse.ArgumentTypeError(f"group '{part}' must span at least 2 layers (END > START)")
        groups.append(list(range(a, b + 1)))
    return groups


def model_arg(p: argparse.ArgumentParser, default: str | None = "default") -> None:
    p.add_argument("--model", default=default, help="'default' (embedded SmolLM2-135M-Instruct), a built-in model name (`edgedelta models`), a model "
                                                    "directory, or a .gguf file")


def output_dir(text: str) -> Path:
    """An output folder (--out, --report), refused while the arguments are parsed, before any
    work, when it cannot be created (a file on its path, a folder not writable)."""
    try:
        return check_creatable(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def output_file(text: str) -> Path:
    """An output file (--json): as output_dir, and not an existing folder."""
    path = output_dir(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"output '{text}' is a folder; give a file name")
    return path


def out_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--out", type=output_dir, required=required, help="output directory (written atomically)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")


def info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
