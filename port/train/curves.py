"""``curves.png``: loss and accuracy per epoch, redrawn after every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from port.ground.atomic import atomic_path


def draw_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Plot train/val loss and accuracy of ``history`` (metrics.jsonl lines) to ``path``.

    Uses the object-oriented Agg API (no pyplot): no global figure state, no display needed.
    Written atomically (:func:`port.ground.atomic.atomic_path`), so a viewer never sees half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    evals = [h for h in history if h.get("val_acc") is not None]
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot([h["epoch"] for h in evals], [h["val_loss"] for h in evals], "s-", label="val")
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot([h["epoch"] for h in evals], [100 * h["val_acc"] for h in evals], "s-",
                label="val")
    ax_acc.set(title="top-1 accuracy", xlabel="epoch", ylabel="%")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
