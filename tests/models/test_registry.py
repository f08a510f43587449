"""The model registry: names, kwargs validation, forward shapes, width and zero-init options."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from port.ground.errors import UsageError
from port.models.registry import create_model, get_entry, list_models

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet18_cifar",
            "resnet9"}


def test_list_models_has_the_family() -> None:
    assert set(list_models()) >= EXPECTED


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UsageError) as err:
        create_model("resnet19", 10)
    msg = str(err.value)
    assert "resnet19" in msg and "resnet18_cifar" in msg and "resnet9" in msg
    assert "\n" not in msg


def test_unknown_kwarg_names_accepted_ones() -> None:
    with pytest.raises(UsageError, match=r"does not accept width: it accepts zero_init_residual"):
        create_model("resnet50", 10, width=0.5)


def test_bad_num_classes() -> None:
    with pytest.raises(UsageError, match="num_classes"):
        create_model("resnet9", 0)


def test_entries_describe_models() -> None:
    for name in list_models():
        entry = get_entry(name)
        assert entry.name == name
        assert entry.native_size in (32, 224)
        assert entry.description
        assert "num_classes" not in entry.kwargs
    assert get_entry("resnet18_cifar").native_size == 32
    assert get_entry("resnet50").native_size == 224
    assert set(get_entry("resnet9").kwargs) == {"width", "logit_scale", "zero_init_residual",
                                                "activation", "whiten", "ghost_batch"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_shape(name: str) -> None:
    entry = get_entry(name)
    kwargs = {"width": 0.25} if "width" in entry.kwargs else {}
    torch.manual_seed(0)
    model = create_model(name, 7, **kwargs).eval()
    # ImageNet models take any size >= 32 thanks to adaptive pooling; 64 px keeps this fast.
    size = 32 if entry.native_size == 32 else 64
    with torch.inference_mode():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def _zero_init_bns(model: torch.nn.Module) -> list[torch.Tensor]:
    """Weights of the last BN of each residual branch, for every block type we have."""
    weights = []
    for module in model.modules():
        if hasattr(module, "bn3"):  # Bottleneck
            weights.append(module.bn3.weight)
        elif hasattr(module, "bn2"):  # BasicBlock
            weights.append(module.bn2.weight)
        elif hasattr(module, "res2"):  # ResNet-9 residual
            weights.append(module.res2[1].weight)
    return weights


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet18_cifar", "resnet9"])
def test_zero_init_residual(name: str) -> None:
    kwargs = {"width": 0.25} if "width" in get_entry(name).kwargs else {}
    on = _zero_init_bns(create_model(name, 10, zero_init_residual=True, **kwargs))
    off = _zero_init_bns(create_model(name, 10, zero_init_residual=False, **kwargs))
    assert on and all(torch.count_nonzero(w) == 0 for w in on)
    assert all(torch.count_nonzero(w) > 0 for w in off)


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet9"])
def test_width_scales_channels(name: str) -> None:
    full = create_model(name, 10)
    quarter = create_model(name, 10, width=0.25)
    assert full.fc.in_features == 512
    assert quarter.fc.in_features == 128
    n_full = sum(p.numel() for p in full.parameters())
    n_quarter = sum(p.numel() for p in quarter.parameters())
    assert n_quarter < n_full / 10  # conv weights scale with width squared


def test_width_must_be_positive() -> None:
    with pytest.raises(UsageError, match="width must be > 0"):
        create_model("resnet9", 10, width=0.0)


def test_resnet9_logit_scale() -> None:
    torch.manual_seed(0)
    a = create_model("resnet9", 10, width=0.25, logit_scale=1.0).eval()
    b = create_model("resnet9", 10, width=0.25, logit_scale=0.125).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(b(x), a(x) * 0.125)


def test_cifar_resnet_keeps_torchvision_names() -> None:
    keys = set(create_model("resnet18_cifar", 10).state_dict())
    tv_keys = set(create_model("resnet18", 10).state_dict())
    assert keys == tv_keys  # same layout, only the stem's kernel size differs


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_registry_names_no_model_module() -> None:
    """Model modules import the registry, never the reverse: the package lists them."""
    import port.models

    registry = _imported_modules(REPO / "port/models/registry.py")
    assert port.models.MODEL_MODULES and not registry & set(port.models.MODEL_MODULES)
    for name in port.models.MODEL_MODULES:
        source = REPO / (name.replace(".", "/") + ".py")
        assert "port.models.registry" in _imported_modules(source), name


def test_lookups_import_no_model_module() -> None:
    """Listing and looking up read the declaration (no torch); building imports the module."""
    code = (
        "import sys\n"
        "import port.models.card, port.models.registry as r\n"
        "r.list_models(), r.get_entry('resnet9')\n"
        "print('torch' in sys.modules, 'port.models.resnet' in sys.modules)\n"
        "r.create_model('resnet9', 10, width=0.25)\n"
        "print('port.models.resnet' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    # ResNet-9 needs no torchvision: resnet.py imports it only for the models built from it.
    assert out.stdout.split() == ["False", "False", "True", "False"]


def test_declarations_match_the_builders() -> None:
    """Every declared model is registered by its builder, and nothing undeclared is.

    Registration already refuses a builder that differs from its line in ``MODELS``; this also
    catches a line whose builder registers nothing, and shows each line equal to what the
    function itself says (signature-derived kwargs, docstring first line).
    """
    import importlib

    from port.models import MODELS, import_model_modules
    from port.models.registry import _BUILDERS, describe

    import_model_modules()
    assert set(_BUILDERS) == {entry.name for entry in MODELS}
    for entry in MODELS:
        module, _, qualname = entry.builder.partition(":")
        fn = getattr(importlib.import_module(module), qualname)
        assert fn is _BUILDERS[entry.name]
        assert describe(fn, entry.native_size) == entry


def test_a_builder_unlike_its_declaration_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from port.models import ModelEntry
    from port.models.registry import _DECLARED, register_model

    def tiny(num_classes: int, depth: int = 2) -> torch.nn.Module:
        """A tiny model."""
        return torch.nn.Linear(depth, num_classes)

    declared = ModelEntry("tiny", 32, ("depth",), "A tiny model.",
                          f"{__name__}:{tiny.__qualname__}")
    monkeypatch.setitem(_DECLARED, "tiny", declared)
    with pytest.raises(ValueError, match="does not match its declaration"):
        register_model(native_size=224)(tiny)  # native size differs
    monkeypatch.setitem(_DECLARED, "tiny", ModelEntry(**{**declared.__dict__, "kwargs": ()}))
    with pytest.raises(ValueError, match="does not match its declaration"):
        register_model(native_size=32)(tiny)  # a keyword the declaration lacks
    monkeypatch.delitem(_DECLARED, "tiny")
    with pytest.raises(ValueError, match="declared None"):
        register_model(native_size=32)(tiny)  # not declared at all
