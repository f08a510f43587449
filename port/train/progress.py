"""Progress display of a training run: a rich bar per epoch plus one summary line per epoch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Reporter:
    """Silent reporter (``progress=False``); :class:`RichReporter` draws the same events."""

    def note(self, text: str) -> None:
        """A one-off message (what is being trained, where)."""

    def start_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (1-based) begins."""

    def batch(self, images: int, loss: float, acc: float, images_per_s: float) -> None:
        """Running totals of the current epoch (called a few times per second at most)."""

    def end_epoch(self, line: dict[str, Any]) -> None:
        """The epoch's metrics.jsonl line, once its checkpoint is written."""


class RichReporter(Reporter):
    """Bar with batches done, running loss/accuracy, images/s, elapsed and remaining time."""

    def __init__(self, epochs: int, batches: int, batch_size: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.epochs = epochs
        self.batches = batches
        self.batch_size = batch_size
        # stderr: stdout stays free for the CLI's results (and --json).
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/" + str(epochs)),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:6.1%}"),
            TextColumn("{task.fields[ips]:,.0f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task("train", total=batches, epoch=0, loss=0.0, acc=0.0,
                                           ips=0.0, visible=False)

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        self.progress.console.print(text)

    def start_epoch(self, epoch: int) -> None:
        self.progress.reset(self.task, total=self.batches, epoch=epoch, loss=0.0, acc=0.0,
                            ips=0.0, visible=True)

    def batch(self, images: int, loss: float, acc: float, images_per_s: float) -> None:
        # Batches done from images seen: the loop reports on a timer, not every batch.
        done = min(self.batches, -(-images // self.batch_size))
        self.progress.update(self.task, completed=done, loss=loss, acc=acc, ips=images_per_s)

    def end_epoch(self, line: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=self.batches)
        val = ("" if line["val_acc"] is None else
               f" | val loss {line['val_loss']:.3f} acc {line['val_acc']:6.1%}")
        self.progress.console.print(
            f"epoch {line['epoch']:>3}/{self.epochs}  train loss {line['train_loss']:.3f} "
            f"acc {line['train_acc']:6.1%}{val} | {line['images_per_s']:,.0f} img/s "
            f"{line['seconds']:.1f}s lr {line['lr']:.4g}"
        )


@contextmanager
def make_reporter(
    enabled: bool, epochs: int, batches: int, batch_size: int
) -> Iterator[Reporter]:
    """A :class:`RichReporter` when ``enabled``, else a silent :class:`Reporter`."""
    if not enabled:
        yield Reporter()
        return
    reporter = RichReporter(epochs, batches, batch_size)
    with reporter:
        yield reporter
