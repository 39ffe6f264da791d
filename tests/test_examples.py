"""The pretraining examples end to end on tiny synthetic sets: both scripts, resume, torchrun, bad input."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("sklearn")

from mgll_examples.cli import compare, main, run  # noqa: E402
from mgll_examples.config import parse_config  # noqa: E402
from mgll_examples.data import ensure_synthetic  # noqa: E402
from mgll_examples.evaluate import METRICS  # noqa: E402
from mgll_examples.pipeline import StepBatches, augment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--synthetic-size", "80", "--batch-size", "16", "--workers", "0", "--checkpoint-every", "2"]


def _script(name: str, *args: str, cwd: Path, extra_env=None, launcher=()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    command = [sys.executable, *launcher, str(ROOT / "examples" / name), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fundus_dir(tmp_path_factory) -> Path:
    """A synthetic fundus set shared by the in-process tests (80 images: 60 train, 20 held out)."""
    return ensure_synthetic("fundus", tmp_path_factory.mktemp("fundus") / "data", num_train=60, num_test=20)


@pytest.mark.parametrize(("script", "loss", "levels"), [("pretrain_fundus.py", "mgll", ["normality", "category", "description"]),
                                                         ("pretrain_xray.py", "clip", ["modality", "study", "series"])])
def test_scripts_train_evaluate_and_write_metrics_plot_and_checkpoint(tmp_path, script, levels, loss):
    result = _script(script, "--synthetic", "--data-dir", "data", "--output-dir", "out", "--max-steps", "3",
                     "--loss", loss, *TINY_RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["loss"] == loss and report["steps"] == 3 and list(report["levels"]) == levels + ["mean"]
    for values in report["levels"].values():
        assert set(values) == set(METRICS)
        assert all(v is None or 0.0 <= v <= 1.0 for v in values.values())
    assert (tmp_path / "out" / "training.png").stat().st_size > 10_000
    state = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert state["step"] == 3 and len(state["history"]) == 3
    assert "zero-shot AUC" in result.stdout and "plot:" in result.stdout
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, fundus_dir):
    flags = ["--data-dir", str(fundus_dir), *TINY_RUN, "--max-steps", "6", "--lr", "3e-3", "--warmup-steps", "2"]
    whole = run(parse_config("fundus", [*flags, "--output-dir", str(tmp_path / "whole")]))
    run(parse_config("fundus", [*flags, "--output-dir", str(tmp_path / "parts"), "--stop-after", "3"]))
    interrupted = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)
    assert interrupted["step"] == 3
    resumed = run(parse_config("fundus", [*flags, "--output-dir", str(tmp_path / "parts"),
                                          "--resume", str(tmp_path / "parts" / "last.pt")]))
    expected = json.loads((tmp_path / "whole" / "history.json").read_text())
    got = json.loads((tmp_path / "parts" / "history.json").read_text())
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(got, expected):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), (a, b)
    for level, values in whole["levels"].items():
        assert resumed["levels"][level] == pytest.approx(values, rel=1e-5, abs=1e-6), level


def test_resume_with_different_flags_is_refused(tmp_path, fundus_dir, capsys):
    flags = ["--data-dir", str(fundus_dir), *TINY_RUN, "--output-dir", str(tmp_path)]
    assert main("fundus", [*flags, "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main("fundus", [*flags, "--max-steps", "2", "--loss", "clip", "--resume", str(tmp_path / "last.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --resume {tmp_path / 'last.pt'}: saved with --loss 'mgll', this run has 'clip'"
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert main("fundus", [*flags, "--resume", str(tmp_path / "broken.pt")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def _fundus_records(tmp_path: Path, records, test=None) -> Path:
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    for record in records + (test or []):
        if "ImageID" in record and not (tmp_path / "images" / f"{record['ImageID']}.npz").exists():
            np.savez(tmp_path / "images" / f"{record['ImageID']}.npz", image=pixels)
    (tmp_path / "train.json").write_text(json.dumps(records))
    (tmp_path / "test.json").write_text(json.dumps(records if test is None else test))
    return tmp_path


def _records(count: int):
    return [{"ImageID": f"im{i}", "Disease": ["Normal, Healthy", "Abnormal, Glaucoma"][i % 2],
             "Description": ["No abnormality observed", "Enlarged optic cup"][i % 2]} for i in range(count)]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda p: ["--data-dir", str(p / "missing")], r"--data-dir .*missing: no such directory"),
        (lambda p: ["--data-dir", str(_fundus_records(p, _records(3)[:2] + [{"ImageID": "x", "Disease": "Normal, Healthy"}]))],
         r"train.json.*\[2\].*Description"),
        (lambda p: ["--data-dir", str(_fundus_records(p, []))], r"train.json: no records"),
        (lambda p: ["--data-dir", str(_fundus_records(p, _records(40))), "--model", "NoSuchNet-B-99"],
         r"--model NoSuchNet-B-99: not an open_clip architecture"),
        (lambda p: ["--data-dir", str(_fundus_records(p, _records(8))), "--batch-size", "16"],
         r"the training split has 8 samples, fewer than one global batch"),
        (lambda p: ["--data-dir", str(_fundus_records(p, _records(40))), "--levels", "normality,grade"],
         r"grade"),
    ],
    ids=["missing-dir", "missing-field", "empty", "unknown-model", "too-small", "unknown-level"],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, make_args, message):
    code = main("fundus", [*make_args(tmp_path), "--workers", "0", "--output-dir", str(tmp_path / "out"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "last.pt").exists()


def test_a_corrupt_image_stops_with_its_name_or_is_skipped_and_counted(tmp_path):
    data = _fundus_records(tmp_path / "data", _records(40))
    (data / "images" / "im7.npz").write_bytes(b"garbage")
    common = ["--data-dir", "data", "--output-dir", "out", "--batch-size", "8", "--max-steps", "5",
              "--checkpoint-every", "1", "--workers", "2"]  # the error must cross from a DataLoader worker
    failed = _script("pretrain_fundus.py", *common, cwd=tmp_path)
    assert failed.returncode == 2, failed.stderr[-2000:]
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: train.json[7]: ") and "im7.npz" in last_line
    assert "Traceback" not in failed.stderr
    if (tmp_path / "out" / "last.pt").exists():  # checkpoints written before the bad batch stay complete
        assert torch.load(tmp_path / "out" / "last.pt", weights_only=True)["step"] >= 1
    assert not list((tmp_path / "out").glob(".*.tmp"))
    skipped = _script("pretrain_fundus.py", *common, "--skip-bad-samples", "--output-dir", "out2", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert json.loads((tmp_path / "out2" / "metrics.json").read_text())["skipped_samples"] == 1
    assert "skipped 1 unreadable sample" in skipped.stdout


def test_torchrun_two_processes_on_cpu(tmp_path):
    result = _script("pretrain_fundus.py", "--synthetic", "--data-dir", "data", "--output-dir", "out", "--max-steps", "2",
                     "--synthetic-size", "80", "--batch-size", "8", "--workers", "0",
                     cwd=tmp_path, launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["steps"] == 2 and "1 process" not in result.stdout and "2 process(es)" in result.stdout
    assert torch.load(tmp_path / "out" / "last.pt", weights_only=True)["world_size"] == 2


def test_step_batches_split_each_global_batch_between_ranks_and_resume_mid_epoch():
    full = list(StepBatches(24, 4, 0, 1, seed=3, steps_per_epoch=6, start=0, stop=12))
    ranks = [list(StepBatches(24, 2, r, 2, seed=3, steps_per_epoch=6, start=0, stop=12)) for r in range(2)]
    for step in range(12):
        assert ranks[0][step] + ranks[1][step] == full[step]
    assert sorted(sum(full[:6], [])) == list(range(24)) and full[6:] != full[:6]  # each epoch a new permutation
    assert list(StepBatches(24, 4, 0, 1, seed=3, steps_per_epoch=6, start=7, stop=12)) == full[7:]


def test_augment_is_reproducible_from_the_generator_state_and_keeps_shapes():
    images = torch.randn(5, 3, 16, 16)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    first = augment(images, generator)
    generator.set_state(state)
    assert torch.equal(first, augment(images, generator)) and first.shape == images.shape
    assert not torch.equal(first, augment(images, generator))


def test_compare_prints_runs_side_by_side(tmp_path, fundus_dir):
    for loss in ("mgll", "clip"):
        run(parse_config("fundus", ["--data-dir", str(fundus_dir), *TINY_RUN, "--max-steps", "1", "--loss", loss,
                                    "--output-dir", str(tmp_path / loss)]))
    text = compare([tmp_path / "mgll", tmp_path / "clip"], tmp_path / "comparison.png")
    assert text.splitlines()[0].startswith("MGLL (1 steps") and "CLIP (1 steps" in text.splitlines()[0]
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
