"""The run configuration: every command-line flag of the pretraining scripts, as plain values."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from mgll_loss.backends import BACKEND_NAMES
from mgll_loss.options import KL_DIRECTIONS, MATCH_MODES, NORMALIZATIONS, POINTWISE_TARGETS

from .errors import ExampleError
from .model import TINY

KINDS = ("fundus", "xray")
LOSSES = ("mgll", "clip")
PRECISIONS = ("auto", "fp32", "bf16")
#: The MGLLLoss constructor options that have a flag of the same name.
LOSS_OPTIONS = (
    "match",
    "soft_clip_weight",
    "pointwise_weight",
    "smooth_kl_weight",
    "level_weights",
    "normalization",
    "pointwise_target",
    "kl_direction",
)


@dataclass
class TrainConfig:
    """One pretraining run (stored in every checkpoint; ``--resume`` checks it)."""

    kind: str
    data_dir: str | None = None
    synthetic: bool = False
    synthetic_size: int = 800
    train_file: str | None = None
    test_file: str | None = None
    image_column: str = "image"
    text_columns: list[str] | None = None
    levels: list[str] | None = None
    model: str = TINY
    pretrained: str | None = None
    loss: str = "mgll"
    backend: str = "auto"
    batch_size: int = 64
    accum_steps: int = 1
    epochs: int = 10
    max_steps: int | None = None
    stop_after: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 10
    grad_clip: float = 1.0
    precision: str = "auto"
    workers: int = min(4, (os.cpu_count() or 2) // 2)
    output_dir: str = "runs/pretrain"
    checkpoint_every: int = 50
    resume: str | None = None
    seed: int = 0
    skip_bad_samples: bool = False
    device: str | None = None
    # real data layouts and run directories
    json_list: str | None = None
    multi_label: dict[str, str] | None = None
    overwrite: bool = False
    # MGLLLoss options (recorded with the run; the defaults are MGLLLoss's)
    match: str = "exact"
    soft_clip_weight: float = 0.5
    pointwise_weight: float = 1.0
    smooth_kl_weight: float = 1.0
    level_weights: list[float] | None = None
    normalization: str = "pairs"
    pointwise_target: str = "mask"
    kl_direction: str = "to_mean"
    # missing texts and the logit scale / bias the model starts from
    drop_texts: float = 0.0
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None

    def loss_options(self) -> dict[str, Any]:
        """The keyword arguments of ``MGLLLoss`` these flags give (without the backend and distributed ones)."""
        return {name: getattr(self, name) for name in LOSS_OPTIONS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _column_separator(text: str) -> tuple[str, str]:
    """``COLUMN=SEP`` (split at the first ``=``) -> (column, separator)."""
    column, equals, separator = text.partition("=")
    if not equals or not column.strip() or not separator:
        raise argparse.ArgumentTypeError(f"expected COLUMN=SEPARATOR, e.g. 'Finding Labels=|', got {text!r}")
    return column.strip(), separator


def _separators(pairs: list[tuple[str, str]] | None) -> dict[str, str] | None:
    """The ``--multi-label`` pairs as {column: separator}; a column given twice is an error."""
    if not pairs:
        return None
    separators: dict[str, str] = {}
    for column, separator in pairs:
        if column in separators:
            raise ExampleError(f"--multi-label: column {column!r} given twice")
        separators[column] = separator
    return separators


def _add_layout_flags(parser: argparse.ArgumentParser) -> None:
    """The flags for real data layouts and for run directories (docs/examples.md)."""
    layouts = parser.add_argument_group("real data layouts and run directories")
    layouts.add_argument(
        "--json-list",
        metavar="NAME",
        help="the authors' layout: read NAME_train.txt and NAME_val.txt in --data-dir, each line "
        "a JSON record file relative to --data-dir (fundus images from All_data_npz/)",
    )
    layouts.add_argument(
        "--multi-label",
        metavar="COLUMN=SEP",
        action="append",
        type=_column_separator,
        help="generic format: COLUMN holds several class names split by SEP, e.g. 'Finding Labels=|' (repeatable)",
    )
    layouts.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --output-dir (its checkpoint and results) instead of refusing",
    )


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _weight(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite non-negative number, got {text}")
    return value


def _positive_number(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative whole number, got {text}")
    return value


def _weights(text: str) -> list[float]:
    return [_weight(part) for part in _csv(text)]


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text}")
    return value


def _scale(text: str) -> float:
    value = float(text)
    if not 1.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a logit scale in [1, 100] (the training clamp), got {text}")
    return value


def add_loss_flags(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """The MGLLLoss options, ``--drop-texts`` and the initial logit scale / bias (paper Eqs. 1-7)."""
    group = parser.add_argument_group("MGLL loss options (see docs/choosing-options.md)")
    group.add_argument(
        "--match",
        choices=MATCH_MODES,
        default=defaults.match,
        help="how multi-label levels make positives: identical label sets, any shared label, or Jaccard weights",
    )
    group.add_argument(
        "--soft-clip-weight", type=_weight, default=defaults.soft_clip_weight, help="a1, weight of L_sCLIP"
    )
    group.add_argument("--pointwise-weight", type=_weight, default=defaults.pointwise_weight, help="a2, weight of L_P")
    group.add_argument(
        "--smooth-kl-weight", type=_weight, default=defaults.smooth_kl_weight, help="a3, weight of L_sKL"
    )
    group.add_argument("--level-weights", type=_weights, help="w_g, one per level, comma-separated (default all 1)")
    group.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default=defaults.normalization,
        help="L_P: mean over all pairs, or sum / B (paper Eq. 4, SigLIP)",
    )
    group.add_argument(
        "--pointwise-target",
        choices=POINTWISE_TARGETS,
        default=defaults.pointwise_target,
        help="L_P target: the positive mask, or its row-normalised form (the authors' released code)",
    )
    group.add_argument(
        "--kl-direction",
        choices=KL_DIRECTIONS,
        default=defaults.kl_direction,
        help="L_sKL: KL(p_g || mean), or KL(mean || p_g) (the authors' released code)",
    )
    group.add_argument(
        "--drop-texts",
        type=_probability,
        default=defaults.drop_texts,
        metavar="P",
        help="each step each text of each level is missing with probability P (seeded; text_mask); "
        "the CLIP baseline drops the same parts of its joined caption",
    )
    group.add_argument(
        "--init-logit-scale",
        type=_scale,
        metavar="S",
        help="initial logit scale s (not log s; open_clip default 1/0.07 = 14.3, SigLIP 10)",
    )
    group.add_argument(
        "--init-logit-bias",
        type=_finite,
        metavar="B",
        help="give the model a learnable logit bias starting at B (SigLIP: -10); it reaches L_P",
    )


def check_loss_options(config: TrainConfig, num_levels: int) -> None:
    """Refuse loss flags that this run would ignore or that do not fit its levels (one-line errors)."""
    defaults = TrainConfig(kind=config.kind)
    if config.loss == "clip":
        changed = [name for name in LOSS_OPTIONS if getattr(config, name) != getattr(defaults, name)]
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise ExampleError(f"{flags}: MGLL loss options; the plain CLIP baseline (--loss clip) has none")
        return
    if config.level_weights is not None and len(config.level_weights) != num_levels:
        raise ExampleError(
            f"--level-weights: expected {num_levels} weights (one per level), got {len(config.level_weights)}"
        )
    if not (config.soft_clip_weight or config.pointwise_weight or config.smooth_kl_weight):
        raise ExampleError("--soft-clip-weight, --pointwise-weight, --smooth-kl-weight: all 0, nothing to train")


def build_parser(kind: str) -> argparse.ArgumentParser:
    """The command line of ``examples/pretrain_<kind>.py``."""
    defaults = TrainConfig(kind=kind)
    parser = argparse.ArgumentParser(
        prog=f"pretrain_{kind}.py",
        description=f"MGLL (or plain CLIP) pretraining on {kind} image-text data, then zero-shot, "
        "linear-probe and retrieval evaluation.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", help=f"folder with train.json and test.json in the MGLL-{kind.capitalize()} format")
    data.add_argument(
        "--synthetic",
        action="store_true",
        help="generate the built-in synthetic set in --data-dir (default runs/synthetic-<kind>) if absent, and use it",
    )
    data.add_argument(
        "--synthetic-size",
        type=_positive,
        default=defaults.synthetic_size,
        help="number of synthetic images (3/4 train, 1/4 held out)",
    )
    data.add_argument(
        "--train-file", help="generic format: CSV or JSONL with an image path column and one text column per level"
    )
    data.add_argument("--test-file", help="generic format: the held-out CSV or JSONL file")
    data.add_argument(
        "--image-column",
        default=defaults.image_column,
        help="generic format: the image path column (default: %(default)s)",
    )
    data.add_argument(
        "--text-columns", type=_csv, help="generic format: the text columns, one per level, comma-separated"
    )
    data.add_argument(
        "--levels", type=_csv, help="levels to train on, comma-separated (default: all levels of the format)"
    )
    data.add_argument(
        "--skip-bad-samples", action="store_true", help="skip and count unreadable images instead of stopping"
    )
    data.add_argument("--workers", type=int, default=defaults.workers, help="DataLoader worker processes")
    model = parser.add_argument_group("model and loss")
    model.add_argument(
        "--model",
        default=defaults.model,
        help="'tiny' (trains on CPU), 'tiny-vit' (its ViT twin, exportable to an MLLM) or an open_clip architecture, "
        "e.g. ViT-B-32",
    )
    model.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai (downloads weights)")
    model.add_argument(
        "--loss", choices=LOSSES, default=defaults.loss, help="mgll, or the plain CLIP baseline on joined captions"
    )
    model.add_argument("--backend", choices=BACKEND_NAMES, default=defaults.backend, help="MGLLLoss backend")
    add_loss_flags(parser, defaults)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=_positive, default=defaults.batch_size, help="images per rank and step")
    optim.add_argument(
        "--accum-steps",
        type=_positive,
        default=defaults.accum_steps,
        help="micro-batches of --batch-size per step: the loss sees K x --batch-size images per rank, "
        "encoded --batch-size at a time (feature-cached accumulation, mgll_loss.accumulate_step)",
    )
    optim.add_argument("--epochs", type=_positive, default=defaults.epochs)
    optim.add_argument("--max-steps", type=_positive, help="cap on the total number of steps (the schedule's length)")
    optim.add_argument(
        "--stop-after",
        type=_positive,
        help="stop this run after N steps and checkpoint (the schedule keeps its full length); resume later",
    )
    optim.add_argument("--lr", type=_positive_number, default=defaults.lr, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=_weight, default=defaults.weight_decay)
    optim.add_argument("--warmup-steps", type=_count, default=defaults.warmup_steps)
    optim.add_argument("--grad-clip", type=_weight, default=defaults.grad_clip, help="gradient norm clip (0: off)")
    optim.add_argument(
        "--precision", choices=PRECISIONS, default=defaults.precision, help="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    optim.add_argument("--seed", type=int, default=defaults.seed)
    optim.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    run = parser.add_argument_group("outputs")
    run.add_argument("--output-dir", default=f"runs/{kind}", help="checkpoints (last.pt), metrics.json, training.png")
    run.add_argument(
        "--checkpoint-every", type=_positive, default=defaults.checkpoint_every, help="steps between checkpoints"
    )
    run.add_argument(
        "--resume",
        help="continue from a checkpoint (e.g. <output-dir>/last.pt) with the same flags "
        "(a longer --max-steps or --epochs extends the run)",
    )
    _add_layout_flags(parser)
    return parser


def parse_config(kind: str, argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse the command line into a :class:`TrainConfig`."""
    namespace = build_parser(kind).parse_args(argv)
    values = {f.name: getattr(namespace, f.name) for f in fields(TrainConfig) if f.name != "kind"}
    values["multi_label"] = _separators(values["multi_label"])
    if values["synthetic"] and not values["data_dir"]:
        values["data_dir"] = f"runs/synthetic-{kind}"
    return TrainConfig(kind=kind, **values)
