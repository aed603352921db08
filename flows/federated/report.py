"""A federated run's history as a picture: accuracy per round (centralised, and the clients'
own evaluations where they exist), saved as PNG with matplotlib's non-interactive backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flows.errors import FlowError

__all__ = ["plot_history"]


def plot_history(
    history: list[dict[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Write the accuracy curves of ``history`` (rows with ``round``, ``accuracy`` and
    optionally ``federated_accuracy`` and ``client_accuracy``) to ``path`` (a ``.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(path)
    if out.suffix.lower() != ".png":
        raise FlowError(f"the plot is a PNG: {out} should end in .png")
    if not history:
        raise FlowError("no rounds to plot")
    rounds = [int(r["round"]) for r in history]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        clients = sorted({c for r in history for c in (r.get("client_accuracy") or {})})
        for c in clients:
            pts = [(r["round"], r["client_accuracy"][c]) for r in history
                   if c in (r.get("client_accuracy") or {})]  # fmt: skip
            ax.plot(*zip(*pts, strict=True), lw=0.8, alpha=0.45, label=f"{c} (own data)")
        ax.plot(rounds, [r["accuracy"] for r in history], "o-", lw=2, color="black",
                label="test split (centralised)")  # fmt: skip
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(title or "federated training")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
    return out
