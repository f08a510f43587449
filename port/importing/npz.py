"""`porter import W.npz`: rebuild the architecture from a ``porter-weights/1`` file's tensors
(read by :func:`port.models.weights_npz.read_npz`) and write ``RUN/model.pt``, as for a
state_dict. The card is the file's own (a flag may not contradict it), else the flags'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from port.ground.errors import ModelError, UsageError
from port.importing.card import card_from_flags, class_names, classes_from_weights
from port.importing.request import Imported, ImportRequest
from port.importing.state_dict import save_rebuilt
from port.models.card import ModelCard


def _card(req: ImportRequest, card_dict: dict[str, Any] | None,
          inferred: int | None) -> ModelCard:
    """The card of an imported npz: its index's card (a flag may not contradict it), else the
    flags' (as for a state_dict)."""
    if card_dict is None:
        if not req.arch:
            raise UsageError("importing an .npz without a porter index needs --arch (see "
                             "`porter models`)")
        return card_from_flags(req, req.arch, inferred)
    try:
        card = ModelCard.from_dict(card_dict)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{req.source} has a malformed model card in its index ({exc!r}): "
                         "re-export it") from None
    given = {"--arch": (req.arch, card.arch),
             "--num-classes": (req.num_classes, card.num_classes),
             "--image-size": (req.image_size, card.preprocess.image_size),
             "--width": (req.width, card.model_kwargs.get("width")),
             "--mean": (req.mean, tuple(card.preprocess.mean)),
             "--std": (req.std, tuple(card.preprocess.std))}
    for flag, (flag_value, file_value) in given.items():
        if flag_value is not None and flag_value != file_value:
            raise UsageError(f"{flag} {flag_value} contradicts {req.source}'s own card "
                             f"({file_value}): drop the flag (the file says it)")
    if req.classes and class_names(req) != list(card.classes):
        raise UsageError(f"--classes contradicts {req.source}'s own class names "
                         f"({', '.join(card.classes[:3])}, ...): drop the flag")
    return card


def import_npz(run: Path, req: ImportRequest) -> Imported:
    """Rebuild the model from the npz's tensors (the same checks as a state_dict import:
    missing/unexpected keys with the closest names and shapes); ``how`` names the format and
    the renames."""
    from port.models.checkpoint import _apply_key_map, parse_key_map
    from port.models.registry import get_entry
    from port.models.weights_npz import read_npz

    source = Path(req.source)
    if req.weights_key:
        raise UsageError(f"--weights-key applies to checkpoint files (.pt/.pth), not to "
                         f"{source.name}: an .npz holds the tensors themselves")
    if req.arch:
        get_entry(req.arch)  # an unknown name is refused before the (large) file is read
    renames = [parse_key_map(text) for text in req.key_map]
    weights = read_npz(source)
    state = _apply_key_map(weights.state, renames, source) if renames else weights.state
    card = _card(req, weights.card, classes_from_weights(state))
    get_entry(card.arch)
    out = save_rebuilt(run, source, card, state)
    how = {"weights_format": weights.index["format"] if weights.index else "npz",
           "key_map": [f"{o}={n}" for o, n in renames]}
    return Imported(out, "checkpoint", card.to_dict(), how)
