"""Fixtures of the engine tests: one tiny real model, saved as checkpoint and ONNX once."""

from __future__ import annotations

import numpy as np
import pytest

from port.models.checkpoint import save_model
from tests.engines.tiny import SIZE, Tiny, export_onnx, tiny_model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    d = tmp_path_factory.mktemp("tiny")
    model, card = tiny_model()
    ckpt = save_model(d / "model.pt", model, card)
    onnx_path = export_onnx(model, card, d / "model.onnx")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, SIZE, SIZE), dtype=np.float32)
    return Tiny(model, card, ckpt, onnx_path, images)
