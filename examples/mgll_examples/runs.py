"""Run directories and resumed runs: no run is overwritten or mixed with another silently.

- :func:`claim_output_dir`: a new run refuses an ``--output-dir`` that holds another run's checkpoint,
  unless ``--overwrite`` (which removes that run's files first);
- :func:`data_identity`: what a checkpoint records of its data set (resolved paths, list name,
  multi-label columns, split sizes), and :func:`check_same_data` refuses a resume on other data;
- :func:`resume_schedule`: a resume may change ``--epochs``/``--max-steps`` (the learning-rate schedule
  is rebuilt for the new length from the saved step); a finished run has nothing left to train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig
from .data import Dataset
from .errors import ExampleError

CHECKPOINT_NAME = "last.pt"
METRICS_NAME = "metrics.json"
HISTORY_NAME = "history.json"
PLOT_NAME = "training.png"
#: The files a run writes into its ``--output-dir`` (``--overwrite`` removes them).
RUN_FILES = (CHECKPOINT_NAME, METRICS_NAME, HISTORY_NAME, PLOT_NAME)


def _resolved(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def claim_output_dir(config: TrainConfig, remove: bool) -> None:
    """Refuse a run whose ``--output-dir`` holds a checkpoint it does not resume, unless ``--overwrite``;
    with ``--overwrite`` and ``remove`` (rank 0), delete the previous run's files."""
    output = Path(config.output_dir)
    checkpoint = output / CHECKPOINT_NAME
    if not checkpoint.exists() or (config.resume and _resolved(config.resume) == _resolved(str(checkpoint))):
        return
    if not config.overwrite:
        raise ExampleError(
            f"--output-dir {output}: holds the checkpoint of another run ({checkpoint}); continue it with "
            f"--resume {checkpoint}, replace it with --overwrite, or pick another --output-dir"
        )
    if remove:
        for name in RUN_FILES:
            (output / name).unlink(missing_ok=True)


def data_identity(config: TrainConfig, dataset: Dataset) -> dict[str, Any]:
    """What a checkpoint records of the data set it was trained on."""
    table = bool(config.train_file)
    return {
        "data_dir": None if table else _resolved(config.data_dir),
        "json_list": config.json_list,
        "train_file": _resolved(config.train_file),
        "test_file": _resolved(config.test_file),
        "image_column": config.image_column if table else None,
        "multi_label": config.multi_label,
        "train_samples": len(dataset.train),
    }


def check_same_data(path: Path, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse to resume the checkpoint at ``path`` on data other than the data it was trained on."""
    if saved is None:
        raise ExampleError(f"--resume {path}: the checkpoint does not record its data set (made by an older version)")
    for key, value in current.items():
        if saved.get(key) == value:
            continue
        if key == "train_samples":
            raise ExampleError(
                f"--resume {path}: made from {saved.get(key)} training samples, this data set has {value}"
            )
        raise ExampleError(
            f"--resume {path}: made from --{key.replace('_', '-')} {saved.get(key)!r}, this run has {value!r}"
        )


def _schedule_flags(config: dict[str, Any]) -> str:
    return f"--epochs {config['epochs']}" + (f" --max-steps {config['max_steps']}" if config.get("max_steps") else "")


def resume_schedule(
    path: Path, saved_config: dict[str, Any], config: TrainConfig, start: int, total_steps: int
) -> str | None:
    """The line to print when a resume changes the schedule's length (None when it does not); raises when
    nothing is left to train (``start >= total_steps``)."""
    now = config.to_dict()
    if start >= total_steps:
        if start == total_steps:
            raise ExampleError(
                f"--resume {path}: the run has finished (step {start} of {total_steps}): nothing left to "
                "train; pass a longer --max-steps or --epochs to train it further"
            )
        raise ExampleError(
            f"--resume {path}: the checkpoint is at step {start}, the schedule of {_schedule_flags(now)} "
            f"has {total_steps} steps; pass a longer --max-steps or --epochs"
        )
    if (saved_config.get("epochs"), saved_config.get("max_steps")) == (config.epochs, config.max_steps):
        return None
    return (
        f"resuming at step {start} with {_schedule_flags(now)} (saved with {_schedule_flags(saved_config)}): "
        f"the learning-rate schedule is rebuilt for {total_steps} steps from step {start}"
    )
