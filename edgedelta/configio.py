"""Reading stage configs (CompressConfig, DistillConfig, ExportConfig) from JSON: every bad
file or field is a ConfigError naming the file or field and what is allowed."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .errors import ConfigError


def config_from_dict(cls, d: Any, what: str):
    """cls(**d) for a config dataclass, refusing non-objects and unknown fields."""
    if not isinstance(d, dict):
        raise ConfigError(f"a {what} config must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {what} config field(s) {unknown}; allowed: {', '.join(sorted(known))}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"bad {what} config: {e}") from None


def config_from_json_file(cls, path, what: str):
    """config_from_dict on a JSON file's content."""
    return config_from_dict(cls, read_json(path), what)


def read_json(path) -> Any:
    """A JSON file's content; a ConfigError naming the file when it is missing or not JSON."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file '{path}' is not valid JSON: {e}") from None
    except OSError as e:  # a folder, unreadable, ...
        raise ConfigError(f"config file '{path}' cannot be read: {e.strerror or e}") from None
    return data
