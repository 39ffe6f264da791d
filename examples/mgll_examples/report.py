"""Metric tables and plots of finished runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .evaluate import METRICS  # noqa: E402

Metrics = dict[str, dict[str, float | None]]
HEADERS = {
    "zero_shot_auc": "zero-shot AUC",
    "zero_shot_auc_own": "ZS own-form",
    "linear_probe_auc": "probe AUC",
    "i2t_r1": "I2T R@1",
    "i2t_r5": "I2T R@5",
    "t2i_r1": "T2I R@1",
    "t2i_r5": "T2I R@5",
}


def _cell(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def metrics_table(metrics: Metrics, title: str) -> list[str]:
    """Lines of a fixed-width table: one row per level (and the mean), one column per metric."""
    width = max(len(name) for name in metrics) + 2
    columns = {m: max(len(HEADERS[m]), 6) for m in METRICS}
    lines = [title, "level".ljust(width) + "  ".join(f"{HEADERS[m]:>{columns[m]}}" for m in METRICS)]
    for level, values in metrics.items():
        lines.append(level.ljust(width) + "  ".join(f"{_cell(values[m]):>{columns[m]}}" for m in METRICS))
    return lines


def side_by_side(tables: Sequence[list[str]], gap: int = 4) -> str:
    """Tables printed next to each other (or one under the other when that would exceed 200 columns)."""
    widths = [max(len(line) for line in table) for table in tables]
    if sum(widths) + gap * (len(tables) - 1) > 200:
        return "\n\n".join("\n".join(table) for table in tables)
    rows = max(len(table) for table in tables)
    padded = [table + [""] * (rows - len(table)) for table in tables]
    return "\n".join(
        (" " * gap).join(t[i].ljust(w) for t, w in zip(padded, widths, strict=True)).rstrip() for i in range(rows)
    )


def _loss_axis(axis, history: list[dict[str, float]], label: str = "") -> None:
    """The loss terms of a run over steps, and their sum when there are several."""
    steps = [record["step"] for record in history]
    terms = [key for key in history[0] if key.endswith("_loss")] if history else []
    for key in terms + (["loss"] if len(terms) > 1 else []):
        axis.plot(steps, [record[key] for record in history], label=f"{label}{key}".replace("_", " "))
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    if history:
        axis.legend(fontsize=7)


def _metric_bars(axis, runs: dict[str, Metrics], metric: str) -> None:
    levels = [name for name in next(iter(runs.values())) if name != "mean"] + ["mean"]
    width = 0.8 / len(runs)
    for r, (name, metrics) in enumerate(runs.items()):
        values = [metrics[level][metric] or 0.0 for level in levels]
        axis.bar([i + r * width for i in range(len(levels))], values, width, label=name)
    axis.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(levels))], levels, rotation=20, fontsize=7)
    axis.set_title(HEADERS[metric], fontsize=9)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7)


def plot_runs(histories: dict[str, list[dict[str, float]]], runs: dict[str, Metrics], path: Path) -> Path:
    """Loss curves of every run, and bars of zero-shot AUC, probe AUC and I2T R@1 per level."""
    figure, axes = plt.subplots(1, 4, figsize=(18, 4))
    for name, history in histories.items():
        _loss_axis(axes[0], history, f"{name}: " if len(histories) > 1 else "")
    axes[0].set_title("training loss", fontsize=9)
    for axis, metric in zip(axes[1:], ("zero_shot_auc", "linear_probe_auc", "i2t_r1"), strict=True):
        _metric_bars(axis, runs, metric)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
