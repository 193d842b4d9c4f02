"""What the benchmarks share: writing a results file pair (JSON and markdown)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402


def write_results(out: Path, name: str, res: dict, md: str) -> None:
    """`name`.json and `name`.md in `out`, each written whole; the markdown also to stdout."""
    write_json_atomic(out / f"{name}.json", res)
    write_text_atomic(out / f"{name}.md", md)
    print(md)
