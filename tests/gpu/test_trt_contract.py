"""The Runner contract (tests/engines/test_contract.py) for the TensorRT runner, on a real engine.

The contract's test functions are imported here and run with this module's ``make_runner``,
which builds the tiny model's engine; tests/gpu/conftest.py skips them, with the reason, where
TensorRT, pycuda or a GPU is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from port import engines
from port.engines.base import Runner
from tests.engines.conftest import tiny  # noqa: F401  (the shared tiny-model fixture)
from tests.engines.test_contract import (  # noqa: F401  (collected here with make_runner below)
    test_activate_and_deactivate_are_idempotent,
    test_bad_feeds_are_usage_errors,
    test_context_manager_activates_and_releases,
    test_infer_before_activate_raises,
    test_infer_returns_logits_for_the_batch,
    test_input_metadata_has_a_dynamic_batch,
    test_name_outputs_and_the_logits_output,
    test_optional_hooks_have_declared_defaults,
    test_unchecked_infer_skips_only_the_check,
)
from tests.engines.tiny import Tiny, build_engine


@pytest.fixture()
def make_runner(tiny: Tiny, tmp_path: Path) -> Callable[[], Runner]:  # noqa: F811
    """Fresh, inactive TensorRT runners over an engine of the tiny model (profile 1..4)."""
    path = build_engine(tiny.onnx, tmp_path / "model.engine")
    return lambda: engines.load(path)
