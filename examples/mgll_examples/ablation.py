"""The paper's loss ablation (its Table 3) as one command: the same model, data, seed and steps per configuration.

Configurations (``--configs`` picks some by key): the plain CLIP baseline, L_P only, L_sCLIP only,
L_sCLIP + L_P, full MGLL (each a set of ``MGLLLoss`` weights), MGLL with 30% of the texts missing,
and the configurations with a point-wise term again with a learnable logit bias (SigLIP's
initialisation, -10; the softmax terms do not see a bias). Each run goes to ``<output-dir>/<key>``;
a finished run with the same flags is reused, an interrupted one resumed. The table (Markdown and
CSV) holds the held-out metrics' mean over levels, and, with ``--downstream``, the linear-probe AUC
of each model on the synthetic RFMiD-like downstream set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import MUST_MATCH
from .cli import METRICS_NAME, run
from .config import KINDS, LOSS_OPTIONS, TrainConfig, build_parser
from .downstream import parse_config as downstream_config
from .downstream import run as downstream_run
from .errors import ExampleError
from .report import plt
from .train import CHECKPOINT_NAME

__all__ = ["ABLATION", "Configuration", "ablation_table", "main"]

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
    parser.set_defaults(output_dir="runs/ablation")
    group = parser.add_argument_group("ablation")
    group.add_argument("--kind", choices=KINDS, default="fundus", help="which pretraining data layout")
    group.add_argument("--configs", help=f"comma-separated keys (default all): {', '.join(c.key for c in ABLATION)}")
    group.add_argument(
        "--downstream",
        action="store_true",
        help="also a linear probe of each model on the synthetic RFMiD-like downstream set",
    )
    return parser


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


def ablation_table(rows: dict[str, dict[str, float | None]]) -> list[str]:
    """Markdown lines: one row per configuration, one column per value (mean over levels)."""
    headers = [header for _, header in COLUMNS] + ([DOWNSTREAM] if any(DOWNSTREAM in r for r in rows.values()) else [])
    lines = ["| configuration | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    for label, values in rows.items():
        cells = ["-" if values.get(h) is None else f"{values[h]:.3f}" for h in headers]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _write_outputs(rows: dict[str, dict[str, float | None]], output: Path) -> list[str]:
    table = ablation_table(rows)
    (output / "ablation.md").write_text("\n".join(table) + "\n")
    headers = [h.strip() for h in table[0].strip("|").split("|")]
    lines = [",".join(headers)] + [
        ",".join([f'"{label}"'] + ["" if values.get(h) is None else f"{values[h]:.6f}" for h in headers[1:]])
        for label, values in rows.items()
    ]
    (output / "ablation.csv").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(max(8, 1.4 * len(rows)), 4))
    width = 0.8 / len(headers[1:])
    for k, header in enumerate(headers[1:]):
        axis.bar(
            [i + k * width for i in range(len(rows))],
            [v.get(header) or 0.0 for v in rows.values()],
            width,
            label=header,
        )
    axis.set_xticks(
        [i + width * (len(headers) - 2) / 2 for i in range(len(rows))], list(rows), rotation=20, fontsize=7, ha="right"
    )
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_title("loss ablation (mean over levels, held-out split)", fontsize=9)
    figure.tight_layout()
    figure.savefig(output / "ablation.png", dpi=110)
    plt.close(figure)
    return table


def ablation(argv: Sequence[str] | None = None) -> list[str]:
    """Train, evaluate and tabulate the selected configurations; returns the Markdown table."""
    args = build_ablation_parser().parse_args(argv)
    values = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if name != "kind"}
    if values["synthetic"] and not values["data_dir"]:
        values["data_dir"] = str(Path(args.output_dir) / f"synthetic-{args.kind}")
    base = TrainConfig(kind=args.kind, **values)
    if base.loss != "mgll" or base.resume:
        raise ExampleError("--loss and --resume: the ablation sets the loss per configuration and resumes by itself")
    output = Path(base.output_dir)
    rows: dict[str, dict[str, float | None]] = {}
    for configuration in _select(args.configs):
        print(f"== {configuration.label} ({configuration.key})", flush=True)
        config = replace(base, output_dir=str(output / configuration.key), **configuration.overrides)
        if config.loss == "clip":  # the MGLL loss flags do not apply to it
            config = replace(config, **{name: getattr(TrainConfig(kind=args.kind), name) for name in LOSS_OPTIONS})
        mean = _train_or_reuse(config)["levels"]["mean"]
        rows[configuration.label] = {header: mean.get(key) for key, header in COLUMNS}
        if args.downstream:
            rows[configuration.label][DOWNSTREAM] = _downstream_probe(config, output, args.seed)
    output.mkdir(parents=True, exist_ok=True)
    return _write_outputs(rows, output)


def _downstream_probe(config: TrainConfig, output: Path, seed: int) -> float | None:
    """The macro test AUC of a linear probe on the synthetic downstream set (reused when the probe has run)."""
    checkpoint = Path(config.output_dir) / CHECKPOINT_NAME
    done = Path(config.output_dir) / "downstream" / Path(config.output_dir).name / METRICS_NAME
    if done.is_file() and done.stat().st_mtime >= checkpoint.stat().st_mtime:
        return json.loads(done.read_text())["test"]["macro"]["auc"]
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
    report = downstream_run(downstream_config(flags))
    return next(iter(report.values()))["test"]["macro"]["auc"]


def main(argv: Sequence[str] | None = None) -> int:
    """``examples/ablation.py``; a user error prints one line to stderr and returns 2."""
    try:
        table = ablation(argv)
    except ExampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(table), flush=True)
    return 0
