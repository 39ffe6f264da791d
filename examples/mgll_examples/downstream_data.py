"""Downstream (labelled) sets: the authors' ``All_csv_downstream`` CSVs, a generic CSV, and a synthetic RFMiD-like set.

The authors' layout (HUANGLIZI/MGLL ``FinetuneMMFundusDataset``)::

    <data-dir>/All_csv_downstream/<name>_Train.csv   <name>_Val.csv   <name>_Test.csv
    <data-dir>/All_data_npz/<subset>/<file>.npz

Column 0 of a CSV is the image path, every other column a numeric label. A path
``/All_data/<subset>/<file>.jpg`` is read as ``<data-dir>/All_data_npz/<subset>/<file>.npz`` (the
first 9 characters dropped, the extension replaced), as the pretraining records of that layout; any
other path is resolved against ``<data-dir>`` (then ``<data-dir>/images``) like the MGLL-Fundus records.
A multilabel task has 0/1 columns; a multiclass task one-hot columns or a single column of class ids.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Sample
from .data.formats import resolve_image
from .data.record_files import read_records
from .data.synthetic import check_written_with
from .data.synthetic_fundus import FUNDUS_CATEGORIES, fundus_sample
from .errors import ExampleError

__all__ = [
    "SPLITS",
    "TASKS",
    "DownstreamSet",
    "authors_image_path",
    "load_downstream_csvs",
    "write_synthetic_downstream",
]

TASKS = ("multilabel", "multiclass")
SPLITS = ("Train", "Val", "Test")
_AUTHORS_PREFIX = "/All_data/"  # 9 characters up to the subset's slash, dropped by the authors' loader
_SHORT_NAMES = {
    "Mild Non-Proliferative Diabetic Retinopathy": "MildNPDR",
    "Moderate Non-Proliferative Diabetic Retinopathy": "ModerateNPDR",
    "Severe Non-Proliferative Diabetic Retinopathy": "SevereNPDR",
    "Age-related Macular Degeneration": "ARMD",
    "Glaucoma": "Glaucoma",
}


@dataclass
class DownstreamSet:
    """Train / val / test images with labels: ``labels[split]`` float [n, C] (multi-hot or one-hot)."""

    task: str
    class_names: list[str]
    samples: dict[str, list[Sample]]
    labels: dict[str, np.ndarray]


def authors_image_path(value: str, data_dir: Path) -> Path:
    """The file an image path of a downstream CSV names (the rule of the module docstring).

    Example:
        >>> authors_image_path("/All_data/RFMiD/12.png", Path("/data")).as_posix()
        '/data/All_data_npz/RFMiD/12.npz'
    """
    if value.startswith(_AUTHORS_PREFIX):
        return data_dir / "All_data_npz" / (os.path.splitext(value[len(_AUTHORS_PREFIX) :])[0] + ".npz")
    return resolve_image(value, [data_dir, data_dir / "images"])


def _labels(path: Path, rows: list[dict[str, str]], columns: Sequence[str]) -> np.ndarray:
    values = np.zeros((len(rows), len(columns)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            try:
                values[i, j] = float(row[column])
            except (TypeError, ValueError):
                raise ExampleError(f"{path}[{i}]: column {column!r}: expected a number, got {row[column]!r}") from None
    return values


def _as_targets(path: Path, values: np.ndarray, task: str, num_classes: int | None) -> np.ndarray:
    """Multi-hot (multilabel) or one-hot (multiclass) float [n, C]; checks the values fit the task."""
    if task == "multiclass" and values.shape[1] == 1:  # one column of class ids
        ids = values[:, 0]
        count = num_classes or int(ids.max()) + 1
        if (ids != np.round(ids)).any() or ids.min() < 0 or ids.max() >= count:
            raise ExampleError(f"{path}: --task multiclass: the label column must hold class ids 0..{count - 1}")
        return np.eye(count, dtype=np.float32)[ids.astype(int)]
    if not np.isin(values, (0.0, 1.0)).all():
        raise ExampleError(
            f"{path}: --task {task}: label columns must hold 0 or 1 (found {values[~np.isin(values, (0, 1))][0]})"
        )
    if task == "multiclass" and (values.sum(axis=1) != 1).any():
        row = int(np.flatnonzero(values.sum(axis=1) != 1)[0])
        raise ExampleError(f"{path}[{row}]: --task multiclass: expected exactly one 1 among the label columns")
    return values


def _read_split(
    path: Path,
    data_dir: Path,
    task: str,
    image_column: str | None,
    label_columns: Sequence[str] | None,
    num_classes: int | None,
) -> tuple[list[str], list[Sample], np.ndarray]:
    rows = read_records(path)
    if not rows:
        raise ExampleError(f"{path}: no rows")
    header = list(rows[0])
    image = image_column or header[0]
    columns = list(label_columns) if label_columns else [name for name in header if name != image]
    unknown = [name for name in [image, *columns] if name not in header]
    if unknown:
        raise ExampleError(f"{path}: no column {unknown[0]!r}; the file has: {', '.join(header)}")
    if not columns:
        raise ExampleError(f"{path}: no label columns besides the image column {image!r}")
    samples = [
        Sample(authors_image_path(str(row[image]).strip(), data_dir), (), f"{path.name}[{i}]")
        for i, row in enumerate(rows)
    ]
    missing = [sample for sample in samples if not sample.image.is_file()]
    if missing:
        shown = ", ".join(f"{s.source}: {s.image}" for s in missing[:3])
        raise ExampleError(f"{path}: {len(missing)} of {len(samples)} image files missing (first: {shown})")
    return columns, samples, _as_targets(path, _labels(path, rows, columns), task, num_classes)


def load_downstream_csvs(
    files: dict[str, Path],
    data_dir: Path,
    task: str,
    image_column: str | None = None,
    label_columns: Sequence[str] | None = None,
) -> DownstreamSet:
    """The three splits from CSV files (``files`` maps "Train"/"Val"/"Test" to a path).

    The classes are the training split's label columns (a multiclass column of ids: "0", "1", ...);
    the validation and test splits must have as many.
    """
    columns, train_samples, train_labels = _read_split(
        files["Train"], data_dir, task, image_column, label_columns, None
    )
    count = train_labels.shape[1]
    names = columns if count == len(columns) else [str(c) for c in range(count)]
    samples, labels = {"Train": train_samples}, {"Train": train_labels}
    for split in SPLITS[1:]:
        _, samples[split], labels[split] = _read_split(files[split], data_dir, task, image_column, label_columns, count)
        if labels[split].shape[1] != count:
            raise ExampleError(f"{files[split]}: {labels[split].shape[1]} classes, the train split has {count}")
    return DownstreamSet(task, names, samples, labels)


_SEED_OFFSET = 10_000  # the downstream images differ from the pretraining set of the same --seed


def write_synthetic_downstream(
    data_dir: Path, name: str, sizes: dict[str, int], seed: int, image_size: int = 64
) -> None:
    """An RFMiD-like multilabel set from the synthetic fundus generator, in the authors' layout.

    Columns ``ID`` (an ``/All_data/<name>/...`` path), ``Disease_Risk`` and one 0/1 column per
    disease; written only when ``<name>_Train.csv`` is absent (it is written last). What it was
    written with is recorded next to it; an existing set written with other arguments is refused.
    """
    csv_dir = data_dir / "All_csv_downstream"
    manifest = csv_dir / f".{name}_synthetic.json"
    spec = {"name": name, "sizes": dict(sizes), "seed": seed, "image_size": image_size}
    if (csv_dir / f"{name}_Train.csv").is_file():
        check_written_with(manifest, spec, data_dir)
        return
    image_dir = data_dir / "All_data_npz" / name
    image_dir.mkdir(parents=True, exist_ok=True)
    csv_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + _SEED_OFFSET)
    header = ["ID", "Disease_Risk", *(_SHORT_NAMES[c] for c in FUNDUS_CATEGORIES)]
    for split in ("Val", "Test", "Train"):
        rows = []
        for index in range(sizes[split]):
            fields, pixels = fundus_sample(rng, image_size)
            stem = f"{split.lower()}_{index:05d}"
            np.savez_compressed(image_dir / f"{stem}.npz", image=pixels)
            diseases = {part.strip() for part in fields["Disease"].split(",")[1:]}
            flags = [int(category in diseases) for category in FUNDUS_CATEGORIES]
            rows.append([f"{_AUTHORS_PREFIX}{name}/{stem}.jpg", int(any(flags)), *flags])
        temporary = csv_dir / f".{name}_{split}.csv.tmp"
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *rows])
        if split == "Train":
            manifest.write_text(json.dumps(spec) + "\n", encoding="utf-8")
        temporary.replace(csv_dir / f"{name}_{split}.csv")
