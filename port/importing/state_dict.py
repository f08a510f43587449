"""`porter import WEIGHTS.pt`: rebuild ``--arch`` from a state_dict (porter's own or another code
base's: :func:`port.models.checkpoint.read_state_dict`) and save it as the run's ``model.pt``
with its card, so every later stage treats it exactly like a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from port.ground.errors import UsageError
from port.importing.card import card_from_flags, classes_from_weights
from port.importing.request import Imported, ImportRequest

if TYPE_CHECKING:
    from port.models.card import ModelCard


def save_rebuilt(run: Path, source: Path, card: ModelCard, state: dict[str, Any]) -> Path:
    """The card's architecture with ``state``'s tensors (missing/unexpected/reshaped keys
    refused with the closest names), saved as ``RUN/model.pt``; the card is checked first."""
    from port.ground.limits import check_card
    from port.models.checkpoint import apply_state_dict, save_model
    from port.models.registry import create_model

    check_card(card.to_dict(), str(source))
    model = create_model(card.arch, card.num_classes, **card.model_kwargs)
    apply_state_dict(model, state, str(source),
                     hint=f"check --arch {card.arch} and --num-classes {card.num_classes}, or "
                          "rename keys with --key-map OLD=NEW")
    out = run / "model.pt"
    save_model(out, model, card, extra={"imported_from": str(source)})
    return out


def import_state_dict(run: Path, req: ImportRequest) -> Imported:
    """Rebuild ``--arch`` from the file's weights; ``how`` says how the weights were read."""
    from port.models.checkpoint import parse_key_map, read_state_dict
    from port.models.registry import get_entry

    if not req.arch:
        raise UsageError("importing a state_dict needs --arch (see `porter models`)")
    get_entry(req.arch)  # an unknown name is refused before the (large) file is read
    renames = [parse_key_map(text) for text in req.key_map]  # before the file is read
    foreign = read_state_dict(req.source, weights_key=req.weights_key, key_map=renames)
    state = foreign.state  # str keys and tensors only (checked there)
    card = card_from_flags(req, req.arch, classes_from_weights(state))
    out = save_rebuilt(run, req.source, card, state)
    # What was done to reach the weights goes into the import record: a reader of the manifest
    # can tell the EMA from the plain weights and repeat the renames.
    how = {"weights_key": foreign.container, "stripped_prefixes": foreign.stripped,
           "dropped_keys": foreign.dropped,
           "key_map": foreign.key_map, "describe": foreign.describe()}
    return Imported(out, "checkpoint", card.to_dict(), how)
