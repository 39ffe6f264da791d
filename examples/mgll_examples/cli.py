"""The entry point of the pretraining scripts: train, evaluate, report; user errors as one line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, parse_config
from .errors import ExampleError
from .evaluate import evaluate
from .model import build_model, count_parameters
from .pipeline import load_dataset
from .report import metrics_table, plot_runs, side_by_side
from .runs import HISTORY_NAME, METRICS_NAME, PLOT_NAME, claim_output_dir
from .train import train
from .world import TrainingWorld, close_world, end_process, init_world


def run(config: TrainConfig) -> dict[str, Any] | None:
    """Train and evaluate; rank 0 writes ``metrics.json`` and ``training.png`` and returns the report."""
    world = init_world(config.device)
    try:
        report = _run(config, world)
        world.barrier()  # every rank is done with its collectives before the group goes
        return report
    finally:
        close_world(world)


def _run(config: TrainConfig, world: TrainingWorld) -> dict[str, Any] | None:
    torch.manual_seed(config.seed)
    claim_output_dir(config, remove=False)  # every rank refuses alike
    world.barrier()
    if world.is_main:
        claim_output_dir(config, remove=True)
        dataset = load_dataset(config)  # rank 0 may write the synthetic set; the others wait, then read it
    world.barrier()
    if not world.is_main:
        dataset = load_dataset(config)
    bundle = build_model(
        config.model,
        config.pretrained,
        init_logit_scale=config.init_logit_scale,
        init_logit_bias=config.init_logit_bias,
    )
    if world.is_main:
        levels = ", ".join(level.name for level in dataset.levels)
        print(
            f"{config.loss} on {config.kind}: {len(dataset.train)} train / {len(dataset.test)} held-out images, "
            f"levels: {levels}; model {config.model} ({count_parameters(bundle.model) / 1e6:.1f}M parameters), "
            f"{world.world_size} process(es) on {world.device}",
            flush=True,
        )
        if config.accum_steps > 1:
            print(
                f"effective batch {config.batch_size * config.accum_steps * world.world_size} per step: --batch-size "
                f"{config.batch_size} x --accum-steps {config.accum_steps} x {world.world_size} process(es), encoded "
                f"{config.batch_size} images at a time (feature-cached accumulation)",
                flush=True,
            )
    result = train(config, dataset, bundle, world)
    if not world.is_main:
        return None
    began = time.perf_counter()
    metrics = evaluate(
        bundle.model,
        bundle,
        dataset,
        world.device,
        batch_size=max(config.batch_size, 128),
        workers=config.workers,
        skip_bad=config.skip_bad_samples,
        seed=config.seed,
        joined=config.loss == "clip",
    )
    report = {
        "kind": config.kind,
        "loss": config.loss,
        "model": config.model,
        "steps": result.steps,
        "total_steps": result.total_steps,
        "train_seconds": round(result.seconds, 2),
        "eval_seconds": round(time.perf_counter() - began, 2),
        "skipped_samples": result.skipped_samples,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "levels": metrics,
        "missing_images": dataset.missing_images,
        "loss_options": config.loss_options() if config.loss == "mgll" else {},
        "drop_texts": config.drop_texts,
        "init_logit_scale": config.init_logit_scale,
        "init_logit_bias": config.init_logit_bias,
        "config": config.to_dict(),
    }
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / METRICS_NAME).write_text(json.dumps(report, indent=2) + "\n")
    (output / HISTORY_NAME).write_text(json.dumps(result.history) + "\n")
    plot = plot_runs({config.loss: result.history}, {config.loss: metrics}, output / PLOT_NAME)
    title = f"{config.loss.upper()} ({config.kind}, {result.steps} steps, {result.seconds:.0f} s training)"
    print("\n".join(metrics_table(metrics, title)))
    if result.skipped_samples:
        print(f"skipped {result.skipped_samples} unreadable sample(s) (--skip-bad-samples)")
    if dataset.missing_images:
        print(f"left out {dataset.missing_images} sample(s) whose image file does not exist (--skip-bad-samples)")
    print(f"checkpoint: {result.checkpoint}\nmetrics: {output / METRICS_NAME}\nplot: {plot}", flush=True)
    return report


def compare(run_dirs: Sequence[Path], plot: Path | None = None) -> str:
    """Side-by-side metric tables of finished runs (their ``metrics.json``) and, with ``plot``, one plot of them all."""
    reports, histories = {}, {}
    for directory in run_dirs:
        metrics_file = directory / METRICS_NAME
        if not metrics_file.is_file():
            raise ExampleError(f"{directory}: no {METRICS_NAME} (has the run finished?)")
        report = json.loads(metrics_file.read_text())
        name = report["loss"].upper()
        if name in reports:  # two runs of one loss: tell them apart by their directories
            name = f"{name} {directory}"
        reports[name] = report
        histories[name] = json.loads((directory / HISTORY_NAME).read_text())
    tables = [
        metrics_table(r["levels"], f"{name} ({r['steps']} steps, {r['train_seconds']:.0f} s training)")
        for name, r in reports.items()
    ]
    if plot is None:
        return side_by_side(tables)
    plot_runs(histories, {name: r["levels"] for name, r in reports.items()}, plot)
    return side_by_side(tables) + f"\nplot: {plot}"


def main(kind: str, argv: Sequence[str] | None = None) -> int:
    """Run ``examples/pretrain_<kind>.py``; a user error prints one line to stderr and returns 2."""
    try:
        run(parse_config(kind, argv))
    except ExampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return end_process(2)
    return end_process(0)
