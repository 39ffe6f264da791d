"""The authors' released layout (HUANGLIZI/MGLL ``util/datasets.py``): list files of JSON record files.

``--data-dir ROOT --json-list NAME`` reads ``ROOT/NAME_train.txt`` (training) and ``ROOT/NAME_val.txt``
(held out). Each non-blank line of a list file is the path of a JSON record file relative to ``ROOT``
(a leading ``/`` is allowed: the authors' files are read as ``ROOT + line``); the record lists of one
split are concatenated. Images:

- fundus (MGLL-Fundus): an ``ImageID`` ``/All_data/<subset>/<file>.jpg`` is the array
  ``ROOT/All_data_npz/<subset>/<file>.npz`` (the authors' loader drops the first 9 characters,
  ``/All_data``, and replaces the extension);
- X-ray (MIDRC): the ``ImageID`` is the image path itself (absolute, or relative to ``ROOT``).

The records and levels are those of :func:`~.formats.load_fundus` / :func:`~.formats.load_xray`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ExampleError
from .formats import _FUNDUS_SPECS, _XRAY_SPECS, ImageLocator, _dataset, _samples, _select, resolve_image
from .record_files import read_records, require_fields
from .records import Dataset, Sample

__all__ = ["ALL_DATA", "ALL_DATA_NPZ", "load_json_lists", "npz_of_image_id"]

ALL_DATA = "/All_data/"
ALL_DATA_NPZ = "All_data_npz"
SPLIT_LISTS = {"train": "_train.txt", "test": "_val.txt"}


def npz_of_image_id(root: Path, image_id: str, where: str) -> Path:
    """``/All_data/<subset>/<file>.<ext>`` -> ``root/All_data_npz/<subset>/<file>.npz``."""
    rooted = "/" + image_id.lstrip("/")
    if not rooted.startswith(ALL_DATA) or not rooted[len(ALL_DATA) :].strip("/"):
        raise ExampleError(
            f"{where}: ImageID {image_id!r} does not start with {ALL_DATA!r} (the authors' layout maps "
            f"/All_data/<subset>/<file>.jpg to {ALL_DATA_NPZ}/<subset>/<file>.npz)"
        )
    return root / ALL_DATA_NPZ / Path(rooted[len(ALL_DATA) :]).with_suffix(".npz")


def _list_names(root: Path) -> str:
    names = sorted(path.name[: -len(SPLIT_LISTS["train"])] for path in root.glob("*" + SPLIT_LISTS["train"]))
    return ", ".join(names) or "none"


def _record_files(root: Path, name: str, split: str) -> list[Path]:
    """The JSON files that ``ROOT/<name>_train.txt`` (or ``_val.txt``) lists."""
    list_file = root / f"{name}{SPLIT_LISTS[split]}"
    if not list_file.is_file():
        raise ExampleError(f"--json-list {name}: {list_file}: no such file (list names in {root}: {_list_names(root)})")
    files = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if line.strip():
            path = root / line.strip().lstrip("/")
            if not path.is_file():
                raise ExampleError(f"{list_file} line {number}: {path}: no such file")
            files.append(path)
    if not files:
        raise ExampleError(f"{list_file}: lists no JSON file")
    return files


def load_json_lists(root: Path, name: str, kind: str, levels: Sequence[str] | None = None) -> Dataset:
    """The authors' layout under ``root`` for the list name ``name`` (e.g. ``2level_multi_disease_list``
    or ``MIDRC_list``); ``kind`` is "fundus" or "xray"; ``levels`` as for the simple layout (default: all)."""
    root = Path(root)
    if not root.is_dir():
        raise ExampleError(f"--data-dir {root}: no such directory")
    specs = _FUNDUS_SPECS if kind == "fundus" else _XRAY_SPECS
    selected = _select(specs, tuple(specs) if levels is None else tuple(levels), kind)
    locate: ImageLocator
    if kind == "fundus":

        def locate(image_id: str, where: str) -> Path:
            return npz_of_image_id(root, image_id, where)
    else:

        def locate(image_id: str, where: str) -> Path:
            return resolve_image(image_id, (root,))

    splits = {}
    for split in SPLIT_LISTS:
        samples: list[Sample] = []
        for path in _record_files(root, name, split):
            records = read_records(path)
            require_fields(path, records, ["ImageID", *(spec.field for spec in selected)], {})
            samples += _samples(records, path, path.relative_to(root).as_posix(), selected, "ImageID", locate)
        splits[split] = samples
    return _dataset(selected, splits["train"], splits["test"], root / "class_prompts.json")
