"""``porter export --to triton --model-repo DIR``: a Triton model repository of the run's fresh
ONNX files, OpenVINO IRs and engines at one precision (one model each), indexed by
``model.<p>.triton.json``.

The repository's files are the record's companions (keyed by absolute path when the repository
is outside the run), so an edited ``config.pbtxt`` makes the record ``modified`` and a re-export
refuses to overwrite it. Model folders an earlier export of this record wrote and that are
unchanged are replaced; anything else in the repository is left alone, and a model folder
porter did not write is refused. The config files themselves: :mod:`port.export.triton`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from port.export.context import ONNX, ExportContext
from port.export.onnx_job import ensure_fp32_onnx
from port.formats import Format
from port.ground.errors import ManifestError, UsageError
from port.manifest import Record

INDEX_FORMAT = "porter.triton-repository/1"


def _sources(ctx: ExportContext, precision: str) -> list[Record]:
    """The fresh ONNX files, OpenVINO IRs and engines of the run at ``precision`` (the kinds
    ``triton.PLATFORMS`` names), in manifest order.

    The ONNX graph of that precision is exported first when the run has none yet (an engine is
    never built here: that needs a GPU, ``porter export --to trt``; an IR comes from ``porter
    export --to openvino``).
    """
    from port.export.triton import PLATFORMS

    if precision == "fp32":
        ensure_fp32_onnx(ctx)
    elif ctx.fresh(ONNX.artifact_id(precision)) is None:
        ctx.console.print(f"exporting the {precision.upper()} ONNX model first")
        ONNX.exporter(precision)(ctx.with_options({}), ONNX, precision)
    chosen = []
    for record in ctx.manifest.records():
        if record.kind not in PLATFORMS or ctx.fresh(record.id) is None:
            continue
        # An imported ONNX reference is the FP32 graph; exports say their precision.
        carried = "fp32" if record.id == ctx.ref.id else record.typed_params.precision
        if carried == precision:
            chosen.append(record)
    return chosen


def _owned_files(ctx: ExportContext, art_id: str) -> set[Path]:
    """The files an earlier export of this record wrote, if they are still as it wrote them."""
    previous = ctx.manifest.get(art_id)
    # (a fresh or stale record: its companions were checked; a missing index vouches for none)
    if previous is None or ctx.manifest.state(art_id).name not in ("fresh", "stale"):
        return set()
    return {(ctx.run_dir / key).resolve() for key in (previous.metrics or {}).get("files", {})}


def _model_specs(ctx: ExportContext, repo: Path, sources: list[Record], owned: set[Path],
                 art_id: str, instances: int) -> list[Any]:
    """One ``triton.ModelSpec`` per source; a model folder holding files this record did not
    write (or that were edited since) is refused."""
    from port.export import triton

    specs = []
    for record in sources:
        spec = triton.model_spec(record.kind, triton.model_name(ctx.run_dir, record.id),
                                 ctx.run_dir / record.path, instances=instances)
        folder = repo / spec.name
        theirs = [f for f in folder.rglob("*") if f.is_file() and f.resolve() not in owned]
        if theirs:
            raise ManifestError(f"{folder} holds files porter did not write for '{art_id}' (or "
                                f"they were edited since, e.g. {theirs[0].name}): move the "
                                "folder away, then export again")
        specs.append(spec)
    return specs


def _index(repo: Path, precision: str, specs: list[Any], sources: list[Record]) -> str:
    """``model.<p>.triton.json``: which model serves which artifact, and its files."""
    from port.export import triton

    index = {
        "format": INDEX_FORMAT,
        "repository": str(repo),
        "precision": precision,
        # "platform" or "backend", as config.pbtxt names what runs the model.
        "models": [{"name": s.name, s.runtime.key: s.runtime.name, "artifact": r.id,
                    "source": r.path, "source_sha256": r.sha256,
                    "files": triton.relative_to_repo(triton.model_files(repo, s), repo)}
                   for s, r in zip(specs, sources, strict=True)],
    }
    return json.dumps(index, indent=2) + "\n"


def export_triton(ctx: ExportContext, fmt: Format, precision: str) -> Record:
    """``--to triton --model-repo DIR``: every fresh ONNX file, OpenVINO IR and engine of the
    run at ``precision`` as a Triton model, recorded with those records as parents and every
    repository file as a companion."""
    from port.export import triton
    from port.ground.atomic import atomic_write_text
    from port.ground.limits import check_int

    if ctx.options.get("model_repo") is None:
        raise UsageError("--to triton needs --model-repo DIR: the folder to write the Triton "
                         "model repository to")
    instances = check_int("--instances", ctx.options.get("instances"), 1, 64) or 1
    repo = triton.check_repository(Path(ctx.options["model_repo"]), ctx.run_dir)
    art_id = fmt.artifact_id(precision)
    out = ctx.run_dir / fmt.file_name(precision)
    ctx.claim(out, art_id)
    owned = _owned_files(ctx, art_id)
    sources = _sources(ctx, precision)
    if not sources:
        raise UsageError(f"the run has no fresh {precision} ONNX file, OpenVINO IR or engine for "
                         f"Triton: export one with `porter export --to onnx --precision "
                         f"{precision}`")
    specs = _model_specs(ctx, repo, sources, owned, art_id, instances)
    # Replace this record's earlier models: unchanged files only (checked above).
    triton.remove_files(sorted(f for f in owned if f.is_file() and repo in f.parents), repo)
    written: list[Path] = []
    for spec in specs:
        written += triton.write_model(repo, spec)
    atomic_write_text(out, _index(repo, precision, specs, sources))
    record = ctx.record(fmt, precision, out, art_id=art_id, parents=sources,
                        params={"model_repo": str(repo), "instances": instances},
                        metrics={"models": [s.name for s in specs]}, companions=tuple(written))
    ctx.console.print(f"[green]wrote[/green] Triton model repository {repo} "
                      f"({', '.join(s.name for s in specs)}); serve it with `tritonserver "
                      f"--model-repository {repo}`")
    if any(s.runtime == triton.PLATFORMS["openvino"] for s in specs):
        # What the row of `porter evaluate` that predicts it is: the backend passes no f32 hint.
        ctx.console.print("note: Triton's OpenVINO backend cannot pin FP32 arithmetic (its only "
                          "precision setting is HINT_BF16): on CPUs with bf16 arithmetic "
                          "(AVX512_BF16, AMX) it computes in bf16, as `porter evaluate "
                          "--backends openvino-bf16` measures", markup=False, highlight=False)
    return record
