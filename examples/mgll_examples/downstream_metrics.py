"""Downstream scores (AUC, ACC, mAP per class and macro, with scikit-learn), their table and plot.

As the paper reports them: AUC = one-vs-rest ROC AUC, mAP = average precision, both per class and
their macro mean over the classes with positives and negatives in the split; ACC = accuracy of the
thresholded probabilities (sigmoid >= 0.5 per class for multilabel; the arg-max class for
multiclass, whose per-class ACC is that of the one-vs-rest decision).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from .report import plt

__all__ = ["SCORES", "downstream_table", "plot_downstream", "scores"]

SCORES = ("auc", "acc", "map")
_HEADERS = {"auc": "AUC", "acc": "ACC", "map": "mAP"}


def scores(truth: np.ndarray, probabilities: np.ndarray, task: str, class_names: Sequence[str]) -> dict[str, Any]:
    """``{"macro": {auc, acc, map}, "per_class": {name: {auc, acc, map}}}`` (None where a class is all 0 or all 1).

    Example:
        >>> truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
        >>> result = scores(truth, np.array([[.9, .2], [.1, .8], [.7, .6], [.3, .4]]), "multilabel", ["a", "b"])
        >>> result["macro"]["auc"], result["macro"]["acc"]
        (1.0, 1.0)
    """
    if task == "multiclass":
        predicted = np.eye(truth.shape[1])[probabilities.argmax(axis=1)]
        overall_acc: float | None = float(accuracy_score(truth.argmax(axis=1), probabilities.argmax(axis=1)))
    else:
        predicted = (probabilities >= 0.5).astype(float)
        overall_acc = None
    per_class: dict[str, dict[str, float | None]] = {}
    for c, name in enumerate(class_names):
        column = truth[:, c]
        both = 0 < column.sum() < len(column)
        per_class[name] = {
            "auc": float(roc_auc_score(column, probabilities[:, c])) if both else None,
            "acc": float(accuracy_score(column, predicted[:, c])),
            "map": float(average_precision_score(column, probabilities[:, c])) if both else None,
        }
    macro: dict[str, float | None] = {}
    for score in SCORES:
        values = [value for v in per_class.values() if (value := v[score]) is not None]
        macro[score] = float(np.mean(values)) if values else None
    if overall_acc is not None:
        macro["acc"] = overall_acc
    return {"macro": macro, "per_class": per_class}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def downstream_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per run.

    Columns: checkpoint, mode, best epoch, macro test AUC / ACC / mAP, then the AUC of every class.
    """
    first = next(iter(runs.values()))
    classes = list(first["test"]["per_class"])
    head = ["run", "mode", "epoch", *(f"{_HEADERS[s]}" for s in SCORES), *(f"AUC {name}" for name in classes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, run in runs.items():
        test = run["test"]
        cells = [
            name,
            run["mode"],
            str(run["best_epoch"]),
            *(_cell(test["macro"][s]) for s in SCORES),
            *(_cell(test["per_class"].get(c, {}).get("auc")) for c in classes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_downstream(runs: dict[str, dict[str, Any]], path: Path) -> Path:
    """Validation AUC per epoch (the selected epoch marked) and test AUC per class, for every run."""
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4))
    classes = list(next(iter(runs.values()))["test"]["per_class"])
    width = 0.8 / len(runs)
    for r, (name, run) in enumerate(runs.items()):
        epochs = [record["epoch"] for record in run["history"]]
        line = curves.plot(epochs, [record["val_auc"] for record in run["history"]], label=name)[0]
        curves.axvline(run["best_epoch"], color=line.get_color(), linestyle=":", linewidth=1)
        values = [run["test"]["per_class"][c]["auc"] or 0.0 for c in classes] + [run["test"]["macro"]["auc"] or 0.0]
        bars.bar([i + r * width for i in range(len(values))], values, width, label=name)
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation macro AUC")
    curves.legend(fontsize=7)
    bars.set_xticks(
        [i + width * (len(runs) - 1) / 2 for i in range(len(classes) + 1)], classes + ["macro"], rotation=20, fontsize=7
    )
    bars.set_title("test AUC", fontsize=9)
    bars.set_ylim(0, 1)
    bars.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
