"""Top-k accuracy from logits."""

from __future__ import annotations

import numpy as np

from port.ground.errors import DataError


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits, in [0, 1].

    With fewer than ``k`` classes every label is within the top ``k`` (so top-5 of a 3-class
    model is 1.0), as in torchvision's reference ``accuracy``. Ties rank by class index.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise DataError(
            f"logits of shape {logits.shape} do not match labels of shape {labels.shape}: "
            "pass one row of logits per label"
        )
    if len(labels) == 0:
        raise DataError("no images to score: evaluate needs at least one labelled image")
    k = min(k, logits.shape[1])
    # argsort of the negated logits is stable, so equal logits keep the lower class first.
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{"top1": .., "top5": ..}`` as fractions in [0, 1]."""
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}
