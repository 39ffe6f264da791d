"""The floors of ``pyproject.toml`` are the versions ``make test-min`` installs and tests
(``tests/min-versions.txt``): raising one without the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)$")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # as pip compares them


def _release(version: str) -> list[int]:
    """``2.9.0`` -> ``[2, 9]``: versions compared without trailing zeros."""
    parts = [int(part) for part in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return parts


def _pins() -> dict[str, str]:
    """``name==version`` lines of tests/min-versions.txt (an environment marker may follow)."""
    pins = {}
    for line in (ROOT / "tests" / "min-versions.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].split(";")[0].strip().partition("==")
        if sep:
            pins[_name(name)] = version.strip()
    return pins


def _declared_floors() -> dict[str, str]:
    """``name>=version`` of the dependencies and of the open_clip, hf and triton extras."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    floors = {}
    for requirement in project["dependencies"] + extras["open_clip"] + extras["hf"] + extras["triton"]:
        match = FLOOR.match(requirement.replace(" ", ""))
        assert match, f"{requirement!r}: expected a plain 'name>=version' floor"
        floors[_name(match[1])] = match[2]
    return floors


def test_min_versions_pin_the_declared_floors():
    pins, floors = _pins(), _declared_floors()
    assert {"torch", "open-clip-torch", "transformers", "accelerate", "triton"} <= floors.keys()
    for name, floor in floors.items():
        assert name in pins, f"tests/min-versions.txt does not pin {name} (pyproject.toml: {name}>={floor})"
        assert _release(pins[name]) == _release(floor), (
            f"{name}: pyproject.toml declares >={floor}, tests/min-versions.txt pins =={pins[name]}"
        )


def test_every_floor_in_pyproject_is_the_same_in_every_extra():
    """An extra that repeats a package (dev, examples, bench) repeats its floor, not an older one."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = _declared_floors()
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", requirement)
            if match and _name(match[1]) in floors:
                assert match[2] == floors[_name(match[1])], (
                    f"[{extra}] {requirement!r}: the floor is {floors[_name(match[1])]}"
                )
