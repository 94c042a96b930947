"""Optional experiment tracking for `lomo finetune` (`--report-to tensorboard|wandb`).

Per training step: the loss, lr, grad norm, tokens/s and peak memory; per epoch: the evaluation
scores. Only rank 0 writes, and only numbers the run has already computed, so tracking changes
nothing the run computes.

- tensorboard: event files in `<run folder>/tensorboard/`, so they travel with the results
  (`tensorboard --logdir results/`).
- wandb: a W&B run named after the run folder, its files there too, in the mode $WANDB_MODE
  says (`offline` on nodes without internet, then `wandb sync`). Each invocation is one W&B
  run: a resumed run starts a new one.

No torch at import: lomo.train.config checks the tracker's package when it validates.
"""

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPORT_TO = ("none", "tensorboard", "wandb")  # each tracker's package has its name


def require_package(report_to: str) -> None:
    """Refuse a tracker whose package is not installed, before the run does anything."""
    if report_to == "none":
        return
    try:
        importlib.import_module(report_to)
    except ImportError:
        raise ValueError(
            f"report_to {report_to} needs the {report_to} package: pip install {report_to}"
        ) from None


class Tracker:
    """Where the scalars go: nowhere (report_to none, and every rank but 0)."""

    def log(self, scalars: dict[str, float], step: int) -> None:
        pass

    def close(self, failed: bool) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, folder: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run logs again from its checkpoint's next step: purge_step hides what an
        # earlier invocation logged from there on (the steps its checkpoint did not keep).
        self.writer = SummaryWriter(str(folder), purge_step=first_step)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, failed: bool) -> None:
        self.writer.close()  # flushes: the scalars of a run stopped by an error are kept


class WandbTracker(Tracker):
    def __init__(self, out: Path, settings: dict[str, Any]):
        import wandb

        self.run = wandb.init(
            mode=os.environ.get("WANDB_MODE"), dir=out, name=out.name, config=settings
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


@contextlib.contextmanager
def open_tracker(
    settings: dict[str, Any], out: Path, main: bool, first_step: int
) -> Iterator[Tracker]:
    """The tracker `settings["report_to"]` names, for the run in `out` (its settings: a
    FinetuneConfig as a dict) from step `first_step` on; closed however the run ends: finished,
    stopped by a signal (exit 75) or by an error."""
    tracker = Tracker()
    if main and settings["report_to"] == "tensorboard":
        tracker = TensorBoardTracker(out / "tensorboard", first_step)
    elif main and settings["report_to"] == "wandb":
        tracker = WandbTracker(out, settings)
    try:
        yield tracker
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close(failed=False)


def train_scalars(stats: dict[str, float], tokens_per_second: float) -> dict[str, float]:
    """One training step's scalars, from the step's row of train_log.csv."""
    return {
        "train/loss": stats["loss"],
        "train/lr": stats["lr"],
        "train/grad_norm": stats["grad_norm"],
        "train/tokens_per_second": tokens_per_second,
        "train/peak_memory_bytes": stats["peak_memory_bytes"],
    }


def eval_scalars(scores: dict[str, Any]) -> dict[str, float]:
    """An epoch's scores ({"epoch": 1, "eval": {"accuracy": ...}, "dev": {...}}) as
    "eval/accuracy", "dev/accuracy", ..."""
    return {
        f"{split}/{metric}": value
        for split, metrics in scores.items()
        if split != "epoch"
        for metric, value in metrics.items()
    }
