"""Pass/fail gates per precision: when is a converted model "as accurate as" the reference?

Defaults, and what they mean:

- ``fp32``: the artifact should compute the *same function*: top-1 class agrees with the
  reference on at least 99.9% of images (``min_agreement=0.999``) and top-1 accuracy drops by at
  most 0.1 percentage points (``max_top1_drop_pp=0.1``).
- ``fp16``: keeps at least 99.9% of the reference top-1 accuracy (``min_top1_ratio=0.999``), the
  MLPerf Inference "high accuracy" target.
- ``int8``: keeps at least 99% of the reference top-1 accuracy (``min_top1_ratio=0.99``), the
  MLPerf Inference default target for quantised classifiers.

Each limit is optional (``None`` = not checked) and every one can be overridden per precision,
e.g. ``Gates().with_overrides(gate_overrides(texts=["int8.min_top1_ratio=0.98"]))`` (what
``--gate`` does). ``bf16`` gates rows that computed in bfloat16 (OpenVINO's opt-in rows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from port.formats import PRECISIONS
from port.ground.errors import UsageError

# Comparisons allow this much float noise so that e.g. 0.999 * 0.9 == 0.8991 is not a failure.
_EPS = 1e-9


@dataclass(frozen=True)
class PrecisionGate:
    """The limits one precision must meet; ``None`` leaves a limit unchecked."""

    min_agreement: float | None = None  # fraction of images whose top-1 equals the reference's
    max_top1_drop_pp: float | None = None  # reference top-1 minus this top-1, percentage points
    min_top1_ratio: float | None = None  # this top-1 / reference top-1 (MLPerf "99% of FP32")


def _default_limits() -> dict[str, PrecisionGate]:
    """Every registered precision's default gate (port.formats.PRECISIONS)."""
    return {name: PrecisionGate(**spec.gate) for name, spec in PRECISIONS.items()}


@dataclass(frozen=True)
class Gates:
    """One :class:`PrecisionGate` per precision; the defaults come from the format registry."""

    limits: Mapping[str, PrecisionGate] = field(default_factory=_default_limits)

    def for_precision(self, precision: str) -> PrecisionGate:
        """The gate of ``precision``; ``UsageError`` listing the known precisions otherwise."""
        if precision not in self.limits:
            raise UsageError(f"no accuracy gate for precision '{precision}': "
                             f"choose one of {', '.join(self.limits)}")
        return self.limits[precision]

    def __getattr__(self, precision: str) -> PrecisionGate:
        # gates.fp32, gates.int8, ...: readable access for the registered precisions.
        limits = self.__dict__.get("limits", {})
        if precision in limits:
            return limits[precision]
        raise AttributeError(precision)

    def to_dict(self) -> dict[str, dict[str, float | None]]:
        """Plain-data form (for report.json)."""
        return {name: asdict(gate) for name, gate in self.limits.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> Gates:
        """Defaults with the limits in ``data`` applied (see :meth:`with_overrides`)."""
        return cls().with_overrides(data)

    def with_overrides(self, overrides: dict[str, dict[str, Any]]) -> Gates:
        """A copy with ``{precision: {limit: value or None}}`` applied; unknown names raise."""
        names = [f.name for f in fields(PrecisionGate)]
        limits = dict(self.limits)
        for precision, values in overrides.items():
            gate = self.for_precision(precision)
            for name in values:
                if name not in names:
                    raise UsageError(f"unknown gate limit '{name}' for {precision}: "
                                     f"choose one of {', '.join(names)}")
            limits[precision] = replace(limits.get(precision, gate), **{
                k: None if v is None else float(v) for k, v in values.items()})
        return replace(self, limits=limits)


# The four gate flags of `porter evaluate` / `porter gate`, kept as documented aliases of
# --gate PRECISION.LIMIT=VALUE: flag -> (precision, limit).
GATE_ALIASES: dict[str, tuple[str, str]] = {
    "--max-top1-drop": ("fp32", "max_top1_drop_pp"),
    "--min-agreement": ("fp32", "min_agreement"),
    "--fp16-min-ratio": ("fp16", "min_top1_ratio"),
    "--int8-min-ratio": ("int8", "min_top1_ratio"),
}
LIMIT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(PrecisionGate))
# How a report's gate table heads each limit: the field name in words ("min top1 ratio").
LIMIT_LABELS: dict[str, str] = {name: name.replace("_pp", " (pp)").replace("_", " ")
                                for name in LIMIT_NAMES}


def gate_overrides(aliases: Mapping[str, float | None] | None = None,
                   texts: tuple[str, ...] | list[str] = ()) -> dict[str, dict[str, float | None]]:
    """The user's gate overrides, checked: the alias flags (``{"--int8-min-ratio": 0.98}``;
    ``None`` = not given), then every ``--gate PRECISION.LIMIT=VALUE`` (later ones win).

    Every precision and limit must exist (``UsageError`` listing them) and every value be a
    finite number in its range (``_pp`` limits 0..100, the others 0..1), before any file is read.
    """
    out: dict[str, dict[str, float | None]] = {}
    for flag, value in (aliases or {}).items():
        if value is not None:
            precision, limit = GATE_ALIASES[flag]
            _check_limit(flag, limit, value)
            out.setdefault(precision, {})[limit] = float(value)
    for precision, limits in parse_gate_overrides(list(texts)).items():
        if precision not in PRECISIONS:
            raise UsageError(f"--gate {precision}.…: unknown precision '{precision}': choose "
                             f"one of {', '.join(PRECISIONS)}")
        for limit, value in limits.items():
            if limit not in LIMIT_NAMES:
                raise UsageError(f"--gate {precision}.{limit}: unknown gate limit '{limit}': "
                                 f"choose one of {', '.join(LIMIT_NAMES)}")
            if value is not None:
                _check_limit(f"--gate {precision}.{limit}", limit, value)
            out.setdefault(precision, {})[limit] = value
    return out


def _check_limit(flag: str, limit: str, value: float) -> None:
    """A gate value must be finite and in its limit's range."""
    from port.ground.limits import check_float

    check_float(flag, value, lo=0.0, hi=100.0 if limit.endswith("_pp") else 1.0)


def parse_gate_overrides(texts: list[str]) -> dict[str, dict[str, float | None]]:
    """Parse CLI overrides like ``int8.min_top1_ratio=0.98`` (``=none`` switches a limit off)."""
    out: dict[str, dict[str, float | None]] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        precision, dot, limit = key.strip().partition(".")
        if not sep or not dot or not limit:
            raise UsageError(f"bad gate '{text}': write PRECISION.LIMIT=VALUE, "
                             "e.g. int8.min_top1_ratio=0.98")
        value = value.strip()
        if value.lower() in ("none", "off"):
            out.setdefault(precision, {})[limit] = None
            continue
        try:
            out.setdefault(precision, {})[limit] = float(value)
        except ValueError:
            raise UsageError(f"bad gate value in '{text}': use a number or 'none'") from None
    return out


def check(row: dict[str, Any], gates: Gates, *, reference_top1: float | None = None
          ) -> tuple[bool, str | None]:
    """Apply the gate of ``row["gated_as"]`` (else ``row["precision"]``) to a report row:
    ``(passed, why)``.

    ``why`` is ``None`` when the row passes, else every failed limit, e.g.
    ``"top-1 agreement 0.9950 < 0.999; top-1 drop 0.40 pp > 0.1 pp"``. The reference top-1 is
    taken from ``reference_top1`` or derived from ``top1 + top1_drop_pp / 100``.
    """
    # A row is gated as the looser of its file's precision and what its backend computed in
    # (``gated_as``: an FP32 file computed in bfloat16 meets the bf16 gate); older rows lack it.
    precision = row.get("gated_as") or row["precision"]
    gate = gates.for_precision(precision)
    top1 = float(row["top1"])
    drop_pp = float(row["top1_drop_pp"])
    ref_top1 = reference_top1 if reference_top1 is not None else top1 + drop_pp / 100
    failures: list[str] = []
    max_diff = row.get("max_abs_diff")
    if max_diff is not None and not math.isfinite(max_diff):
        failures.append("logits contain NaN or inf (overflow in a low-precision graph?)")
    if gate.min_agreement is not None and row["agreement"] < gate.min_agreement - _EPS:
        failures.append(f"top-1 agreement {row['agreement']:.4f} < {gate.min_agreement:g}")
    if gate.max_top1_drop_pp is not None and drop_pp > gate.max_top1_drop_pp + _EPS:
        failures.append(f"top-1 drop {drop_pp:.2f} pp > {gate.max_top1_drop_pp:g} pp")
    if gate.min_top1_ratio is not None and ref_top1 > 0:
        # A reference at 0% accuracy cannot lose any; the ratio is undefined there.
        ratio = top1 / ref_top1
        if ratio < gate.min_top1_ratio - _EPS:
            failures.append(
                f"top-1 {top1:.4f} keeps {ratio:.2%} of the reference {ref_top1:.4f} "
                f"< {gate.min_top1_ratio:.2%}"
            )
    if failures:
        return False, f"{precision} gate: " + "; ".join(failures)
    return True, None
