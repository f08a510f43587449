"""Framework-neutral weights: a model's tensors as a NumPy ``.npz`` with a JSON index.

Format ``porter-weights/1`` (documented for C++ readers in docs/weights.md): an uncompressed
zip (``np.savez``: every member STORED) of one ``.npy`` per tensor, named by its module path
(``layer1.0.conv1.weight.npy``), little-endian, C order, plus ``__porter_index__.npy``: the
UTF-8 bytes of a JSON document (a 1-D ``uint8`` array, so no reader needs pickle or a string
dtype) listing every tensor (shape, dtype, parameter or buffer, owning module, layout
convention) and every layer in the order a real forward pass ran it, and the model card.

Reading is the other half: no pickle (``allow_pickle=False``), numeric dtypes only, and an
index that disagrees with the arrays is refused; the tensors come back bit for bit. Importing
one as a run's reference (`porter import W.npz`) is :mod:`port.importing.npz`'s.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from port.ground.atomic import atomic_path
from port.ground.errors import ModelError, first_line

FORMAT = "porter-weights/1"
INDEX_KEY = "__porter_index__"  # the index member (``__porter_index__.npy``)
# numpy dtype kinds a weight can have: bool, signed and unsigned integers, floats.
_NUMERIC_KINDS = "biuf"
_MAX_INDEX_BYTES = 64 << 20  # an index is a few KB per hundred tensors; this is no index

# The layout convention of each tensor, by (module type, tensor name). What a C++ reader needs
# to index the raw array: PyTorch's storage order, named axis by axis.
_CONV_LAYOUTS = {1: "OIW", 2: "OIHW", 3: "OIDHW"}  # O = out channels, I = in channels / groups
_CONV_T_LAYOUTS = {1: "IOW", 2: "IOHW", 3: "IODHW"}  # transposed conv: I first, O = out / groups
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def tensor_layout(module: nn.Module, name: str, tensor: torch.Tensor) -> str:
    """The layout convention of ``module``'s tensor ``name`` (e.g. ``OIHW``, ``[out, in]``).

    Axis letters are PyTorch's storage order, outermost first. Tensors of module types porter
    does not describe say ``as stored`` and keep their shape as their only description.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        dims = len(module.kernel_size)
        if name == "weight":
            table = _CONV_T_LAYOUTS if module.transposed else _CONV_LAYOUTS
            return table.get(dims, "as stored")
        if name == "bias":
            return "O"
    if isinstance(module, nn.Linear):
        if name == "weight":
            return "[out, in] (y = x W^T + b)"
        if name == "bias":
            return "[out]"
    if isinstance(module, _NORMS):
        if name == "num_batches_tracked":
            return "scalar (training counter, unused at inference)"
        if name in ("weight", "bias", "running_mean", "running_var"):
            return "[C] per channel"
    if isinstance(module, nn.LayerNorm | nn.GroupNorm) and name in ("weight", "bias"):
        return "[C] per channel" if isinstance(module, nn.GroupNorm) else "normalized_shape"
    if isinstance(module, nn.Embedding) and name == "weight":
        return "[num_embeddings, dim]"
    if tensor.dim() == 0:
        return "scalar"
    return "as stored"


def _module_config(module: nn.Module) -> dict[str, Any]:
    """The hyper-parameters a hand port needs to reproduce ``module`` (strides, eps, ...)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": module.padding if isinstance(module.padding, str)
                else list(module.padding),
                "dilation": list(module.dilation), "groups": module.groups,
                "bias": module.bias is not None, "padding_mode": module.padding_mode}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if isinstance(module, _NORMS):
        return {"num_features": module.num_features, "eps": module.eps,
                "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        return {"kernel_size": module.kernel_size, "stride": module.stride,
                "padding": module.padding, "ceil_mode": module.ceil_mode}
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return {"output_size": module.output_size}
    if isinstance(module, nn.Dropout):
        return {"p": module.p, "at_inference": "identity"}
    return {}


def layer_order(model: nn.Module, sample: torch.Tensor) -> list[dict[str, Any]]:
    """The modules a real forward pass of ``sample`` ran, in the order it called them.

    Forward pre-hooks on every leaf module and every module that owns tensors directly record
    the first call of each (a module called twice keeps its first place, ``calls`` counts them)
    and the output shape of that call. ``model`` must be in eval mode: the pass then changes no
    buffer (BatchNorm's running statistics stay as saved).
    """
    if model.training:
        raise ValueError("layer_order needs model.eval(): a training pass would update buffers")
    seen: dict[str, dict[str, Any]] = {}
    handles = []
    for name, module in model.named_modules():
        owns = any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False))
        leaf = not any(True for _ in module.children())
        if not name or not (owns or leaf):
            continue  # the root (the whole network) and pure containers are no layer

        def pre(mod: nn.Module, args: Any, name: str = name) -> None:
            entry = seen.get(name)
            if entry is None:
                seen[name] = {"module": name, "type": type(mod).__name__, "calls": 1}
            else:
                entry["calls"] += 1

        def post(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            entry = seen[name]
            if "output_shape" not in entry and isinstance(out, torch.Tensor):
                entry["output_shape"] = list(out.shape)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    layers = []
    for order, entry in enumerate(seen.values()):
        config = _module_config(modules[entry["module"]])
        layers.append({"order": order, **entry, **({"config": config} if config else {})})
    return layers


def build_index(model: nn.Module, card_dict: dict[str, Any], sample: torch.Tensor,
                state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The JSON index of ``state`` (``model``'s own state_dict): tensors in layer order."""
    layers = layer_order(model, sample)
    order = {layer["module"]: layer["order"] for layer in layers}
    modules = dict(model.named_modules())
    params = {name for name, _ in model.named_parameters()}
    tensors = []
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner, model)
        array_dtype = _numpy_dtype(value)
        tensors.append({
            "name": key, "shape": list(value.shape), "dtype": array_dtype.name,
            "descr": array_dtype.str, "kind": "parameter" if key in params else "buffer",
            "module": owner, "module_type": type(module).__name__,
            "layout": tensor_layout(module, leaf, value),
            # Modules the pass never ran (an unused head) have no place: null.
            "layer_order": order.get(owner),
        })
    # Execution order first, unrun modules last, state_dict order among equals.
    position = {t["name"]: i for i, t in enumerate(tensors)}
    tensors.sort(key=lambda t: (t["layer_order"] is None, t["layer_order"] or 0,
                                position[t["name"]]))
    return {"format": FORMAT, "byte_order": "little", "array_order": "C",
            "arch": card_dict.get("arch"), "card": card_dict,
            "input_shape": list(sample.shape), "layers": layers, "tensors": tensors}


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    """The little-endian numpy dtype of ``tensor`` (``ModelError`` for one numpy lacks)."""
    try:
        dtype = torch.empty((), dtype=tensor.dtype).numpy().dtype
    except TypeError:
        raise ModelError(f"a {tensor.dtype} tensor has no NumPy dtype: convert the model to "
                         "float32 before exporting its weights") from None
    return dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype


def write_npz(path: str | Path, model: nn.Module, card_dict: dict[str, Any],
              sample: torch.Tensor) -> dict[str, Any]:
    """Write ``model``'s parameters and buffers as ``porter-weights/1`` at ``path``, atomically.

    ``sample`` is one input batch for the forward pass that orders the layers. Returns the index.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    index = build_index(model, card_dict, sample, state)
    arrays: dict[str, np.ndarray] = {}
    for entry in index["tensors"]:
        array = state[entry["name"]].numpy()
        # Little-endian, C order, whatever this machine is: the file's one convention.
        # (np.array, not np.ascontiguousarray: that one turns a 0-d scalar into shape [1].)
        arrays[entry["name"]] = np.array(array, dtype=np.dtype(entry["descr"]), order="C")
    blob = json.dumps(index, ensure_ascii=False, indent=1).encode("utf-8")
    arrays[INDEX_KEY] = np.frombuffer(blob, dtype=np.uint8)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        # A file object, not a path: np.savez would append ".npz" to the temporary name.
        np.savez(fh, allow_pickle=False, **arrays)
    return index


# -- reading --------------------------------------------------------------------------------------
@dataclass
class NpzWeights:
    """Tensors read from an ``.npz`` (bit for bit), and its index when it has one."""

    state: dict[str, torch.Tensor]
    index: dict[str, Any] | None = None
    card: dict[str, Any] | None = field(default=None)


def _refuse(path: Path, why: str) -> ModelError:
    return ModelError(f"refused: {path} {why}")


def read_npz(path: str | Path) -> NpzWeights:
    """Read an ``.npz`` of weights without pickle; every problem is a one-line ``ModelError``.

    Refused: a file that is no zip/npz, a member needing pickle (object arrays), a non-numeric
    dtype (strings, structured records, datetimes), an index that is not ``porter-weights/1``
    JSON or that disagrees with the arrays (a listed tensor missing, an array not listed, another
    shape or dtype). Arrays of the other byte order are converted, values unchanged.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not an .npz file (no zip archive): write it with "
                         "numpy.savez or `porter weights export`")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise _refuse(path, "holds object arrays, which need pickle to load (they run code "
                          "from the file): save plain numeric arrays only") from None
        raise ModelError(f"{path} is corrupt ({first_line(exc, limit=100)}): re-export "
                         "it") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ModelError(f"{path} is truncated or corrupt ({first_line(exc, limit=100)}): "
                         "re-export it") from None
    index = _read_index(path, arrays.pop(INDEX_KEY, None))
    if not arrays:
        raise ModelError(f"{path} holds no arrays: export the weights again")
    for key, array in arrays.items():
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise _refuse(path, f"entry {key[:80]!r} has dtype {array.dtype} (not a number "
                          "array): save numeric arrays (float, int, bool) only")
    if index is not None:
        _check_index(path, index, arrays)
    state: dict[str, torch.Tensor] = {}
    for key, array in arrays.items():
        # A native-order C-contiguous copy (0-d arrays stay 0-d); the values are unchanged.
        native = np.array(array, dtype=array.dtype.newbyteorder("="), order="C")
        try:
            state[key] = torch.from_numpy(native)
        except TypeError:
            raise _refuse(path, f"entry {key[:80]!r} has dtype {array.dtype}, which PyTorch "
                          "cannot hold: save it as float32 or int64") from None
    card = index.get("card") if index is not None else None
    return NpzWeights(state=state, index=index, card=card if isinstance(card, dict) else None)


def _read_index(path: Path, blob: np.ndarray | None) -> dict[str, Any] | None:
    """The parsed index member, None when the file has none (a plain ``np.savez``)."""
    if blob is None:
        return None
    if blob.dtype != np.uint8 or blob.ndim != 1 or blob.size > _MAX_INDEX_BYTES:
        raise _refuse(path, f"has a {INDEX_KEY} entry that is not a 1-D uint8 array of JSON "
                      "bytes: re-export it with `porter weights export`")
    try:
        index = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _refuse(path, f"has an unreadable index ({first_line(exc, limit=80)}): re-export "
                      "it with `porter weights export`") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise _refuse(path, f"has an index of format {str(found)[:40]!r}, expected {FORMAT!r}: "
                      "re-export it with this porter version")
    if not isinstance(index.get("tensors"), list):
        raise _refuse(path, "has an index without a tensor list: re-export it")
    return index


def _check_index(path: Path, index: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Refuse an index that disagrees with the arrays it describes."""
    listed: dict[str, dict[str, Any]] = {}
    for entry in index["tensors"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _refuse(path, "has a malformed tensor entry in its index: re-export it")
        listed[entry["name"]] = entry
    missing = [k for k in listed if k not in arrays]
    unlisted = [k for k in arrays if k not in listed]
    if missing or unlisted:
        parts = ([f"index lists {missing[0][:80]!r} but the file has no such array"]
                 if missing else []) + (
            [f"array {unlisted[0][:80]!r} is not in the index"] if unlisted else [])
        raise _refuse(path, f"disagrees with its index ({len(missing)} listed but absent, "
                      f"{len(unlisted)} present but unlisted: {'; '.join(parts)}): re-export it")
    for key, array in arrays.items():
        entry = listed[key]
        if list(entry.get("shape", [])) != list(array.shape):
            raise _refuse(path, f"disagrees with its index: {key[:80]!r} is {list(array.shape)} "
                          f"but the index says {entry.get('shape')}: re-export it")
        if entry.get("dtype") != array.dtype.name:
            raise _refuse(path, f"disagrees with its index: {key[:80]!r} is {array.dtype.name} "
                          f"but the index says {str(entry.get('dtype'))[:20]}: re-export it")
