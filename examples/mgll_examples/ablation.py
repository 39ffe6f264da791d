"""The paper's loss ablation (its Table 3) as one command: the same model, data, seeds and steps per configuration.

Configurations (``--configs`` picks some by key): the plain CLIP baseline, L_P only, L_sCLIP only,
L_sCLIP + L_P, full MGLL (each a set of ``MGLLLoss`` weights), MGLL with 30% of the texts missing,
and the configurations with a point-wise term again with a learnable logit bias (SigLIP's
initialisation, -10; the softmax terms do not see a bias). Each run goes to ``<output-dir>/<key>``;
a finished run with the same flags is reused, an interrupted one resumed. The table (Markdown and
CSV) holds the held-out metrics' mean over levels, and, with ``--downstream``, the linear-probe AUC
of each model on the synthetic RFMiD-like downstream set.

``--seeds 0,1,2`` trains every configuration once per seed, into ``<output-dir>/seed-<N>/<key>``
(with ``--synthetic`` each seed draws its own synthetic sets, as ``--seed`` does for one run: in
``<output-dir>/seed-<N>/`` or, with ``--data-dir D``, in ``D/seed-<N>``); the table then holds the
mean and sample standard deviation over the seeds (``ablation_report``). Without ``--seeds`` one
seed (``--seed``, default 0) runs into ``<output-dir>/<key>`` as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .ablation_report import PerSeed, ablation_table, write_outputs
from .checkpoint import MUST_MATCH
from .cli import METRICS_NAME, run
from .config import KINDS, LOSS_OPTIONS, TrainConfig, build_parser
from .downstream import parse_config as downstream_config
from .downstream import run as downstream_run
from .errors import ExampleError
from .train import CHECKPOINT_NAME

__all__ = ["ABLATION", "Configuration", "ablation_table", "main", "parse_seeds"]

_BIAS = -10.0


@dataclass(frozen=True)
class Configuration:
    key: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _weights(soft_clip: float, pointwise: float, smooth_kl: float, **extra: Any) -> dict[str, Any]:
    return {"soft_clip_weight": soft_clip, "pointwise_weight": pointwise, "smooth_kl_weight": smooth_kl, **extra}


ABLATION = (
    Configuration("clip", "CLIP (joined captions)", {"loss": "clip"}),
    Configuration("lp", "L_P only", _weights(0.0, 1.0, 0.0)),
    Configuration("sclip", "L_sCLIP only", _weights(0.5, 0.0, 0.0)),
    Configuration("sclip-lp", "L_sCLIP + L_P", _weights(0.5, 1.0, 0.0)),
    Configuration("mgll", "MGLL (L_sCLIP + L_P + L_sKL)", _weights(0.5, 1.0, 1.0)),
    Configuration("mgll-missing30", "MGLL, 30% texts missing", _weights(0.5, 1.0, 1.0, drop_texts=0.3)),
    Configuration("lp-bias", "L_P only, bias -10", _weights(0.0, 1.0, 0.0, init_logit_bias=_BIAS)),
    Configuration("sclip-lp-bias", "L_sCLIP + L_P, bias -10", _weights(0.5, 1.0, 0.0, init_logit_bias=_BIAS)),
    Configuration("mgll-bias", "MGLL, bias -10", _weights(0.5, 1.0, 1.0, init_logit_bias=_BIAS)),
)
#: Columns of the table: (report key, metric of the "mean" row, header).
COLUMNS = (
    ("linear_probe_auc", "linear-probe AUC"),
    ("zero_shot_auc", "zero-shot AUC (class prompts)"),
    ("zero_shot_auc_own", "zero-shot AUC (own-form prompts)"),
    ("i2t_r1", "I2T R@1"),
    ("t2i_r1", "T2I R@1"),
)
DOWNSTREAM = "downstream probe AUC"


def build_ablation_parser() -> argparse.ArgumentParser:
    """The pretraining flags (minus the loss choice, which the configurations set) plus the ablation's own."""
    parser = build_parser("fundus")
    parser.prog, parser.description = "ablation.py", __doc__.splitlines()[0]
    parser.set_defaults(output_dir="runs/ablation", seed=None)
    group = parser.add_argument_group("ablation")
    group.add_argument(
        "--seeds",
        type=parse_seeds,
        help="comma-separated seeds, e.g. 0,1,2: each configuration trained per seed, the table with mean ± std "
        "(replaces --seed)",
    )
    group.add_argument("--kind", choices=KINDS, default="fundus", help="which pretraining data layout")
    group.add_argument("--configs", help=f"comma-separated keys (default all): {', '.join(c.key for c in ABLATION)}")
    group.add_argument(
        "--downstream",
        action="store_true",
        help="also a linear probe of each model on the synthetic RFMiD-like downstream set",
    )
    return parser


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: distinct whole numbers, comma-separated (``"0,1,2"`` -> ``[0, 1, 2]``)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        seeds = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not seeds or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"expected one or more distinct seeds, got {text!r}")
    return seeds


def _select(keys: str | None) -> list[Configuration]:
    if not keys:
        return list(ABLATION)
    known = {c.key: c for c in ABLATION}
    wanted = [key.strip() for key in keys.split(",") if key.strip()]
    for key in wanted:
        if key not in known:
            raise ExampleError(f"--configs: unknown configuration {key!r}; known: {', '.join(known)}")
    return [known[key] for key in wanted]


def _same_run(saved: dict[str, Any], config: TrainConfig) -> bool:
    current = config.to_dict()
    return all(saved.get(name) == current[name] for name in (*MUST_MATCH, "data_dir"))


def _train_or_reuse(config: TrainConfig) -> dict[str, Any]:
    """The run's report: reused when ``metrics.json`` holds the same flags, resumed from ``last.pt`` when unfinished."""
    output = Path(config.output_dir)
    metrics, checkpoint = output / METRICS_NAME, output / CHECKPOINT_NAME
    if metrics.is_file():
        report = json.loads(metrics.read_text())
        if _same_run(report.get("config", {}), config):
            print(f"{output}: finished with the same flags, reusing its metrics", flush=True)
            return report
        raise ExampleError(f"{output}: holds a run with other flags; remove it or pick another --output-dir")
    if checkpoint.is_file():
        config = replace(config, resume=str(checkpoint))
    report = run(config)
    if report is None:
        raise ExampleError("the ablation runs in one process (not under torchrun)")
    return report


def _seed_base(args: argparse.Namespace, seed: int, folder: Path) -> TrainConfig:
    """The pretraining flags of one seed, its runs under ``folder`` (its own synthetic set with ``--seeds``)."""
    values = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if name != "kind"}
    values.update(seed=seed, output_dir=str(folder))
    if values["synthetic"]:
        if not values["data_dir"]:
            values["data_dir"] = str(folder / f"synthetic-{args.kind}")
        elif args.seeds:
            values["data_dir"] = str(Path(values["data_dir"]) / f"seed-{seed}")
    return TrainConfig(kind=args.kind, **values)


def ablation(argv: Sequence[str] | None = None) -> list[str]:
    """Train, evaluate and tabulate the selected configurations for every seed; returns the Markdown table."""
    args = build_ablation_parser().parse_args(argv)
    if args.seeds and args.seed is not None:
        raise ExampleError("--seed and --seeds: pass one (--seeds 0,1,2 trains each configuration per seed)")
    output = Path(args.output_dir)
    configurations = _select(args.configs)
    per_seed: PerSeed = {}
    for seed in args.seeds or [0 if args.seed is None else args.seed]:
        folder = output / f"seed-{seed}" if args.seeds else output
        base = _seed_base(args, seed, folder)
        if base.loss != "mgll" or base.resume:
            raise ExampleError(
                "--loss and --resume: the ablation sets the loss per configuration and resumes by itself"
            )
        for configuration in configurations:
            print(f"== {configuration.label} ({configuration.key}), seed {seed}", flush=True)
            config = replace(base, output_dir=str(folder / configuration.key), **configuration.overrides)
            if config.loss == "clip":  # the MGLL loss flags do not apply to it
                config = replace(config, **{name: getattr(TrainConfig(kind=args.kind), name) for name in LOSS_OPTIONS})
            mean = _train_or_reuse(config)["levels"]["mean"]
            values: dict[str, float | None] = {header: mean.get(key) for key, header in COLUMNS}
            if args.downstream:
                values[DOWNSTREAM] = _downstream_probe(config, folder, seed)
            per_seed.setdefault(configuration.label, {})[seed] = values
    output.mkdir(parents=True, exist_ok=True)
    return write_outputs(per_seed, output)


def _downstream_probe(config: TrainConfig, output: Path, seed: int) -> float | None:
    """The macro test AUC of a linear probe on the synthetic downstream set.

    Reused when the probe has run on this checkpoint with the same schedule (seed, epochs, patience,
    learning rate); a probe of an older checkpoint or with other settings runs again.
    """
    checkpoint = Path(config.output_dir) / CHECKPOINT_NAME
    flags = [
        "--synthetic",
        "--data-dir",
        str(output / "synthetic-downstream"),
        "--checkpoint",
        str(checkpoint),
        "--seed",
        str(seed),
        "--output-dir",
        str(Path(config.output_dir) / "downstream"),
    ]
    probe = downstream_config(flags)
    done = Path(config.output_dir) / "downstream" / Path(config.output_dir).name / METRICS_NAME
    if done.is_file() and done.stat().st_mtime >= checkpoint.stat().st_mtime:
        report = json.loads(done.read_text())
        if all(report.get(name) == getattr(probe, name) for name in ("seed", "epochs", "patience", "lr")):
            return report["test"]["macro"]["auc"]
        print(f"{done}: a probe with other settings, running it again", flush=True)
    return next(iter(downstream_run(probe).values()))["test"]["macro"]["auc"]


def main(argv: Sequence[str] | None = None) -> int:
    """``examples/ablation.py``; a user error prints one line to stderr and returns 2."""
    try:
        table = ablation(argv)
    except ExampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(table), flush=True)
    return 0
