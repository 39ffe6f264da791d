"""Loaders for the record layouts: MGLL-Fundus and MGLL-Xray (the paper's releases) and a generic table.

A fundus or X-ray data dir holds ``train.json`` and ``test.json`` (or ``.jsonl``) and optionally
``class_prompts.json``; an ``ImageID`` is resolved against the dir, then ``<dir>/images/``. A
generic table is a ``.csv``/``.jsonl``/``.json`` train file and test file whose image paths are
relative to the file's folder; its ``class_prompts.json``, if any, lies beside the train file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ExampleError
from .record_files import Record, read_prompts, read_records, require_fields, string_field
from .records import IMAGE_SUFFIXES, Dataset, Level, Sample

__all__ = ["FUNDUS_LEVELS", "XRAY_LEVELS", "load_fundus", "load_xray", "load_table", "resolve_image"]


def _stripped(value: str) -> str:
    return value.strip()


def _disease_parts(disease: str) -> list[str]:
    parts = [part.strip() for part in disease.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"{disease!r} has no comma-separated parts")
    return parts


def _normality(disease: str) -> str:
    return _disease_parts(disease)[0]


def _category(disease: str) -> str:
    parts = _disease_parts(disease)
    if len(parts) < 2:
        raise ValueError(
            f"{disease!r} has no category after {parts[0]!r} (expected '<Normal|Abnormal>, <category>[, ...]')"
        )
    return ", ".join(parts[1:])


@dataclass(frozen=True)
class _LevelSpec:
    """Where a level's caption comes from: a record ``field``, turned into the caption by ``extract``."""

    level: Level
    field: str
    extract: Callable[[str], str] = field(default=_stripped)  # raises ValueError for a bad value


_FUNDUS_SPECS: dict[str, _LevelSpec] = {
    "normality": _LevelSpec(Level("normality", None), "Disease", _normality),
    "category": _LevelSpec(Level("category", ","), "Disease", _category),
    "description": _LevelSpec(Level("description", None), "Description"),
}
_XRAY_SPECS: dict[str, _LevelSpec] = {
    "modality": _LevelSpec(Level("modality", None), "modality"),
    "study": _LevelSpec(Level("study", None), "study_description_0"),
    "series": _LevelSpec(Level("series", None), "series_description"),
}
FUNDUS_LEVELS: tuple[str, ...] = tuple(_FUNDUS_SPECS)
XRAY_LEVELS: tuple[str, ...] = tuple(_XRAY_SPECS)


def resolve_image(image_id: str, folders: Sequence[Path]) -> Path:
    """The first existing file ``folder/image_id`` (trying :data:`IMAGE_SUFFIXES` when it has none of
    them) over ``folders``; ``folders[0]/image_id`` when none exists, for the loader to report."""
    for folder in folders:
        path = folder / image_id
        if path.is_file():
            return path
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            for suffix in IMAGE_SUFFIXES:
                candidate = path.with_name(path.name + suffix)
                if candidate.is_file():
                    return candidate
    return folders[0] / image_id


def _select(specs: Mapping[str, _LevelSpec], names: Sequence[str], kind: str) -> tuple[_LevelSpec, ...]:
    valid = ", ".join(specs)
    if not names:
        raise ExampleError(f"no {kind} levels given; valid levels: {valid}")
    for index, name in enumerate(names):
        if name not in specs:
            raise ExampleError(f"unknown {kind} level {name!r}; valid levels: {valid}")
        if name in names[:index]:
            raise ExampleError(f"{kind} level {name!r} given twice")
    return tuple(specs[name] for name in names)


def _caption(record: Record, spec: _LevelSpec, where: str) -> str:
    value = string_field(record, spec.field, where)
    try:
        caption = spec.extract(value)
    except ValueError as error:
        raise ExampleError(f"{where}: field {spec.field!r}: {error}") from None
    if not spec.level.labels(caption):
        raise ExampleError(
            f"{where}: field {spec.field!r} has no class names between the {spec.level.separator!r} separators"
        )
    return caption


#: ``locate(image_id, where)``: the image file of a record's ``ImageID`` (``where`` prefixes errors).
ImageLocator = Callable[[str, str], Path]


def _samples(
    records: Sequence[Record],
    path: Path,
    name: str,
    specs: Sequence[_LevelSpec],
    image_field: str,
    locate: ImageLocator,
) -> list[Sample]:
    """The samples of ``records`` read from ``path``; record ``i`` is called ``name[i]`` in ``Sample.source``."""
    samples = []
    for index, record in enumerate(records):
        where = f"{path}[{index}]"
        image = locate(string_field(record, image_field, where).strip(), where)
        texts = tuple(_caption(record, spec, where) for spec in specs)
        samples.append(Sample(image=image, texts=texts, source=f"{name}[{index}]"))
    return samples


def _read_samples(
    path: Path,
    specs: Sequence[_LevelSpec],
    image_field: str,
    folders: Sequence[Path],
    flags: Mapping[str, str] | None = None,
) -> list[Sample]:
    """The samples of one record file; a field no record has is named with the file's fields (and ``flags[field]``)."""
    records = read_records(path)
    require_fields(path, records, [image_field, *(spec.field for spec in specs)], flags or {})
    return _samples(records, path, path.name, specs, image_field, lambda image_id, _: resolve_image(image_id, folders))


def _dataset(specs: Sequence[_LevelSpec], train: list[Sample], test: list[Sample], prompts_file: Path) -> Dataset:
    """The split pair, with a prompt for every class: the file's, else the class name itself."""
    dataset = Dataset(levels=tuple(spec.level for spec in specs), train=train, test=test, prompts={})
    given = read_prompts(prompts_file)
    dataset.prompts = {
        level.name: {name: given.get(level.name, {}).get(name, name) for name in dataset.classes(index)}
        for index, level in enumerate(dataset.levels)
    }
    return dataset


def _split_file(data_dir: Path, split: str) -> Path:
    for suffix in (".json", ".jsonl"):
        path = data_dir / f"{split}{suffix}"
        if path.is_file():
            return path
    raise ExampleError(f"{data_dir}: no {split}.json or {split}.jsonl")


def _load_dir(data_dir: Path, specs: Mapping[str, _LevelSpec], levels: Sequence[str], kind: str) -> Dataset:
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise ExampleError(f"--data-dir {data_dir}: no such directory")
    if not data_dir.is_dir():
        raise ExampleError(f"--data-dir {data_dir}: not a directory")
    selected = _select(specs, tuple(levels), kind)
    folders = (data_dir, data_dir / "images")
    train = _read_samples(_split_file(data_dir, "train"), selected, "ImageID", folders)
    test = _read_samples(_split_file(data_dir, "test"), selected, "ImageID", folders)
    return _dataset(selected, train, test, data_dir / "class_prompts.json")


def load_fundus(data_dir: Path, levels: Sequence[str] = FUNDUS_LEVELS) -> Dataset:
    """An MGLL-Fundus data dir: records ``{"ImageID", "Disease", "Description"}``.

    ``normality`` is the first comma part of ``Disease``, ``category`` the rest (multi-label, ``","``),
    ``description`` the ``Description``.
    """
    return _load_dir(data_dir, _FUNDUS_SPECS, levels, "fundus")


def load_xray(data_dir: Path, levels: Sequence[str] = XRAY_LEVELS) -> Dataset:
    """An MGLL-Xray data dir: records ``{"ImageID", "modality", "study_description_0", "series_description"}``,
    read as the levels ``modality``, ``study`` and ``series``."""
    return _load_dir(data_dir, _XRAY_SPECS, levels, "xray")


def _table_spec(column: str, separator: str | None) -> _LevelSpec:
    """A table column's level; a multi-label cell becomes its label set in a canonical form (the class
    names with whitespace runs made single spaces, de-duplicated, sorted, joined by ``separator``), so
    ``"Effusion|Cardiomegaly"`` and ``"Cardiomegaly| Effusion"`` are one caption and one label set."""
    level = Level(column, separator)
    if separator is None:
        return _LevelSpec(level, column)

    def label_set(value: str) -> str:
        return separator.join(sorted({" ".join(label.split()) for label in level.labels(value)}))

    return _LevelSpec(level, column, label_set)


def load_table(
    train_file: Path,
    test_file: Path,
    image_column: str,
    text_columns: Sequence[str],
    separators: dict[str, str] | None = None,
) -> Dataset:
    """A generic table: one level per text column, named after it; ``separators[column]`` makes that
    column multi-label (e.g. ``{"Finding Labels": "|"}`` for NIH ChestX-ray14's ``Data_Entry_2017.csv``),
    its captions canonical label sets (see :func:`_table_spec`). A column no record has is an error that
    lists the file's columns."""
    columns = tuple(text_columns)
    separators = dict(separators or {})
    if not columns:
        raise ExampleError("no text columns given")
    for index, column in enumerate(columns):
        if column in columns[:index]:
            raise ExampleError(f"text column {column!r} given twice")
        if column == image_column:
            raise ExampleError(f"column {column!r} is both the image column and a text column")
    for column, separator in separators.items():
        if column not in columns:
            raise ExampleError(f"separator given for {column!r}, which is not a text column ({', '.join(columns)})")
        if not separator:
            raise ExampleError(f"empty separator for text column {column!r}")
    specs = tuple(_table_spec(column, separators.get(column)) for column in columns)
    train_file, test_file = Path(train_file), Path(test_file)
    flags = {image_column: "--image-column", **{column: "--text-columns" for column in columns}}
    train = _read_samples(train_file, specs, image_column, (train_file.parent,), flags)
    test = _read_samples(test_file, specs, image_column, (test_file.parent,), flags)
    return _dataset(specs, train, test, train_file.parent / "class_prompts.json")
