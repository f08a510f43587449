"""`porter train`: resolve the recipe, train, record the checkpoint as the run's reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from port.ground.errors import UsageError
from port.ground.vocab import REFERENCE_ID
from port.manifest import Manifest, run_lock
from port.manifest.params import ReferenceParams

if TYPE_CHECKING:
    from port.train.launch import LaunchSpec

DEFAULT_RECIPE = "cifar"


def run_train(
    run: Path,
    *,
    recipe: str | None,
    overrides: dict[str, Any],
    resume: bool,
    download: bool,
    console: Console,
    launch: LaunchSpec | None = None,
) -> None:
    """Train per the resolved config and record ``model.pt`` (id ``model``) in the manifest.

    ``launch`` (``--nproc-per-node``/``--nnodes``/...): start that many DDP worker processes
    through torch.distributed's launcher instead; rank 0 of them records the result.
    """
    # The settings, the launcher flags, the data and the run's resumable state are checked
    # before anything imports torch (the loop and reading a checkpoint do): a refused flag
    # answers in well under a second instead of after seconds of imports.
    from port.data.spec import check_data_available, parse_data_spec
    from port.train.distributed import in_launcher
    from port.train.launch import LaunchSpec, resolve_world
    from port.train.recipe import resolve
    from port.train.run_dir import RunPaths, require_checkpoint

    launch = (launch or LaunchSpec()).validate()
    # Nothing to resume: refused without torch. Only where the run directory is authoritative
    # (this machine is node 0 and no launcher started us): other nodes and workers leave the
    # check to rank 0 (port.train.run_dir.shared_prepare), as before.
    if resume and not in_launcher() and not launch.node_rank:
        require_checkpoint(RunPaths(run))
    saved = None
    if resume and recipe is None:
        from port.train.run_dir import saved_config

        saved = saved_config(run)  # reads the checkpoint (torch)
    if saved is not None:
        # `--resume` alone continues with the run's own settings; flags given on top are
        # checked by the loop, which refuses changes that would alter the result.
        cfg = resolve(None, {**saved.to_dict(), **overrides})
    else:
        cfg = resolve(recipe or DEFAULT_RECIPE, overrides)
    # A missing data directory, or CIFAR files absent without --download: DataError.
    check_data_available(parse_data_spec(cfg.data, download=download))
    cfg = resolve_world(cfg, launch)  # world_size from the launcher flags or the environment

    from port.train.launch import launch_workers
    from port.train.loop import train
    # The run lock is held from before anything is read until the model is recorded: a second
    # `porter train` (or import) on this run is refused instead of interleaving metrics and
    # replacing this model. DDP workers inherit it from the launching process (see
    # port.manifest.lock); a directory this command created is removed if it fails early.
    with run_lock(run, "train", create=True):
        manifest = Manifest(run)
        existing = manifest.get(REFERENCE_ID)
        if existing is not None and existing.stage != "train":
            raise UsageError(
                f"run {run} already has an imported reference model ({existing.path}): "
                "train into a new --run directory"
            )
        if launch.spawns:
            launch_workers(cfg, run, launch, resume=resume, download=download)
            return
        result = train(cfg, run, resume=resume, download=download)
        if not result.is_main:  # other DDP ranks: rank 0 records
            return
        # The resolved TrainConfig (data among it) and the card; the rest of the config stays
        # extra.
        params = ReferenceParams.from_dict({**result.params, "card": result.card.to_dict()})
        # The files training wrote beside the model are covered by its record too (an edited
        # train.yaml or metrics.jsonl shows as `modified`); the resumable state in checkpoints/
        # is not: it is training's scratch, re-made by --resume.
        paths = RunPaths(run)
        companions = [p for p in (paths.config, paths.metrics, paths.curves) if p.is_file()]
        record = manifest.record(
            "train", "checkpoint", result.model_path, id=REFERENCE_ID, params=params,
            metrics=result.metrics, companions=companions,
        )
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in result.metrics.items() if not isinstance(v, dict | list))
    console.print(f"[green]trained[/green] {record.path} ({shown})")
