"""Small files in the layouts of the field's public data sets, written by the tests (no downloads).

- :func:`write_nih_table`: CSVs shaped like NIH ChestX-ray14's ``Data_Entry_2017.csv``
  (``Image Index``, ``Finding Labels`` such as ``Cardiomegaly|Effusion`` or ``No Finding``,
  ``View Position`` ...) with PNG images beside them;
- :func:`write_authors_fundus` / :func:`write_authors_midrc`: the authors' released layout
  (HUANGLIZI/MGLL): ``<name>_train.txt`` / ``<name>_val.txt`` listing JSON record files, fundus
  images under ``All_data_npz/`` for ``ImageID`` ``/All_data/<subset>/<file>.jpg``, MIDRC images at
  the path the ``ImageID`` gives.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

NIH_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]
#: The findings of the NIH rows, in both orders for a pair, so that only a label-set reading merges them.
NIH_FINDINGS = [
    "Cardiomegaly|Effusion",
    "Effusion|Cardiomegaly",
    "No Finding",
    "Atelectasis",
    "Infiltration|Mass",
    "Nodule",
    "Pneumothorax|Atelectasis",
    "Mass| Infiltration",
    "No Finding",
    "Effusion",
]
NIH_CLASSES = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "No Finding",
    "Nodule",
    "Pneumothorax",
]
FUNDUS_DISEASES = [
    ("Normal, Healthy", "No abnormality observed"),
    ("Abnormal, Glaucoma", "Enlarged optic cup"),
    ("Abnormal, Age-related Macular Degeneration, Glaucoma", "Drusen around the macula; enlarged optic cup"),
]
MIDRC_SERIES = [
    ("DX", "CHEST AP", "AP"),
    ("CR", "CHEST PA AND LATERAL", "PA"),
    ("DX", "CHEST 1 VIEW PORTABLE", "AP PORTABLE"),
]


def _pixels(index: int, shape=(16, 16)) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, shape, dtype=np.uint8)


def write_nih_table(folder: Path, rows: int = 40, test_rows: int = 10) -> dict[str, Path]:
    """``folder/train.csv`` and ``folder/test.csv`` in the ``Data_Entry_2017.csv`` shape, PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count, offset in (("train", rows, 0), ("test", test_rows, rows)):
        with open(folder / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(NIH_COLUMNS)
            for i in range(offset, offset + count):
                name = f"{i:08d}_000.png"
                Image.fromarray(_pixels(i)).save(folder / name)
                view = ("PA", "AP")[i % 2]
                writer.writerow(
                    [name, NIH_FINDINGS[i % len(NIH_FINDINGS)], 0, i, 50, "M", view, 2500, 2048, 0.143, 0.143]
                )
        files[split] = folder / f"{split}.csv"
    return files


def _fundus_records(subset: str, start: int, count: int) -> list[dict]:
    return [
        {
            "ImageID": f"/All_data/{subset}/img_{i}.jpg",
            "Disease": FUNDUS_DISEASES[i % 3][0],
            "Description": FUNDUS_DISEASES[i % 3][1],
        }
        for i in range(start, start + count)
    ]


def _write_lists(root: Path, name: str, splits: dict[str, dict[str, list[dict]]]) -> None:
    """``root/<name>_<split>.txt`` listing ``/All_json/<file>`` (a leading "/", as the authors write them)."""
    (root / "All_json").mkdir(parents=True, exist_ok=True)
    for split, files in splits.items():
        lines = []
        for file_name, records in files.items():
            (root / "All_json" / file_name).write_text(json.dumps(records))
            lines.append(f"/All_json/{file_name}")
        (root / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n\n")


def write_authors_fundus(root: Path, name: str = "2level_multi_disease_list", per_file: int = 12) -> Path:
    """Two subsets (two JSON files) for training and one for validation; ``.npz`` images under ``All_data_npz/``."""
    splits = {
        "train": {
            "SubsetA_train.json": _fundus_records("SubsetA", 0, per_file),
            "SubsetB_train.json": _fundus_records("SubsetB", 0, per_file),
        },
        "val": {"SubsetA_val.json": _fundus_records("SubsetA", per_file, per_file // 2)},
    }
    for files in splits.values():
        for records in files.values():
            for number, record in enumerate(records):
                path = root / "All_data_npz" / Path(record["ImageID"][len("/All_data/") :]).with_suffix(".npz")
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(path, image=np.stack([_pixels(number)] * 3, axis=-1))
    _write_lists(root, name, splits)
    return root


def write_authors_midrc(root: Path, image_dir: Path, name: str = "MIDRC_list", per_file: int = 12) -> Path:
    """MIDRC records whose ``ImageID`` is the image path itself: absolute (into ``image_dir``) for
    even records, relative to ``root`` for odd ones."""
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "npz").mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict[str, list[dict]]] = {}
    for split, count, offset in (("train", per_file, 0), ("val", per_file // 2, per_file)):
        records = []
        for i in range(offset, offset + count):
            path = image_dir / f"m{i}.npz" if i % 2 == 0 else root / "npz" / f"m{i}.npz"
            np.savez_compressed(path, image=_pixels(i))
            image_id = str(path) if i % 2 == 0 else f"npz/m{i}.npz"
            modality, study, series = MIDRC_SERIES[i % 3]
            records.append(
                {"ImageID": image_id, "modality": modality, "study_description_0": study, "series_description": series}
            )
        splits[split] = {f"midrc_{split}.json": records}
    _write_lists(root, name, splits)
    return root
