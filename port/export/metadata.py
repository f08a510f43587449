"""Self-describing model metadata: what an app needs to feed an exported model without porter.

Written into ONNX ``metadata_props`` (and, by the TensorRT builder, into the engine's JSON
sidecar). Every value is a string, as ONNX requires. Flat ``porter.*`` keys serve apps that read
one field at a time (onnxruntime's ``get_modelmeta().custom_metadata_map``, Netron); the
``porter.card`` key holds the whole :class:`ModelCard` as JSON so porter reads it back in one step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from port import __version__
from port.errors import ModelError
from port.models.card import ModelCard

PREFIX = "porter."
CARD_KEY = "porter.card"
PRECISION_KEY = "porter.precision"  # fp32 | fp16 | int8: what the graph carries


def card_metadata(
    card: ModelCard,
    *,
    precision: str,
    source_sha256: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The ``porter.*`` key/value strings that describe ``card`` exported at ``precision``.

    ``extra`` adds keys (prefixed with ``porter.`` unless they already are); non-string values
    are stored as JSON.
    """
    pre = card.preprocess
    c, h, w = card.input_shape
    meta: dict[str, str] = {
        "porter.version": __version__,
        "porter.arch": card.arch,
        "porter.num_classes": str(card.num_classes),
        "porter.classes": json.dumps(list(card.classes)),
        "porter.input_name": card.input_name,
        "porter.output_name": card.output_name,
        # The shape of one example batch; axis 0 is dynamic (any batch size), said in porter.batch.
        "porter.input_shape": f"1x{c}x{h}x{w}",
        "porter.batch": "dynamic",
        "porter.dtype": "float32",
        "porter.layout": pre.layout,
        "porter.color_order": pre.color_order,
        "porter.resize": str(pre.resize),
        "porter.crop": str(pre.crop),
        "porter.scale": repr(float(pre.scale)),
        "porter.mean": json.dumps([float(v) for v in pre.mean]),
        "porter.std": json.dumps([float(v) for v in pre.std]),
        "porter.precision": precision,
        "porter.source_sha256": source_sha256 or "",
        CARD_KEY: json.dumps(card.to_dict(), sort_keys=True),
    }
    for key, value in (extra or {}).items():
        full = key if key.startswith(PREFIX) else PREFIX + key
        meta[full] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
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
        return ModelCard.from_dict(json.loads(text))
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
