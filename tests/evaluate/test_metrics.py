"""Accuracy and parity arithmetic on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from port.evaluate.accuracy import accuracy, topk_accuracy
from port.evaluate.parity import parity
from port.ground.errors import DataError, ModelError

LOGITS = np.array([
    [9.0, 1, 2, 3, 4, 5, 6],  # ranks: 0, 6, 5, 4, 3, 2, 1
    [0.0, 9, 1, 2, 3, 4, 5],  # ranks: 1, 6, 5, 4, 3, 2, 0
    [1.0, 2, 9, 3, 4, 5, 6],  # ranks: 2, 6, 5, 4, 3, 1, 0
    [5.0, 4, 3, 2, 1, 0, 9],  # ranks: 6, 0, 1, 2, 3, 4, 5
], dtype=np.float32)


def test_top1_and_top5() -> None:
    labels = np.array([0, 6, 4, 5])
    # top-1: only row 0 is right. top-5: row 1's label 6 is 2nd, row 2's 4 is 5th, row 3's 5 is 7th.
    assert topk_accuracy(LOGITS, labels, 1) == 0.25
    assert topk_accuracy(LOGITS, labels, 5) == 0.75
    assert accuracy(LOGITS, labels) == {"top1": 0.25, "top5": 0.75}


def test_top5_with_fewer_than_five_classes_is_one() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert accuracy(logits, np.array([2, 2])) == {"top1": 0.0, "top5": 1.0}


def test_ties_rank_the_lower_class_first() -> None:
    logits = np.array([[1.0, 1.0, 0.0]])
    assert topk_accuracy(logits, np.array([0]), 1) == 1.0
    assert topk_accuracy(logits, np.array([1]), 1) == 0.0


def test_accuracy_rejects_mismatched_inputs() -> None:
    with pytest.raises(DataError, match="do not match labels"):
        accuracy(LOGITS, np.array([0, 1]))
    with pytest.raises(DataError, match="no images"):
        accuracy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))


def test_parity_numbers() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 5.0, 1.0], [1.0, 0.0, 0.0]])
    cand = ref.copy()
    cand[1] = [1.0, 2.0, 3.5]  # top-1 flips from 0 to 2; diffs 2, 0, 2.5
    cand[3, 2] += 0.5  # top-1 stays 0; diff 0.5
    got = parity(cand, ref)
    assert got["agreement"] == 0.75
    assert got["max_abs_diff"] == 2.5
    assert got["mean_abs_diff"] == pytest.approx((2 + 2.5 + 0.5) / 12)
    assert parity(ref, ref) == {"agreement": 1.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0}


def test_parity_of_fp16_logits_is_taken_in_float64() -> None:
    ref = np.array([[1.0, 2.0]], dtype=np.float32)
    got = parity(ref.astype(np.float16) + np.float16(0.0009765625), ref)
    assert got["max_abs_diff"] == pytest.approx(0.0009765625)


def test_parity_rejects_other_class_counts() -> None:
    with pytest.raises(ModelError, match="same classes"):
        parity(np.zeros((2, 3)), np.zeros((2, 4)))
