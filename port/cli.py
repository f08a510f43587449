"""The ``porter`` command line: parse flags -> typed config -> call one stage -> record.

Commands stay thin: each turns its flags into the stage's typed configuration, calls the stage
and records what it made in the run's manifest. Every ``PorterError`` (and every flag error)
ends as one line on stderr with exit code 2; a failed parity gate exits 1.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from port.ground.errors import PorterError, UsageError, first_line, os_error_line
from port.ground.vocab import CHANNELS, EVALUATE_BATCH_SIZES

try:  # typer >= 0.22 vendors click privately and exports its exceptions
    from typer import Abort, Exit
    from typer import TyperException as FlagError
except ImportError:  # older typer: click's own exceptions
    from click.exceptions import Abort, Exit
    from click.exceptions import ClickException as FlagError

app = typer.Typer(
    name="porter",
    help="Train an image classifier, export it to ONNX, OpenVINO or TensorRT, and prove nothing was lost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Piped output (logs, CI, `make demo | tee`) gets a wide console instead of rich's 80-column
# fallback, which would squash the evaluation table into ellipses.
_PIPED_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 180
console = Console(width=_PIPED_WIDTH)
err_console = Console(stderr=True)

RunOpt = Annotated[Path, typer.Option("--run", help="Run directory (holds manifest.json).")]


def _split_csv(text: str | None) -> list[str] | None:
    """'a,b, c' -> ['a', 'b', 'c']; None stays None."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _channel_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """Parse --mean/--std: one number per channel, '0.1307' (grayscale) or '0.5,0.5,0.5'."""
    if text is None:
        return None
    parts = _split_csv(text) or []
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in CHANNELS:
        raise UsageError(f"{flag} needs one number per channel: one (grayscale) or three "
                         f"comma-separated (R,G,B), got '{text}'")
    return values


def _batch_sizes(text: str) -> tuple[int, ...]:
    """Parse --batch-sizes '1,32'."""
    try:
        sizes = tuple(int(p) for p in _split_csv(text) or [])
    except ValueError:
        sizes = ()
    if not sizes or any(s <= 0 for s in sizes):
        raise UsageError(f"--batch-sizes needs positive integers like '1,32', got '{text}'")
    return sizes


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def _with_config_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one option per flag field of ``TrainConfig``, right after ``--recipe``.

    typer reads a command's options from its signature, so this one is generated: the config's
    fields (:func:`port.train.recipe.flag_fields`: name, type, help) are the one place a training
    setting is written down, and ``command`` receives them as ``**config`` (None = not given).
    """
    from port.train.recipe import flag_fields

    sig = inspect.signature(command, eval_str=True)
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    own = [p.replace(kind=keyword_only) for p in sig.parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    flags = [
        inspect.Parameter(f.name, keyword_only, default=None, annotation=Annotated[
            f.type | None,
            typer.Option(f"{f.flag}/--no-{f.flag[2:]}" if f.type is bool else f.flag, help=f.help),
        ])
        for f in flag_fields()
    ]
    at = [p.name for p in own].index("recipe") + 1
    command.__signature__ = sig.replace(parameters=[*own[:at], *flags, *own[at:]])  # type: ignore[attr-defined]
    return command


def _train_epilog() -> str:
    """The end of `porter train --help`: the settings without a flag, and train.yaml."""
    from port.train.recipe import set_only_fields

    return ("Settings without a flag are set with --set KEY=VALUE (or in a recipe): "
            f"{', '.join(set_only_fields())}. The resolved settings are saved as RUN/train.yaml; "
            "--recipe RUN/train.yaml reproduces the run.")


@app.command(epilog=_train_epilog())
@_with_config_flags
def train(
    run: RunOpt,
    recipe: Annotated[str | None, typer.Option(help="Recipe name (quick, cifar, imagenet-resnet50, ...) or a YAML path, e.g. an earlier RUN/train.yaml.")] = None,
    nproc_per_node: Annotated[int | None, typer.Option(help="DDP: training processes on this machine (one per GPU).")] = None,
    nnodes: Annotated[int | None, typer.Option(help="DDP: number of machines.")] = None,
    node_rank: Annotated[int | None, typer.Option(help="DDP: this machine's index in 0..nnodes-1.")] = None,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="DDP: HOST:PORT on node 0 that every machine reaches.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    download: Annotated[bool, typer.Option("--download", help="Let torchvision download CIFAR.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any recipe key: KEY=VALUE (YAML value).")] = None,
    **config: Any,
) -> None:
    """Train a model on a data set; records the checkpoint as the run's reference."""
    from port.stages.train import run_train
    from port.train.recipe import FIELD_NAMES

    # The generated config options, by field name; None = not given (the recipe decides).
    overrides: dict[str, Any] = {
        k: v for k, v in config.items() if k in FIELD_NAMES and v is not None
    }
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        import yaml

        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    launch = None  # no launcher flag: the stage checks the settings before importing torch
    if any(v is not None for v in (nproc_per_node, nnodes, node_rank, rdzv_endpoint)):
        from port.train.launch import LaunchSpec  # no torch: checked before it is imported

        launch = LaunchSpec(nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                            rdzv_endpoint=rdzv_endpoint)
    run_train(run, recipe=recipe, overrides=overrides, resume=resume, download=download,
              console=console, launch=launch)


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------
@app.command("import")
def import_(
    model: Annotated[Path, typer.Argument(help="A state_dict (.pt/.pth), an ONNX file, or weights (.npz, see `porter weights export`).")],
    run: RunOpt,
    arch: Annotated[str | None, typer.Option(help="Registry architecture of a state_dict.")] = None,
    num_classes: Annotated[int | None, typer.Option()] = None,
    image_size: Annotated[int | None, typer.Option()] = None,
    mean: Annotated[str | None, typer.Option(help="One value per channel: R,G,B or one (grayscale).")] = None,
    std: Annotated[str | None, typer.Option(help="One value per channel: R,G,B or one (grayscale).")] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated names, or a text file with one per line.")] = None,
    data: Annotated[str | None, typer.Option(help="Data set the model belongs to (default for later stages).")] = None,
    width: Annotated[float | None, typer.Option()] = None,
    weights_key: Annotated[str | None, typer.Option(help="Checkpoint entry holding the weights (default: state_dict, model_state_dict, model_state, model; an EMA such as model_ema only when asked or alone).")] = None,
    key_map: Annotated[list[str] | None, typer.Option(help="Rename a key prefix before matching, OLD=NEW (repeatable; e.g. backbone.= or head.=fc.).")] = None,
    layout: Annotated[str | None, typer.Option(help="NCHW or NHWC, for an ONNX input shape that could be either (read from the file otherwise).")] = None,
    color_order: Annotated[str | None, typer.Option(help="RGB or BGR: the channel order the model was trained on (default RGB).")] = None,
) -> None:
    """Register an existing model (state_dict or ONNX) as the run's reference."""
    from port.stages.importing import ImportRequest, run_import

    req = ImportRequest(
        source=model, arch=arch, num_classes=num_classes, image_size=image_size,
        mean=_channel_floats(mean, "--mean"), std=_channel_floats(std, "--std"),
        classes=classes, data=data, width=width, weights_key=weights_key,
        key_map=tuple(key_map or ()), layout=layout.upper() if layout else None,
        color_order=color_order.upper() if color_order else None,
    )
    run_import(run, req, console=console)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def _with_export_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one option per export option of the format registry (port.formats).

    The registry is the one place an export flag is written down (type, help, choices, which
    formats and precisions use it); ``command`` receives them as ``**options``.
    """
    from port.formats import all_options, export_formats

    flags = []
    for option in all_options().values():
        users = [f.name for f in export_formats() if option in f.options]
        where = ", ".join(users) + (f"; {'/'.join(sorted(option.precisions))}"
                                    if option.precisions else "")
        choices = f" One of {' | '.join(option.choices)}." if option.choices else ""
        # Comma-separated lists arrive as text; a bool is a plain switch (absent = not given).
        kind = str if option.type == list[str] else option.type
        flags.append((option.name, kind, option.flag, f"{option.help}{choices} ({where})"))
    return _with_flags(command, flags)


def _with_flags(command: Callable[..., None],
                flags: list[tuple[str, Any, str, str]]) -> Callable[..., None]:
    """``command`` with keyword-only options added to its signature, one per ``(name, type,
    flag, help)``, each ``None`` when not given; they reach it through its ``**options``."""
    sig = inspect.signature(command, eval_str=True)
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    own = [p.replace(kind=keyword_only) for p in sig.parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    added = [inspect.Parameter(name, keyword_only, default=None, annotation=Annotated[
        kind | None, typer.Option(flag, help=text)]) for name, kind, flag, text in flags]
    command.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    return command


def _export_help() -> tuple[str, str]:
    """--to and --precision help, from the registry."""
    from port.formats import export_formats

    formats = export_formats()
    to = " | ".join(f"{f.name} ({f.description})" for f in formats)
    precisions = " | ".join(dict.fromkeys(p for f in formats for p in f.precisions))
    return to, f"{precisions} (default fp32; any letter case)"


_TO_HELP, _PRECISION_HELP = _export_help()


@app.command()
@_with_export_flags
def export(
    run: RunOpt,
    to: Annotated[str, typer.Option("--to", help=_TO_HELP)],
    precision: Annotated[str | None, typer.Option(help=_PRECISION_HELP)] = None,
    **options: Any,
) -> None:
    """Export the run's reference model: ONNX, an OpenVINO IR, a TensorRT engine or a Triton repository."""
    from port.formats import all_options
    from port.stages.export import ExportRequest, run_export

    given = {k: v for k, v in options.items() if v is not None}
    for name, option in all_options().items():
        if name in given and option.type == list[str]:
            given[name] = _split_csv(given[name])
    # Names are normalised here, once: the stage only ever sees the registry's spelling.
    request = ExportRequest.from_flags(to, precision, given)
    record = run_export(run, request, console=console)
    # --keep-fp32/--exclude auto that did not reach the gate: the best model is written and
    # recorded, and the command fails like a failed evaluate gate.
    if (record.metrics or {}).get("autofix", {}).get("passed") is False:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def _with_backend_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one option per backend option of the registry (``port.formats.
    BACKENDS``: ``--int8-cpu-kernels``, ``--openvino-device``, ...), received as ``**options``."""
    from port.formats import BACKENDS, backend_options

    flags = []
    for option in backend_options().values():
        users = ", ".join(b.name for b in BACKENDS.values() if option in b.options)
        choices = f" One of {' | '.join(option.choices)}." if option.choices else ""
        default = f" Default {option.default}." if option.default is not None else ""
        flags.append((option.name, option.type, option.flag,
                      f"{option.help}{choices}{default} ({users})"))
    return _with_flags(command, flags)


def _backends_help() -> str:
    """--backends help, from the registry."""
    from port.formats import BACKENDS

    names = ", ".join(f"{b.name}{'' if b.default else ' (opt-in)'}" for b in BACKENDS.values())
    return ("Backends whose rows to make, comma-separated (default: every default backend "
            f"installed here; see porter doctor): {names}.")


_BACKENDS_HELP = _backends_help()


@app.command()
@_with_backend_flags
def evaluate(
    run: RunOpt,
    compare: Annotated[bool, typer.Option("--compare", help="Also run every exported artifact.")] = False,
    data: Annotated[str | None, typer.Option(help="Data set (default: the run's validation split).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate a seeded subset of N images.")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Latency batch sizes, e.g. 1,32.")] = ",".join(map(str, EVALUATE_BATCH_SIZES)),
    max_top1_drop: Annotated[float | None, typer.Option(help="FP32 gate: max top-1 drop in pp (default 0.1).")] = None,
    min_agreement: Annotated[float | None, typer.Option(help="FP32 gate: min top-1 agreement (default 0.999).")] = None,
    fp16_min_ratio: Annotated[float | None, typer.Option(help="FP16 gate: min fraction of reference top-1 kept (default 0.999).")] = None,
    int8_min_ratio: Annotated[float | None, typer.Option(help="INT8 gate: min fraction of reference top-1 kept (default 0.99).")] = None,
    gate_limits: Annotated[list[str] | None, typer.Option("--gate", help="A gate limit, PRECISION.LIMIT=VALUE (repeatable; 'none' switches it off), e.g. int8.min_top1_ratio=0.98 or bf16.min_top1_ratio=0.995; limits: min_agreement, max_top1_drop_pp, min_top1_ratio. The four flags above are its aliases.")] = None,
    backends: Annotated[str | None, typer.Option("--backends", help=_BACKENDS_HELP)] = None,
    download: Annotated[bool, typer.Option("--download", help="Let torchvision download CIFAR.")] = False,
    ignore_class_names: Annotated[bool, typer.Option("--ignore-class-names", help="Evaluate although the data's class names differ from the model's (same count).")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes that decode and preprocess images (default: half the CPUs up to 8, none below 4 CPUs; 0 = in this process).")] = None,
    layerwise: Annotated[str | None, typer.Option("--layerwise", help="Compare ARTIFACT (export id, .onnx file, or 'model') with the reference layer by layer; writes RUN/layerwise/.")] = None,
    images: Annotated[int, typer.Option("--images", help="--layerwise: validation images to compare on.")] = 32,
    against: Annotated[Path | None, typer.Option("--against", help="--layerwise: compare with <module>.npy activations in DIR (another implementation's dump).")] = None,
    dump: Annotated[Path | None, typer.Option("--dump", help="--layerwise: also write the reference's activations to DIR (input.npy + <module>.npy).")] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", help="--layerwise: relative L2 error over which a layer diverges (default by precision: fp32 1e-4, fp16 1e-2, int8 0.2).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="--layerwise: print the result as JSON.")] = False,
    **options: Any,
) -> None:
    """Top-1 parity and latency of the reference and (with --compare) every export, on every backend that runs it."""
    if layerwise is not None or against is not None or dump is not None:
        from port.stages.layerwise import LayerwiseRequest, run_layerwise

        if layerwise is None:
            raise UsageError("--against and --dump go with --layerwise ARTIFACT (use "
                             "--layerwise model for the reference itself)")
        if compare:
            raise UsageError("--layerwise and --compare are two runs: drop one")
        result = run_layerwise(run, LayerwiseRequest(
            artifact=layerwise, images=images, against=against, dump=dump, tolerance=tolerance,
            data=data, as_json=as_json, download=download), console=console)
        if result["first_divergence"] is not None:
            raise typer.Exit(code=1)
        return
    from port.formats import normalize_backend_options, parse_backends
    from port.stages.evaluate import EvaluateRequest, run_evaluate

    req = EvaluateRequest(
        compare=compare, data=data, limit=limit, batch_sizes=_batch_sizes(batch_sizes),
        max_top1_drop=max_top1_drop, min_agreement=min_agreement,
        fp16_min_ratio=fp16_min_ratio, int8_min_ratio=int8_min_ratio, download=download,
        ignore_class_names=ignore_class_names, workers=workers,
        backends=parse_backends(backends), gate=tuple(gate_limits or ()),
        backend_options=normalize_backend_options(options),
    )
    passed = run_evaluate(run, req, console=console)
    if not passed:
        raise typer.Exit(code=1)


@app.command()
def gate(
    run: RunOpt,
    max_top1_drop: Annotated[float | None, typer.Option(help="FP32 gate: max top-1 drop in pp (default: the report's).")] = None,
    min_agreement: Annotated[float | None, typer.Option(help="FP32 gate: min top-1 agreement (default: the report's).")] = None,
    fp16_min_ratio: Annotated[float | None, typer.Option(help="FP16 gate: min fraction of reference top-1 kept (default: the report's).")] = None,
    int8_min_ratio: Annotated[float | None, typer.Option(help="INT8 gate: min fraction of reference top-1 kept (default: the report's).")] = None,
    gate_limits: Annotated[list[str] | None, typer.Option("--gate", help="A gate limit, PRECISION.LIMIT=VALUE (repeatable; 'none' switches it off), e.g. bf16.min_top1_ratio=0.995. The four flags above are its aliases.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Re-apply the gates to the last evaluation's saved outputs at new thresholds (runs no model)."""
    from port.stages.gate import GateRequest, gate_lines, run_gate

    result = run_gate(run, GateRequest(max_top1_drop=max_top1_drop, min_agreement=min_agreement,
                                       fp16_min_ratio=fp16_min_ratio,
                                       int8_min_ratio=int8_min_ratio,
                                       gate=tuple(gate_limits or ())))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        for line in gate_lines(result):
            console.print(line, highlight=False, markup=False)
    if not result["passed"]:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------------------------
# weights (framework-neutral tensors for hand ports)
# --------------------------------------------------------------------------------------------
weights_app = typer.Typer(
    name="weights", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="Framework-neutral weights of the run's PyTorch reference (docs/weights.md).",
)
app.add_typer(weights_app)


@weights_app.command("export")
def weights_export(
    run: RunOpt,
    fmt: Annotated[str, typer.Option("--format", help="File format: npz (NumPy zip of .npy files plus a JSON index).")] = "npz",
    out: Annotated[Path | None, typer.Option("--out", help="Where to write it (default RUN/model.weights.npz; outside the run: a copy of it).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the index (tensors, layers, card) as JSON.")] = False,
) -> None:
    """Every parameter and buffer of the reference, keyed by module path, with a layer index."""
    from port.stages.weights import run_weights_export

    _, index = run_weights_export(run, fmt=fmt, out=out, console=err_console if as_json
                                  else console)
    if as_json:
        sys.stdout.write(json.dumps(index, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# status / models / doctor
# --------------------------------------------------------------------------------------------
@app.command()
def status(
    run: RunOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The run's artifacts and their state: fresh, stale, modified or missing."""
    from port.stages.status import status_rows, status_table

    rows = status_rows(run)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        console.print(status_table(run, rows))


@app.command()
def models() -> None:
    """List the registered model architectures."""
    from rich.table import Table

    from port.models.registry import get_entry, list_models

    table = Table("name", "native size", "options", "description")
    for name in list_models():
        entry = get_entry(name)
        table.add_row(name, str(entry.native_size), ", ".join(entry.kwargs), entry.description)
    console.print(table)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What this machine offers and which --to/--precision targets work here."""
    from port.doctor import backend_rows, probe, render, targets

    found = probe()
    usable = targets(found)
    if as_json:
        payload = {"probe": found, "targets": [t.__dict__ for t in usable],
                   "backends": [{"backend": b.to, "version": b.precision or None,
                                 "available": b.available, "why": b.why}
                                for b in backend_rows(found)]}
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        console.print(render(found, usable))


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, ...).", show_default=False)],
    model: Annotated[Path, typer.Option("--model", help="ONNX file, OpenVINO IR (.xml + .bin), TensorRT engine (+ .json sidecar) or porter checkpoint.")],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes shown per image.")] = 5,
    backend: Annotated[str | None, typer.Option("--backend", help="Run it on another backend of its format, e.g. openvino for an .onnx (default: the format's first; see porter doctor).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Classify images with an exported model, preprocessing them as the model records."""
    from port.engines.predictor import load

    if top_k < 1:
        raise UsageError(f"--top-k {top_k} must be at least 1")
    with load(model, backend=backend) as predictor:
        results = predictor.predict(list(images), top_k=top_k)
    if as_json:
        rows = [{"image": str(path), **r.to_dict()} for path, r in zip(images, results, strict=True)]
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    for path, result in zip(images, results, strict=True):
        console.print(f"{path}", markup=False, highlight=False)
        for name, prob in zip(result.classes, result.probabilities, strict=True):
            console.print(f"  {prob:7.2%}  {name}", markup=False, highlight=False)


@app.command()
def serve(
    run: RunOpt,
    artifact: Annotated[str | None, typer.Option("--artifact", help="Artifact id to serve: an ONNX or OpenVINO IR artifact, ID@BACKEND for another backend of its format (default: onnx-fp32, else the run's ONNX reference).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Prometheus metrics port.")] = 8002,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch Triton forms.")] = 32,
    dynamic_batching: Annotated[bool, typer.Option("--dynamic-batching/--no-dynamic-batching", help="Let Triton merge concurrent requests into batches.")] = True,
    queue_delay_us: Annotated[int, typer.Option("--queue-delay-us", help="How long a request may wait for others to batch with.")] = 500,
    threads: Annotated[int | None, typer.Option("--threads", help="ONNX Runtime intra-op / OpenVINO inference threads (default: all cores).")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="Run it on another backend of its format, e.g. openvino for an ONNX artifact (default: the format's first; same as --artifact ID@BACKEND).")] = None,
) -> None:
    """Serve the run's ONNX or OpenVINO IR model on a real Triton Inference Server (PyTriton, CPU); Ctrl-C stops it."""
    from port.serve.launch import ServeRequest, serve_run

    code = serve_run(run, ServeRequest(artifact=artifact, host=host, http_port=http_port,
                                       grpc_port=grpc_port, metrics_port=metrics_port,
                                       max_batch=max_batch, dynamic_batching=dynamic_batching,
                                       queue_delay_us=queue_delay_us, threads=threads,
                                       backend=backend),
                     console=console)
    if code:
        raise Exit(code)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    """The user-facing line of an error: :func:`port.ground.errors.first_line`, uncut.

    PyTorch re-raises errors from DataLoader workers with the worker's traceback folded into the
    message ("Caught ...\\nOriginal Traceback ..."); the original message is its last line,
    prefixed with the exception's qualified name, so that line is the one shown.
    """
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1].strip()
        _, sep, rest = last.partition(": ")
        return rest if sep and last.split(":", 1)[0].endswith("Error") else last
    # porter's messages are one line by contract: never cut off their "what to do" half.
    return first_line(exc, limit=len(text))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app and map errors to exit codes (2 = usage, 1 = gate)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # Without standalone mode, typer *returns* the code of a `raise typer.Exit(code=1)`
        # (a failed gate) instead of raising it: exit with it, or a failure would exit 0.
        code = app(args=args or ["--help"], prog_name="porter", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except Abort:
        err_console.print("porter: aborted")
        sys.exit(130)
    except FlagError as exc:
        # Flag errors (typer/click): one line, naming the fix.
        sys.stderr.write(f"porter: error: {exc.format_message()} (see `porter --help`)\n")
        sys.exit(2)
    except PorterError as exc:
        sys.stderr.write(f"porter: error: {_one_line(exc)}\n")
        sys.exit(2)
    except OSError as exc:
        # The environment refused (full disk, read-only or foreign directory, a file where a
        # directory belongs): one line from the errno; nothing recorded is lost (atomic writes).
        sys.stderr.write(f"porter: error: {os_error_line(exc)}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("porter: interrupted\n")
        sys.exit(130)
    sys.exit(0)
