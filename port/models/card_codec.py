"""Self-describing model metadata: what an app needs to feed an exported model without porter.

Written into ONNX ``metadata_props`` (and, by the TensorRT builder, into the engine's JSON
sidecar). Every value is a UTF-8 string, as ONNX requires. The schema (version
:data:`SCHEMA_VERSION`, documented for app authors in ``docs/metadata.md``) has two layers:

- ``porter.card``: one JSON document (UTF-8, not ``\\u``-escaped) with the whole
  :class:`ModelCard` plus ``"schema"``; porter and Python apps read it in one step.
- flat ``porter.*`` keys for readers that take one field at a time (a C app, ONNX Runtime's
  ``custom_metadata_map``, Netron). Each key has exactly one format, so a C reader needs no JSON:
  integers in decimal, floats as shortest round-trip decimals, number lists comma-separated,
  text lists one item per line, booleans ``true``/``false``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from port.ground.errors import ModelError
from port.ground.version import VERSION
from port.models.card import ModelCard

PREFIX = "porter."
CARD_KEY = "porter.card"
PRECISION_KEY = "porter.precision"  # fp32 | fp16 | int8: what the graph carries
SCHEMA_KEY = "porter.schema"
# Bumped when a key changes meaning or format; readers refuse a newer major schema. Keys added
# without changing any existing one (channels, output_layout, output_softmax and the card's
# matching fields, for models made elsewhere) keep the version: a schema-1 reader that checks
# porter.layout, porter.input_dtype and the length of porter.mean still refuses what it cannot
# feed, and porter's own models read exactly as before.
SCHEMA_VERSION = 1
# How porter's evaluation resizes (torchvision's Resize on a PIL image): the shorter side to
# ``resize`` with PIL's bilinear filter, antialiased (the filter widens on downscaling).
RESIZE_MODE = "shorter_side"
INTERPOLATION = "bilinear"
ANTIALIAS = True


def _floats(values: Any) -> str:
    # repr() of a Python float is the shortest decimal that reads back to the same double.
    return ",".join(repr(float(v)) for v in values)


def card_document(card: ModelCard) -> dict[str, Any]:
    """The ``porter.card`` JSON document: the card, the schema version and the resize rule."""
    doc = card.to_dict()
    doc["schema"] = SCHEMA_VERSION
    doc["preprocess"].update(resize_mode=RESIZE_MODE, interpolation=INTERPOLATION,
                             antialias=ANTIALIAS)
    return doc


def card_metadata(
    card: ModelCard,
    *,
    precision: str,
    source_sha256: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The ``porter.*`` key/value strings that describe ``card`` exported at ``precision``.

    ``extra`` adds keys (prefixed with ``porter.`` unless they already are); non-string values
    are stored as JSON documents.
    """
    pre = card.preprocess
    c, h, w = card.input_shape
    # The graph's own axis order; -1: the batch axis is dynamic (ONNX Runtime and Triton spell
    # it the same way), else the fixed batch the graph takes.
    n = -1 if card.batch is None else card.batch
    shape = (n, h, w, c) if pre.layout == "NHWC" else (n, c, h, w)
    for name in card.classes:
        if "\n" in name or "\r" in name:
            raise ModelError(f"class name {name!r} contains a line break, which the metadata "
                             "cannot hold (one class per line): rename the class")
    meta: dict[str, str] = {
        SCHEMA_KEY: str(SCHEMA_VERSION),
        "porter.version": VERSION,
        "porter.arch": card.arch,
        "porter.num_classes": str(card.num_classes),
        "porter.classes": "\n".join(card.classes),
        "porter.input_name": card.input_name,
        "porter.output_name": card.output_name,
        "porter.input_shape": ",".join(str(d) for d in shape),
        "porter.input_dtype": card.input_dtype,
        "porter.channels": str(c),
        "porter.layout": pre.layout,
        "porter.color_order": pre.color_order,
        "porter.resize": str(pre.resize),
        "porter.resize_mode": RESIZE_MODE,
        "porter.interpolation": INTERPOLATION,
        "porter.antialias": "true" if ANTIALIAS else "false",
        "porter.crop": str(pre.crop),
        "porter.scale": repr(float(pre.scale)),
        "porter.mean": _floats(pre.mean),
        "porter.std": _floats(pre.std),
        "porter.output_layout": card.output_layout,
        "porter.output_softmax": "true" if card.output_softmax else "false",
        "porter.precision": precision,
        "porter.source_sha256": source_sha256 or "",
        CARD_KEY: json.dumps(card_document(card), sort_keys=True, ensure_ascii=False),
    }
    for key, value in (extra or {}).items():
        full = key if key.startswith(PREFIX) else PREFIX + key
        meta[full] = (value if isinstance(value, str)
                      else json.dumps(value, sort_keys=True, ensure_ascii=False))
    return meta


def set_metadata(proto: Any, meta: dict[str, str]) -> None:
    """Set ``meta`` in an ``onnx.ModelProto``'s ``metadata_props`` (the one writer of them).

    Keys in ``meta`` are replaced; other tools' keys are kept; ``porter.*`` keys absent from
    ``meta`` are dropped (they described an earlier form of the graph). Entries are sorted, so
    equal inputs give equal bytes.
    """
    props = {p.key: p.value for p in proto.metadata_props
             if p.key not in meta and not p.key.startswith(PREFIX)}
    props.update({key: str(value) for key, value in meta.items()})
    del proto.metadata_props[:]
    for key in sorted(props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, props[key]


def card_from_metadata(meta: dict[str, str], *, source: str = "metadata") -> ModelCard | None:
    """Rebuild the card from ``porter.*`` strings; ``None`` when there is no porter card."""
    text = meta.get(CARD_KEY)
    if text is None:
        return None
    try:
        doc = json.loads(text)
        schema = int(doc.get("schema", SCHEMA_VERSION))
    except (ValueError, TypeError, AttributeError) as err:
        raise ModelError(
            f"{source}: the '{CARD_KEY}' metadata is damaged ({type(err).__name__}: {err}): "
            "re-export the model with porter"
        ) from None
    if schema > SCHEMA_VERSION:
        raise ModelError(f"{source}: metadata schema {schema} is newer than this porter reads "
                         f"({SCHEMA_VERSION}): upgrade porter")
    try:
        return ModelCard.from_dict(doc)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(
            f"{source}: the '{CARD_KEY}' metadata is damaged ({type(err).__name__}: {err}): "
            "re-export the model with porter"
        ) from None


def read_metadata(onnx_path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    import onnx  # heavy; only when an ONNX file is actually read
    from google.protobuf.message import DecodeError

    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"ONNX file not found: {path}: check the path or run `porter export`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as err:
        raise ModelError(
            f"{path} is not a readable ONNX file ({type(err).__name__}): re-export it"
        ) from None
    return {p.key: p.value for p in model.metadata_props}


def read_card(onnx_path: str | Path) -> ModelCard | None:
    """The :class:`ModelCard` stored in an ONNX file, or ``None`` for an ONNX made elsewhere."""
    return card_from_metadata(read_metadata(onnx_path), source=str(onnx_path))


def read_precision(onnx_path: str | Path) -> str | None:
    """The ``porter.precision`` of an ONNX file, or ``None`` when it does not say."""
    return read_metadata(onnx_path).get("porter.precision") or None
