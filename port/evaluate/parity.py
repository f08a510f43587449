"""How far a candidate's logits are from the reference's on the same images."""

from __future__ import annotations

import numpy as np

from port.ground.errors import ModelError


def parity(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``agreement`` (fraction of equal top-1 classes), ``max_abs_diff`` and ``mean_abs_diff``.

    Both arrays are ``(images, classes)`` logits of the same images in the same order; the
    differences are taken in float64 so that FP16 candidates are not rounded twice.
    """
    a = np.asarray(logits, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 2:
        raise ModelError(
            f"candidate logits have shape {a.shape}, the reference {r.shape}: compare artifacts "
            "of the same model (same classes) on the same images"
        )
    if len(a) == 0:
        return {"agreement": 1.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0}
    diff = np.abs(a - r)
    return {
        "agreement": float(np.mean(a.argmax(axis=1) == r.argmax(axis=1))),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }
