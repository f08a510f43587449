"""Per-precision gates: defaults, pass/fail with the reason, overrides."""

from __future__ import annotations

import pytest

from port.gates import Gates, PrecisionGate, check, gate_overrides, parse_gate_overrides
from port.ground.errors import UsageError


def _row(precision: str, top1: float, ref_top1: float, agreement: float = 1.0,
         max_abs_diff: float = 0.0) -> dict:
    return {"precision": precision, "top1": top1, "top1_drop_pp": (ref_top1 - top1) * 100,
            "agreement": agreement, "max_abs_diff": max_abs_diff}


def test_defaults() -> None:
    gates = Gates()
    assert gates.fp32 == PrecisionGate(min_agreement=0.999, max_top1_drop_pp=0.1)
    assert gates.fp16 == PrecisionGate(min_top1_ratio=0.999)
    assert gates.int8 == PrecisionGate(min_top1_ratio=0.99)
    assert gates.to_dict()["int8"] == {"min_agreement": None, "max_top1_drop_pp": None,
                                       "min_top1_ratio": 0.99}


def test_fp32_passes_when_identical_and_fails_with_both_reasons() -> None:
    assert check(_row("fp32", 0.9, 0.9), Gates()) == (True, None)
    # Exactly at the limits still passes.
    assert check(_row("fp32", 0.899, 0.9, agreement=0.999), Gates())[0] is True
    passed, why = check(_row("fp32", 0.895, 0.9, agreement=0.99), Gates())
    assert passed is False
    assert why == "fp32 gate: top-1 agreement 0.9900 < 0.999; top-1 drop 0.50 pp > 0.1 pp"


def test_fp16_and_int8_ratios() -> None:
    assert check(_row("fp16", 0.8991, 0.9), Gates()) == (True, None)  # 99.9% exactly
    passed, why = check(_row("fp16", 0.898, 0.9), Gates())
    assert not passed and why == ("fp16 gate: top-1 0.8980 keeps 99.78% of the reference 0.9000 "
                                  "< 99.90%")
    # int8 may flip many images as long as accuracy is kept.
    assert check(_row("int8", 0.892, 0.9, agreement=0.95), Gates()) == (True, None)
    passed, why = check(_row("int8", 0.88, 0.9), Gates())
    assert not passed and "keeps 97.78%" in why and "< 99.00%" in why


def test_reference_top1_can_be_given_explicitly() -> None:
    row = {"precision": "int8", "top1": 0.5, "top1_drop_pp": 0.0, "agreement": 1.0}
    assert check(row, Gates(), reference_top1=0.6)[0] is False


def test_a_reference_at_zero_accuracy_cannot_lose_any() -> None:
    assert check(_row("int8", 0.0, 0.0), Gates()) == (True, None)


def test_non_finite_logits_fail_any_gate() -> None:
    passed, why = check(_row("fp16", 0.9, 0.9, max_abs_diff=float("nan")), Gates())
    assert not passed and "NaN or inf" in why


def test_alias_flags_and_gate_texts_make_one_override() -> None:
    overrides = gate_overrides({"--max-top1-drop": 0.5, "--int8-min-ratio": 0.98,
                                "--min-agreement": None})
    gates = Gates().with_overrides(overrides)
    assert gates.fp32 == PrecisionGate(min_agreement=0.999, max_top1_drop_pp=0.5)
    assert gates.int8.min_top1_ratio == 0.98 and gates.fp16 == Gates().fp16
    assert check(_row("int8", 0.885, 0.9), gates) == (True, None)
    assert Gates().with_overrides(gate_overrides()) == Gates()
    # --gate comes after the aliases: the later value wins; 'none' switches a limit off
    later = gate_overrides({"--int8-min-ratio": 0.98},
                           ["int8.min_top1_ratio=0.95", "fp32.min_agreement=none"])
    assert later == {"int8": {"min_top1_ratio": 0.95}, "fp32": {"min_agreement": None}}
    with pytest.raises(UsageError, match=r"--min-agreement must be in \[0\.0, 1\.0\]"):
        gate_overrides({"--min-agreement": 1.5})
    with pytest.raises(UsageError, match=r"max_top1_drop_pp must be in \[0\.0, 100\.0\]"):
        gate_overrides(texts=["fp32.max_top1_drop_pp=101"])
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        gate_overrides(texts=["fp8.min_top1_ratio=0.9"])
    with pytest.raises(UsageError, match="unknown gate limit 'ratio'"):
        gate_overrides(texts=["int8.ratio=0.9"])
    with pytest.raises(UsageError, match="finite"):
        gate_overrides(texts=["int8.min_top1_ratio=nan"])


def test_a_row_is_gated_as_what_it_computed_in() -> None:
    """An FP32 file computed in bfloat16 meets the bf16 gate, not the FP32 one."""
    row = {**_row("fp32", 0.8995, 0.9), "gated_as": "bf16", "agreement": 0.99}
    assert check(row, Gates()) == (True, None)
    plain = {**row, "gated_as": None}
    passed, why = check(plain, Gates())
    assert not passed and why.startswith("fp32 gate")
    strict = Gates().with_overrides(gate_overrides(texts=["bf16.min_top1_ratio=1"]))
    passed, why = check(row, strict)
    assert not passed and why.startswith("bf16 gate")


def test_parse_gate_overrides() -> None:
    parsed = parse_gate_overrides(["int8.min_top1_ratio=0.98", "fp32.min_agreement=none"])
    assert parsed == {"int8": {"min_top1_ratio": 0.98}, "fp32": {"min_agreement": None}}
    gates = Gates().with_overrides(parsed)
    assert gates.fp32 == PrecisionGate(min_agreement=None, max_top1_drop_pp=0.1)
    assert Gates.from_dict(gates.to_dict()) == gates
    with pytest.raises(UsageError, match=r"PRECISION\.LIMIT=VALUE"):
        parse_gate_overrides(["int8=0.98"])
    with pytest.raises(UsageError, match="use a number"):
        parse_gate_overrides(["int8.min_top1_ratio=high"])
    with pytest.raises(UsageError, match=r"unknown gate limit 'max_ratio'.*min_agreement"):
        Gates().with_overrides({"int8": {"max_ratio": 1.0}})
    with pytest.raises(UsageError, match="no accuracy gate for precision 'fp8'"):
        Gates().with_overrides({"fp8": {"min_top1_ratio": 1.0}})
