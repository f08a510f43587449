"""The imported model's ModelCard: from the flags (and the data set), checked against what the
file says: an ONNX graph's signature or porter's own card in its metadata. A flag that
contradicts the file is refused naming both values."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from port.ground.errors import ModelError, UsageError
from port.ground.limits import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_card

if TYPE_CHECKING:
    from port.data.spec import DataSpec
    from port.importing.request import ImportRequest
    from port.models.card import ModelCard
    from port.models.onnx_signature import Signature

# Classifier weights whose first axis is the class count (torchvision, timm, porter).
_HEAD_WEIGHTS = ("fc.weight", "linear.weight", "classifier.weight")


class DataFlag:
    """``--data`` as given, parsed the first time a card field needs the data set and then
    reused: one parse per import (a folder's parse lists it), and none at all when the other
    flags leave the card nothing to take from it."""

    def __init__(self, text: str | None) -> None:
        self.text = text
        self._spec: DataSpec | None = None

    @property
    def given(self) -> bool:
        """Whether ``--data`` was passed."""
        return bool(self.text)

    def spec(self) -> DataSpec:
        """The parsed data set (``DataError`` when the text names none); only when given."""
        if self._spec is None:
            from port.data.spec import parse_data_spec

            self._spec = parse_data_spec(self.text or "")
        return self._spec


def class_names(req: ImportRequest, data: DataFlag | None = None) -> list[str] | None:
    """Class names from --classes (a list or a file), or from --data's folders (``data``: the
    import's parsed-once --data; default: ``req.data``)."""
    if req.classes:
        path = Path(req.classes)
        try:
            is_file = path.is_file()
        except OSError:  # a long comma-separated list is no file name (ENAMETOOLONG)
            is_file = False
        if is_file:
            # Bounded read: the names land in the manifest and in every exported file.
            limit = MAX_CLASSES * 258
            if path.stat().st_size > limit:
                raise UsageError(f"--classes file {path} is over {limit} bytes: give one short "
                                 "name per line")
            names = [line.strip() for line in path.read_text(errors="replace").splitlines()
                     if line.strip()]
        else:
            names = [c.strip() for c in req.classes.split(",") if c.strip()]
        return names
    data = data if data is not None else DataFlag(req.data)
    if data.given:
        from port.data.datasets import dataset_classes

        return dataset_classes(data.spec())
    return None


def classes_from_weights(state: dict[str, Any]) -> int | None:
    """The class count the classifier's weight tells when no flag does (None: no such weight;
    a 0-dim "weight" tells nothing, and the shape check names it)."""
    return next((int(v.shape[0]) for k, v in state.items()
                 if k.endswith(_HEAD_WEIGHTS) and v.dim() >= 1), None)


def contradiction(flag: str, value: object, source: Path, said: str, fix: str) -> UsageError:
    """A flag that says something else than the model file: name both values and the fix."""
    return UsageError(f"{flag} {value} contradicts {source}: {said}; {fix}")


def _size_from_graph(req: ImportRequest, sig: Signature) -> int | None:
    """The square input size the graph fixes, checked against --image-size (None: not fixed)."""
    fixed = {d for d in (sig.height, sig.width) if d is not None}
    if sig.height is not None and sig.width is not None and sig.height != sig.width:
        raise ModelError(f"{req.source}: the input takes {sig.height}x{sig.width} images; porter "
                         "feeds square images: re-export the model with a square input (or "
                         "with a symbolic height and width)")
    for value in fixed:
        if req.image_size is not None and req.image_size != value:
            raise contradiction("--image-size", req.image_size, req.source,
                                f"its input {sig.input_name[:64]!r} takes {value} px",
                                f"drop --image-size or pass --image-size {value}")
        if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
            raise ModelError(f"{req.source}: the input takes {value} px images; porter feeds "
                             f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px: re-export the model with "
                             "a supported (or symbolic) size")
    return sig.image_size


def _num_classes(req: ImportRequest, names: list[str] | None, inferred: int | None,
                 sig: Signature | None) -> int:
    """The class count: --num-classes (never against the graph's), the names', the file's."""
    if sig is not None and sig.num_classes is not None and req.num_classes is not None \
            and req.num_classes != sig.num_classes:
        raise contradiction("--num-classes", req.num_classes, req.source,
                            f"its output {sig.output_name[:64]!r} has {sig.num_classes} "
                            "classes", "drop --num-classes (the file says it)")
    num_classes = req.num_classes or (len(names) if names else None) or inferred
    if num_classes is None:
        raise UsageError("cannot tell the number of classes: pass --num-classes or --classes")
    return num_classes


def _image_size(req: ImportRequest, sig: Signature | None, data: DataFlag) -> int:
    """The input size: the graph's fixed one, else --image-size, else the data set's."""
    graph_size = _size_from_graph(req, sig) if sig is not None else None
    if graph_size is not None:
        return graph_size
    if req.image_size is not None:
        return req.image_size
    if data.given:
        from port.data.datasets import native_image_size

        return native_image_size(data.spec())
    raise UsageError("cannot tell the input size: pass --image-size (or --data)")


def _mean_std(req: ImportRequest, size: int, channels: int, data: DataFlag
              ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """--mean/--std (one value per input channel), else the data set's for colour input."""
    per_channel = "R,G,B" if channels == 3 else "one value"
    for flag, values in (("--mean", req.mean), ("--std", req.std)):
        if values is not None and len(values) != channels:
            raise UsageError(f"{flag} has {len(values)} values but the model takes {channels} "
                             f"channel{'s' if channels != 1 else ''}: pass {per_channel}")
    if req.mean is not None and req.std is not None:
        return req.mean, req.std
    if data.given and channels == 3:
        from port.data.datasets import default_preprocess

        pre = default_preprocess(data.spec(), image_size=size)
        return req.mean or pre.mean, req.std or pre.std
    raise UsageError(f"cannot tell the normalisation: pass --mean and --std "
                     f"({per_channel} each)")


def card_from_flags(req: ImportRequest, arch: str, inferred_classes: int | None, *,
                    sig: Signature | None = None) -> ModelCard:
    """Build a ModelCard from the flags (and the data set, when given).

    ``sig`` (an ONNX graph's :class:`~port.models.onnx_signature.Signature`) supplies what the
    graph says: its class count and size win over nothing, and a flag that contradicts them is
    refused; mean/std must have one value per input channel.
    """
    from port.data.preprocess import Preprocess
    from port.models.card import ModelCard

    data = DataFlag(req.data)  # parsed when first needed, once for every field below
    names = class_names(req, data)
    num_classes = _num_classes(req, names, inferred_classes, sig)
    if names is None:
        names = [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(
            f"--classes names {len(names)} classes but the model has {num_classes}: "
            "pass one name per output"
        )
    size = _image_size(req, sig, data)
    mean, std = _mean_std(req, size, sig.channels if sig is not None else 3, data)
    kwargs = {"width": req.width} if req.width is not None else {}
    pre = Preprocess.for_size(size, mean, std)
    if req.color_order is not None:  # what the model was trained on; no file says it
        pre = replace(pre, color_order=req.color_order)
    return ModelCard(arch=arch, num_classes=num_classes, classes=names, preprocess=pre,
                     model_kwargs=kwargs)


def _check_flags_against_card(req: ImportRequest, card: ModelCard) -> None:
    """A flag given with a file that carries porter's card must say what the card says."""
    pre = card.preprocess
    given = [("--num-classes", req.num_classes, card.num_classes),
             ("--image-size", req.image_size, pre.image_size),
             ("--mean", req.mean and list(req.mean), list(pre.mean)),
             ("--std", req.std and list(req.std), list(pre.std)),
             ("--color-order", req.color_order, pre.color_order)]
    names = class_names(req) if req.classes else None  # --data names are checked by evaluate
    given.append(("--classes", names, list(card.classes)))
    for flag, value, recorded in given:
        if value is not None and value != recorded:
            shown = recorded if not isinstance(recorded, list) else ",".join(
                str(v) for v in recorded[:5]) + ("..." if len(recorded) > 5 else "")
            raise contradiction(flag, str(value)[:60] if not isinstance(value, list) else
                                ",".join(str(v) for v in value[:5]), req.source,
                                f"its porter card says {shown}",
                                f"drop {flag} (the card is what the model was exported with)")


def _check_porter_card(req: ImportRequest, card: ModelCard, sig: Signature) -> None:
    """Porter's card in a file is untrusted: its own values first, then against the graph and
    the flags."""
    check_card(card.to_dict(), str(req.source), outputs=sig.num_classes)
    if card.input_name != sig.input_name:
        raise ModelError(f"{req.source}: the model card's input {card.input_name[:64]!r} is "
                         f"not an input of the graph (its image input is "
                         f"{sig.input_name[:64]!r}): fix the card or re-export the model")
    size = sig.image_size
    if size is not None and size != card.preprocess.image_size:
        raise ModelError(f"{req.source}: the model card says {card.preprocess.image_size} "
                         f"px but the graph's input takes {size} px: fix the card or "
                         "re-export the model")
    _check_flags_against_card(req, card)


def onnx_card(req: ImportRequest, proto: Any, sig: Signature) -> ModelCard:
    """The card of an imported ONNX graph: porter's from its metadata (checked), else the
    flags'; then what the graph says (:func:`port.models.onnx_signature.apply_signature`)."""
    from port.models.card_codec import card_from_metadata
    from port.models.onnx_signature import apply_signature

    props = {p.key: p.value for p in proto.metadata_props}
    card = card_from_metadata(props, source=str(req.source))  # porter's card: checked below
    if card is None:
        card = card_from_flags(req, req.arch or "external-onnx", sig.num_classes, sig=sig)
    else:
        _check_porter_card(req, card, sig)
    if sig.batch is not None and sig.batch > MAX_BATCH:
        raise ModelError(f"{req.source}: the input has a fixed batch of {sig.batch}; porter "
                         f"runs at most {MAX_BATCH} images at once: re-export it with a smaller "
                         "(or dynamic) batch")
    card = apply_signature(card, sig)
    check_card(card.to_dict(), str(req.source), outputs=sig.num_classes)
    return card
