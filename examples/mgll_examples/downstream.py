"""Downstream evaluation of pretrained checkpoints: a linear probe on frozen features, or fine-tuning the image tower.

For each ``--checkpoint``: a linear head on the image features (``--mode probe``: the tower frozen,
its features computed once and standardised with the training split's mean and deviation;
``--mode finetune``: the whole image tower trained with the head), trained with binary (multilabel)
or softmax (multiclass) cross-entropy, AdamW at a constant rate; after every epoch the validation
split's macro AUC picks the epoch whose head (and tower) score the test split. Training stops early
when ``--patience`` epochs in a row have not raised the best validation AUC (``--epochs`` is the
cap; ``--patience 0`` trains every epoch).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint_import import PretrainedModel, load_pretrained
from .data import ImageTextDataset, Sample, collate
from .downstream_data import SPLITS, TASKS, DownstreamSet, load_downstream_csvs, write_synthetic_downstream
from .downstream_metrics import downstream_table, plot_downstream, scores
from .errors import ExampleError
from .evaluate import macro_auc

MODES = ("probe", "finetune")
SYNTHETIC_NAME = "SyntheticRFMiD"
# Early stopping on the validation macro AUC ends a run; the epochs are a cap (docs/examples.md, measured).
_DEFAULT_EPOCHS = {"probe": 500, "finetune": 30}
_DEFAULT_PATIENCE = {"probe": 30, "finetune": 3}
_DEFAULT_LR = {"probe": 1e-2, "finetune": 1e-4}


@dataclass
class DownstreamConfig:
    """The flags of ``examples/finetune_downstream.py``."""

    checkpoints: list[Path]
    mode: str
    task: str
    data_dir: Path
    name: str | None
    synthetic: bool
    synthetic_size: int
    files: dict[str, Path] | None
    image_column: str | None
    label_columns: list[str] | None
    model: str | None
    epochs: int
    patience: int
    max_steps: int | None
    batch_size: int
    lr: float
    seed: int
    workers: int
    device: str | None
    output_dir: Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune_downstream.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        action="append",
        type=Path,
        required=True,
        help="this project's last.pt, an authors' MGLL checkpoint, or a directory written by "
        "export_vision_tower.py; repeat to compare several",
    )
    parser.add_argument("--model", help="architecture override (default: the checkpoint's; authors' format: ViT-L-14)")
    parser.add_argument("--mode", choices=MODES, default="probe", help="linear probe on frozen features, or fine-tune")
    parser.add_argument("--task", choices=TASKS, default="multilabel")
    data = parser.add_argument_group("data (the authors' All_csv_downstream layout, or a generic CSV per split)")
    data.add_argument(
        "--data-dir",
        type=Path,
        help="root with All_csv_downstream/ and All_data_npz/ (generic: the folder image paths are relative to)",
    )
    data.add_argument(
        "--name", help="downstream set name: reads All_csv_downstream/<name>_Train.csv, _Val.csv, _Test.csv"
    )
    data.add_argument(
        "--synthetic",
        action="store_true",
        help=f"write an RFMiD-like multilabel set from the synthetic fundus generator ({SYNTHETIC_NAME})",
    )
    data.add_argument("--synthetic-size", type=int, default=480, help="synthetic images (1/2 train, 1/6 val, 1/3 test)")
    data.add_argument("--train-file", type=Path, help="generic: training CSV (with --val-file and --test-file)")
    data.add_argument("--val-file", type=Path)
    data.add_argument("--test-file", type=Path)
    data.add_argument("--image-column", help="the image path column (default: column 0)")
    data.add_argument("--label-columns", help="label columns, comma-separated (default: every other column)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--epochs",
        type=int,
        help=f"most epochs (default: probe {_DEFAULT_EPOCHS['probe']}, finetune {_DEFAULT_EPOCHS['finetune']})",
    )
    optim.add_argument(
        "--patience",
        type=int,
        help="stop after this many epochs without a better validation AUC; 0: train every epoch "
        f"(default: probe {_DEFAULT_PATIENCE['probe']}, finetune {_DEFAULT_PATIENCE['finetune']})",
    )
    optim.add_argument("--max-steps", type=int, help="cap on the optimiser steps")
    optim.add_argument("--batch-size", type=int, default=64)
    optim.add_argument(
        "--lr",
        type=float,
        help=f"AdamW rate (default: probe {_DEFAULT_LR['probe']}, finetune {_DEFAULT_LR['finetune']})",
    )
    optim.add_argument("--seed", type=int, default=0)
    optim.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (fine-tuning)")
    optim.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("runs/downstream"),
        help="<run>/metrics.json per checkpoint, downstream.md/.csv and downstream.png",
    )
    return parser


def parse_config(argv: Sequence[str] | None = None) -> DownstreamConfig:
    """Parse and check the command line (one-line errors for flags that do not go together)."""
    args = build_parser().parse_args(argv)
    generic = [args.train_file, args.val_file, args.test_file]
    files = None
    if any(generic):
        if not all(generic) or args.synthetic or args.name:
            raise ExampleError("--train-file, --val-file and --test-file go together, without --name or --synthetic")
        files = dict(zip(SPLITS, generic, strict=True))
    elif not args.synthetic and not (args.data_dir and args.name):
        raise ExampleError(
            "--data-dir and --name (the authors' layout), --train-file/--val-file/--test-file, or --synthetic"
        )
    for flag, value, least in (
        ("--epochs", args.epochs, 1),
        ("--max-steps", args.max_steps, 1),
        ("--batch-size", args.batch_size, 1),
        ("--synthetic-size", args.synthetic_size, 12),
        ("--patience", args.patience, 0),
    ):
        if value is not None and value < least:
            raise ExampleError(f"{flag}: expected at least {least}, got {value}")
    data_dir = args.data_dir or (Path("runs/synthetic-downstream") if args.synthetic else Path("."))
    return DownstreamConfig(
        checkpoints=args.checkpoint,
        mode=args.mode,
        task=args.task,
        data_dir=data_dir,
        name=args.name or (SYNTHETIC_NAME if args.synthetic else None),
        synthetic=args.synthetic,
        synthetic_size=args.synthetic_size,
        files=files,
        image_column=args.image_column,
        label_columns=[c.strip() for c in args.label_columns.split(",") if c.strip()] if args.label_columns else None,
        model=args.model,
        epochs=args.epochs or _DEFAULT_EPOCHS[args.mode],
        patience=_DEFAULT_PATIENCE[args.mode] if args.patience is None else args.patience,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr or _DEFAULT_LR[args.mode],
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        output_dir=args.output_dir,
    )


def load_set(config: DownstreamConfig) -> DownstreamSet:
    """The downstream splits the flags name (writing the synthetic set first when asked)."""
    if config.files is not None:
        return load_downstream_csvs(
            config.files, config.data_dir, config.task, config.image_column, config.label_columns
        )
    if config.name is None:
        raise ExampleError("--name: required with --data-dir")
    if config.synthetic:
        if config.task != "multilabel":
            raise ExampleError("--synthetic: the synthetic downstream set is multilabel (--task multilabel)")
        sixth = config.synthetic_size // 6
        sizes = {"Train": config.synthetic_size - 3 * sixth, "Val": sixth, "Test": 2 * sixth}
        write_synthetic_downstream(config.data_dir, config.name, sizes, seed=config.seed)
    files = {split: config.data_dir / "All_csv_downstream" / f"{config.name}_{split}.csv" for split in SPLITS}
    return load_downstream_csvs(files, config.data_dir, config.task, config.image_column, config.label_columns)


def _loader(samples: Sequence[Sample], pretrained: PretrainedModel, batches: Sequence[list[int]], workers: int):
    bundle = pretrained.bundle
    images = ImageTextDataset(samples, bundle.image_size, bundle.mean, bundle.std)
    return torch.utils.data.DataLoader(images, batch_sampler=batches, collate_fn=collate, num_workers=workers)


def _image_batches(loader: Any, device: torch.device) -> Any:
    for batch in loader:
        if batch.errors:
            raise ExampleError(batch.errors[0])
        yield batch.indices, batch.images.to(device)


@torch.no_grad()
def _features(model: nn.Module, loader: Any, device: torch.device) -> Tensor:
    model.eval()
    return torch.cat([_encode(model, images) for _, images in _image_batches(loader, device)])


def _encode(model: nn.Module, images: Tensor) -> Tensor:
    """The image tower's output (open_clip ``encode_image``, not normalised), float32 [n, D]."""
    encode: Callable[[Tensor], Tensor] = cast(Callable[[Tensor], Tensor], model.encode_image)
    return encode(images).float()


def _criterion(task: str) -> Callable[[Tensor, Tensor], Tensor]:
    if task == "multilabel":
        return nn.functional.binary_cross_entropy_with_logits
    return lambda logits, target: nn.functional.cross_entropy(logits, target.argmax(dim=1))


def _probabilities(logits: Tensor, task: str) -> np.ndarray:
    return (logits.sigmoid() if task == "multilabel" else logits.softmax(dim=1)).detach().cpu().double().numpy()


def train_head(
    config: DownstreamConfig, data: DownstreamSet, pretrained: PretrainedModel, device: torch.device
) -> dict[str, Any]:
    """Train one checkpoint's head (and tower for finetune); the report of the module docstring."""
    torch.manual_seed(config.seed)
    model = pretrained.bundle.model.to(device)
    visual = cast(nn.Module, model.visual)
    generator = torch.Generator().manual_seed(config.seed)
    size = config.batch_size
    fixed = {
        split: [
            list(range(i, min(i + size, len(data.samples[split])))) for i in range(0, len(data.samples[split]), size)
        ]
        for split in SPLITS
    }
    labels = {split: torch.from_numpy(data.labels[split]).to(device) for split in SPLITS}
    finetune = config.mode == "finetune"
    if finetune:

        def encode(split: str) -> Tensor:
            return _features(model, _loader(data.samples[split], pretrained, fixed[split], 0), device)

    else:
        cached = {
            split: _features(model, _loader(data.samples[split], pretrained, fixed[split], config.workers), device)
            for split in SPLITS
        }
        mean, std = cached["Train"].mean(dim=0), cached["Train"].std(dim=0).clamp_min(1e-6)
        cached = {split: (x - mean) / std for split, x in cached.items()}
        encode = cached.__getitem__
    head = nn.Linear(cast(int, visual.output_dim), len(data.class_names)).to(device)
    trainable = list(head.parameters()) + (list(visual.parameters()) if finetune else [])
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=1e-4)
    criterion = _criterion(config.task)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"val_auc": -1.0}
    step, began = 0, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(data.samples["Train"]), generator=generator).tolist()
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        if config.max_steps is not None:
            chunks = chunks[: max(0, config.max_steps - step)]
        if not chunks:
            break
        if finetune:
            visual.train()
            inputs = (
                (index.tolist(), images)
                for index, images in _image_batches(
                    _loader(data.samples["Train"], pretrained, chunks, config.workers), device
                )
            )
        else:
            inputs = ((chunk, encode("Train")[chunk]) for chunk in chunks)
        losses = []
        for index, x in inputs:
            logits = head(_encode(model, x) if finetune else x)
            loss = criterion(logits, labels["Train"][index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        with torch.no_grad():
            val_auc = macro_auc(data.labels["Val"], _probabilities(head(encode("Val")), config.task))
        history.append({"epoch": epoch, "step": step, "loss": float(np.mean(losses)), "val_auc": val_auc or 0.0})
        if (val_auc or 0.0) > best["val_auc"]:
            best = {
                "val_auc": val_auc or 0.0,
                "epoch": epoch,
                "head": copy.deepcopy(head.state_dict()),
                "visual": copy.deepcopy(visual.state_dict()) if finetune else None,
            }
        if config.patience and epoch - best["epoch"] >= config.patience:
            break
    head.load_state_dict(best["head"])
    if finetune:
        visual.load_state_dict(best["visual"])
    with torch.no_grad():
        probabilities = _probabilities(head(encode("Test")), config.task)
    return {
        "mode": config.mode,
        "task": config.task,
        "source": pretrained.source,
        "model": pretrained.model_name,
        "classes": data.class_names,
        "sizes": {split: len(data.samples[split]) for split in SPLITS},
        "epochs": config.epochs,
        "patience": config.patience,
        "epochs_run": len(history),
        "stopped_early": len(history) < config.epochs and (config.max_steps is None or step < config.max_steps),
        "steps": step,
        "lr": config.lr,
        "batch_size": size,
        "seed": config.seed,
        "train_seconds": round(time.perf_counter() - began, 2),
        "best_epoch": best["epoch"],
        "val_auc": best["val_auc"],
        "test": scores(data.labels["Test"], probabilities, config.task, data.class_names),
        "history": history,
        "checkpoint_info": pretrained.info,
    }


def _run_names(checkpoints: Sequence[Path]) -> list[str]:
    """A short unique name per checkpoint: its folder's name (e.g. runs/demo/mgll/last.pt -> mgll), else its stem;
    an exported directory's own name."""
    names = [path.name if path.is_dir() else (path.parent.name or path.stem) for path in checkpoints]
    if len(set(names)) < len(names):
        names = [f"{name}-{i}" for i, name in enumerate(names)]
    return names


def run(config: DownstreamConfig) -> dict[str, dict[str, Any]]:
    """Evaluate every checkpoint; write ``<output-dir>/<run>/metrics.json``, the table and the plot."""
    device = (
        torch.device(config.device) if config.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    data = load_set(config)
    print(
        f"downstream {config.task} ({config.mode}): {len(data.class_names)} classes, "
        + ", ".join(f"{len(data.samples[s])} {s.lower()}" for s in SPLITS),
        flush=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    for name, path in zip(_run_names(config.checkpoints), config.checkpoints, strict=True):
        pretrained = load_pretrained(path, config.model)
        report = {"checkpoint": str(path), **train_head(config, data, pretrained, device)}
        (config.output_dir / name).mkdir(parents=True, exist_ok=True)
        (config.output_dir / name / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        runs[name] = report
        macro = report["test"]["macro"]
        print(
            f"{name}: epoch {report['best_epoch']} of {report['epochs_run']} (val AUC {report['val_auc']:.3f}), "
            f"test AUC {macro['auc']:.3f}, "
            f"ACC {macro['acc']:.3f}, mAP {macro['map']:.3f} ({report['train_seconds']:.0f} s)",
            flush=True,
        )
    table = downstream_table(runs)
    (config.output_dir / "downstream.md").write_text("\n".join(table) + "\n")
    _write_csv(config.output_dir / "downstream.csv", runs)
    plot = plot_downstream(runs, config.output_dir / "downstream.png")
    print("\n".join(table) + f"\ntable: {config.output_dir / 'downstream.md'}\nplot: {plot}", flush=True)
    return runs


def _write_csv(path: Path, runs: dict[str, dict[str, Any]]) -> None:
    lines = ["run,mode,best_epoch,class,auc,acc,map"]
    for name, report in runs.items():
        rows = {"macro": report["test"]["macro"], **report["test"]["per_class"]}
        for label, values in rows.items():
            cells = ["" if values[s] is None else f"{values[s]:.6f}" for s in ("auc", "acc", "map")]
            lines.append(",".join([name, report["mode"], str(report["best_epoch"]), label, *cells]))
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``examples/finetune_downstream.py``; a user error prints one line to stderr and returns 2."""
    try:
        run(parse_config(argv))
    except ExampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
