"""The package imports with torch alone, and the README's code runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mgll_loss

ROOT = Path(__file__).resolve().parents[1]

OPTIONAL_FRAMEWORKS = ("open_clip", "transformers", "triton")

USE_WITH_TORCH_ALONE = """
import sys
import torch
import mgll_loss
from mgll_loss import MGLLLoss, PointwiseLoss, SmoothKLLoss, SoftCLIPLoss, functional, targets, utils
images = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
texts = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
MGLLLoss()(images, texts, 10.0, labels=[torch.tensor([0, 0, 1, 1]), None, None]).item()
SoftCLIPLoss()(images, texts[0], 10.0).item()
PointwiseLoss()(images, texts[0], 10.0, -5.0).item()
SmoothKLLoss()(images, texts, 10.0).item()
from mgll_loss.adapters import hf, open_clip as open_clip_adapter  # the adapters import their framework lazily
from mgll_loss import export  # so does the vision-tower export
builds = (
    (lambda: open_clip_adapter.MultiGranularOpenCLIP(None), "open_clip"),
    (lambda: hf.MGLLTrainer, "hf"),
    (lambda: export.export_vision_tower(None, "tower", preprocessing=None), "hf"),
    (lambda: export.ImagePreprocessing.from_open_clip(None), "open_clip"),
)
for build, extra in builds:
    try:
        build()
    except ImportError as error:
        assert f'pip install "mgll-loss[{extra}]"' in str(error), error
    else:
        raise AssertionError("no ImportError without the framework")
for name in ("open_clip", "transformers", "triton"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise AssertionError(name + " was importable: the test did not block it")
print("ok")
"""


def test_import_works_without_optional_frameworks(tmp_path):
    # Shadow each optional framework with a package whose import fails, as if it were not installed.
    for name in OPTIONAL_FRAMEWORKS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed (blocked by the test)')"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-c", USE_WITH_TORCH_ALONE], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_version_is_set():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", mgll_loss.__version__)


def test_py_typed_is_shipped():
    assert (Path(mgll_loss.__file__).parent / "py.typed").is_file()


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no python code blocks"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


def test_the_sdist_holds_the_examples_and_the_wheel_only_the_library(tmp_path):
    """The examples run from a clone or the sdist (docs/examples.md); the wheel's only package is mgll_loss."""
    setup = [sys.executable, "-c", "from setuptools import setup; setup()", "egg_info", "--egg-base", str(tmp_path)]
    result = subprocess.run(setup, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    sources = set((tmp_path / "mgll_loss.egg-info" / "SOURCES.txt").read_text().split())
    examples = {path.relative_to(ROOT).as_posix() for path in (ROOT / "examples").rglob("*.py")}
    assert {"examples/pretrain_fundus.py", "examples/pretrain_xray.py", "examples/mgll_examples/cli.py"} <= examples
    assert examples | {"conftest.py", "tests/test_examples.py"} <= sources
    assert (tmp_path / "mgll_loss.egg-info" / "top_level.txt").read_text().split() == ["mgll_loss"]
