"""port.ground.vocab: each fact of porter's vocabulary has one home.

The layouts, colour orders, channel counts, dtypes, activations, artifact ids, default batch
sizes and caps were once written out in several modules and could drift apart (a layout added
to the card schema but not to the adapter). These tests read ``port/``'s source with ``ast`` and
fail when one of vocab's tuples is spelled out again, in any order, or when a module defines a
constant under one of vocab's names instead of importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import port.ground.vocab as vocab
from port.models.onnx_signature import ONNX_INPUT_DTYPES

VOCAB_FILE = Path(vocab.__file__)
ROOT = VOCAB_FILE.parents[2]  # the folder holding port/ (vocab is port/ground/vocab.py)
NAMES = {name: value for name, value in vars(vocab).items() if name.isupper()}
TUPLES = {name: value for name, value in NAMES.items() if isinstance(value, tuple)}

# Copies that live in modules other engineers are rewriting right now; each goes (and its entry
# here with it) when that module reads port.ground.vocab. An entry must still match what the source
# holds, so a fixed copy cannot leave an exemption behind for a new one to hide in.
PENDING = {
    # evaluate() and evaluate_stream()'s batch_sizes defaults
    ("port/evaluate/compare.py", "EVALUATE_BATCH_SIZES"): 2,
    # gate.py's own REPORT_ID = "report"
    ("port/stages/gate.py", "REPORT_ID"): 1,
}


def _same(found: tuple[object, ...], fact: tuple[object, ...]) -> bool:
    """The same values in any order (("NHWC", "NCHW") is the layouts fact too)."""
    return len(found) == len(fact) and set(found) == set(fact)


def _copies() -> list[tuple[str, str, int]]:
    """(file, vocab name, line) of every copy of a vocab fact in port/ outside vocab.py."""
    hits = []
    for path in sorted((ROOT / "port").rglob("*.py")):
        if path == VOCAB_FILE:
            continue
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and node.elts and all(
                    isinstance(e, ast.Constant) for e in node.elts):
                values = tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
                hits += [(rel, name, node.lineno) for name, fact in TUPLES.items()
                         if _same(values, fact)]
        for node in tree.body:  # a module-level constant named like a vocab one: a copy
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            hits += [(rel, t.id, node.lineno) for t in targets
                     if isinstance(t, ast.Name) and t.id in NAMES]
    return hits


def test_no_vocab_fact_is_written_out_twice() -> None:
    hits = _copies()
    counts: dict[tuple[str, str], int] = {}
    for rel, name, _ in hits:
        counts[rel, name] = counts.get((rel, name), 0) + 1
    new = [f"{rel}:{line}: {name}" for rel, name, line in hits if (rel, name) not in PENDING]
    assert not new, ("copies of port.ground.vocab's facts: import them from there instead:\n"
                     + "\n".join(new))
    stale = {key: want for key, want in PENDING.items() if counts.get(key, 0) != want}
    assert not stale, (f"PENDING in tests/test_vocab.py no longer matches the source "
                       f"(wanted {stale}, found {counts}): remove or correct the entry")


def test_vocab_is_ground_floor() -> None:
    """Anything may read it without pulling in numpy, torch or rich: it imports nothing."""
    tree = ast.parse(VOCAB_FILE.read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def test_onnx_element_types_map_onto_the_input_dtypes() -> None:
    assert sorted(ONNX_INPUT_DTYPES.values()) == sorted(vocab.INPUT_DTYPES)


def test_the_scan_sees_a_copy_in_any_order() -> None:
    """The check above is only as good as its matcher: a reordered tuple still counts."""
    assert _same(("NHWC", "NCHW"), vocab.LAYOUTS) and _same((32, 1), vocab.EVALUATE_BATCH_SIZES)
    assert not _same(("NCHW",), vocab.LAYOUTS) and not _same((1, 3, 3), vocab.CHANNELS)
