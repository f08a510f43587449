"""Layers kept in FP32 by an FP16/INT8 export: named (``--keep-fp32``/``--exclude NODES``) or
searched for (``auto``: :mod:`port.export.autofix`) on the run's own images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from port.export.autofix import AutoRequest
    from port.export.context import ExportContext

# Converts the FP32 graph with the named nodes kept in FP32 into the given file: its metrics.
Convert = Callable[[Sequence[str], Path], dict[str, Any]]


def check_fallback_names(src: Path, fallback: AutoRequest) -> None:
    """Refuse unknown --keep-fp32/--exclude node names before calibrating or converting."""
    if fallback.named:
        import onnx

        from port.export.autofix import FLAGS, check_node_names

        check_node_names(onnx.load(str(src), load_external_data=False), fallback.named,
                         FLAGS[fallback.precision])


def fp32_nodes(fallback: AutoRequest, metrics: dict[str, Any]) -> list[str]:
    """The nodes the written graph keeps in FP32: those named, or those the search chose."""
    auto = metrics.get("autofix")
    return list(auto["chosen"]) if auto else list(fallback.named)


def convert_with_fallback(ctx: ExportContext, fallback: AutoRequest, src: Path, out: Path,
                          convert: Convert, sensitivity_images: np.ndarray | None, *,
                          sample: np.ndarray | None = None) -> dict[str, Any]:
    """Convert with the named layers in FP32, or search for them (``auto``,
    ``port.export.autofix``): ranked on training images, judged on held-out validation images.
    With ``auto`` the metrics carry ``autofix`` (chosen layers, every step, the stop reason)."""
    if not fallback.auto:
        return convert(fallback.named, out)
    from port.export.autofix import (
        FLAGS,
        HELDOUT_IMAGES,
        SENSITIVITY_IMAGES,
        HeldoutCheck,
        fp16_required,
        run_autofix,
    )

    flag = FLAGS[fallback.precision]
    spec_text = ctx.data_text(f"{flag} auto (held-out images)")
    images, labels = ctx.load_images(spec_text, "val", HELDOUT_IMAGES)
    if sensitivity_images is None:
        sensitivity_images, _ = ctx.load_images(spec_text, "train", SENSITIVITY_IMAGES)
    start = list(fallback.named)
    if fallback.precision == "fp16":
        # Layers the pre-flight says would overflow come first: without them FP16 computes inf.
        start += [n for n in fp16_required(src, sample, start) if n not in start]
    ctx.console.print(f"{flag} auto: {len(start)} layer(s) in FP32 to start, up to "
                      f"{fallback.max_layers} step(s), gate judged on {len(images)} held-out "
                      "validation images", soft_wrap=True)
    result = run_autofix(fallback, src, out, convert, start=start,
                         sensitivity_images=sensitivity_images[:SENSITIVITY_IMAGES],
                         heldout=HeldoutCheck(src, images, labels), console=ctx.console)
    if not result.passed:
        ctx.console.print(f"[red]{flag} auto did not reach the {fallback.precision} gate[/red] "
                          f"({result.stop_reason}); wrote the best model found "
                          f"({len(result.chosen)} FP32 layer(s)): exit 1", soft_wrap=True)
    metrics = dict(result.convert_metrics)
    metrics["autofix"] = result.to_dict()
    return metrics
