"""Training log (JSONL, one line per logged step) and the loss-curve PNG."""

from __future__ import annotations

import io
import json
from pathlib import Path


class JsonlLog:
    """Keeps the lines in memory (they go into every checkpoint) and appends each to a file."""

    def __init__(self, path: Path | None, lines: list[dict] | None = None):
        self.path = path
        self.lines = list(lines or [])
        if path is not None:  # rewrite: a resumed run's log is rewound to its checkpoint
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in self.lines))

    def append(self, row: dict) -> None:
        self.lines.append(row)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.lines)


def loss_curve_png(lines: list[dict], title: str = "recovery distillation", curves: dict[str, list[dict]] | None = None) -> bytes:
    """PNG bytes: loss (and KL) against training tokens. `curves` plots several runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = curves or {"loss": lines}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, rows in curves.items():
        rows = [r for r in rows if "loss" in r]
        if rows:
            ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows], label=label, linewidth=1.2)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
