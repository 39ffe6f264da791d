"""Atomic checkpoints (write to a temporary file, then rename) loaded with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import LOSS_OPTIONS, TrainConfig
from .errors import ExampleError

#: Flags that change what a step computes: a resumed run must use the same ones (``--epochs`` and
#: ``--max-steps`` may change: see ``runs.resume_schedule``; the data set: ``runs.check_same_data``).
MUST_MATCH = (
    "kind",
    "model",
    "loss",
    "levels",
    "text_columns",
    "batch_size",
    "accum_steps",
    "lr",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "seed",
    "backend",
    "synthetic_size",
    *LOSS_OPTIONS,
    "drop_texts",
    "init_logit_scale",
    "init_logit_bias",
)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` so that ``path`` is always either the old or the new complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path, config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The checkpoint at ``path``, checked against this run's flags."""
    if not path.is_file():
        raise ExampleError(f"--resume {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding objects weights_only refuses
        raise ExampleError(f"--resume {path}: not a readable checkpoint ({type(error).__name__})") from error
    if not isinstance(payload, dict) or not {"config", "step", "model", "optimizer"} <= payload.keys():
        raise ExampleError(f"--resume {path}: not a checkpoint of these examples")
    # A flag added after the checkpoint was written counts as saved with its default.
    saved = {**TrainConfig(kind=config.kind).to_dict(), **payload["config"]}
    current = config.to_dict()
    for name in MUST_MATCH:
        if saved[name] != current[name]:
            flag = "--" + name.replace("_", "-")
            raise ExampleError(f"--resume {path}: saved with {flag} {saved[name]!r}, this run has {current[name]!r}")
    if payload.get("world_size") != world_size:
        raise ExampleError(
            f"--resume {path}: saved by {payload.get('world_size')} process(es), this run has {world_size}"
        )
    return payload
