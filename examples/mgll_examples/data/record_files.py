"""Reading record files (a JSON list, JSON lines, or CSV) into dicts, with one-line errors.

Every problem raises :class:`ExampleError` naming the file, and the record index and field where
there is one; record ``i`` of ``train.json`` is called ``train.json[i]``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ExampleError

__all__ = ["RECORD_SUFFIXES", "read_records", "require_fields", "string_field", "read_prompts"]

RECORD_SUFFIXES = (".json", ".jsonl", ".csv")

Record = dict[str, Any]


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ExampleError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ExampleError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ExampleError(f"{path}: cannot read ({error.strerror or error})") from None


def _parse_json(path: Path, text: str, where: str = "") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        position = where or f"line {error.lineno} column {error.colno}"
        raise ExampleError(f"{path}: invalid JSON at {position}: {error.msg}") from None


def _json_list(path: Path, text: str) -> list[Any]:
    data = _parse_json(path, text)
    if not isinstance(data, list):
        raise ExampleError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _json_lines(path: Path, text: str) -> list[Any]:
    return [
        _parse_json(path, line, where=f"line {number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def _csv_rows(path: Path, text: str) -> list[Record]:
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise ExampleError(f"{path}: invalid CSV ({error})") from None
    # A short row leaves its last columns None: drop them so they read as missing fields.
    return [{key: value for key, value in row.items() if key is not None and value is not None} for row in rows]


def read_records(path: Path) -> list[Record]:
    """The records of a ``.json`` (list of objects), ``.jsonl`` or ``.csv`` file; at least one."""
    readers = {".json": _json_list, ".jsonl": _json_lines, ".csv": _csv_rows}
    suffix = path.suffix.lower()
    if suffix not in readers:
        expected = ", ".join(RECORD_SUFFIXES)
        raise ExampleError(f"{path}: unsupported record file type {suffix or '(none)'!r}, expected one of {expected}")
    records = readers[suffix](path, _read_text(path))
    if not records:
        raise ExampleError(f"{path}: no records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ExampleError(f"{path}[{index}]: expected an object, got {type(record).__name__}")
    return records


def require_fields(path: Path, records: Sequence[Record], fields: Sequence[str], flags: Mapping[str, str]) -> None:
    """Raise when one of ``fields`` is in no record of ``path``, naming the flag that asked for it
    (``flags[field]``, if any) and listing the fields (columns) the file does have, in file order."""
    present = dict.fromkeys(key for record in records for key in record)
    for field in fields:
        if field not in present:
            noun = "column" if path.suffix.lower() == ".csv" else "field"
            flag = f" ({flags[field]})" if field in flags else ""
            raise ExampleError(f"{path}: no {noun} {field!r}{flag}; the file has: {', '.join(map(repr, present))}")


def string_field(record: Record, field: str, where: str) -> str:
    """``record[field]`` as a non-blank string; ``where`` (e.g. ``"train.json[3]"``) prefixes errors."""
    if field not in record:
        raise ExampleError(f"{where}: missing field {field!r}")
    value = record[field]
    if not isinstance(value, str):
        raise ExampleError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise ExampleError(f"{where}: field {field!r} is empty")
    return value


def read_prompts(path: Path) -> dict[str, dict[str, str]]:
    """A ``class_prompts.json`` file, ``{level name: {class name: prompt}}``; empty if there is none."""
    if not path.exists():
        return {}
    data = _parse_json(path, _read_text(path))
    if not isinstance(data, dict):
        raise ExampleError(f"{path}: expected an object {{level: {{class: prompt}}}}, got {type(data).__name__}")
    for level, prompts in data.items():
        if not isinstance(prompts, dict):
            raise ExampleError(
                f"{path}: level {level!r}: expected an object {{class: prompt}}, got {type(prompts).__name__}"
            )
        for name, prompt in prompts.items():
            if not isinstance(prompt, str):
                kind = type(prompt).__name__
                raise ExampleError(f"{path}: level {level!r}, class {name!r}: prompt is {kind}, expected a string")
    return data
