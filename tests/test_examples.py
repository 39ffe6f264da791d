"""The pretraining examples end to end on tiny synthetic sets: both scripts, resume, torchrun, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("sklearn")

import compare_runs  # noqa: E402

from mgll_examples.cli import compare, main, run  # noqa: E402
from mgll_examples.config import build_parser, parse_config  # noqa: E402
from mgll_examples.data import ensure_synthetic  # noqa: E402
from mgll_examples.evaluate import METRICS  # noqa: E402
from mgll_examples.pipeline import StepBatches, augment, level_labels, load_dataset  # noqa: E402
from mgll_examples.train import learning_rate  # noqa: E402

from .example_layouts import NIH_CLASSES, write_authors_fundus, write_authors_midrc, write_nih_table  # noqa: E402

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


@pytest.mark.parametrize(
    ("script", "loss", "levels"),
    [
        ("pretrain_fundus.py", "mgll", ["normality", "category", "description"]),
        ("pretrain_xray.py", "clip", ["modality", "study", "series"]),
    ],
)
def test_scripts_train_evaluate_and_write_metrics_plot_and_checkpoint(tmp_path, script, levels, loss):
    result = _script(
        script,
        "--synthetic",
        "--data-dir",
        "data",
        "--output-dir",
        "out",
        "--max-steps",
        "3",
        "--loss",
        loss,
        *TINY_RUN,
        cwd=tmp_path,
    )
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
    resumed = run(
        parse_config(
            "fundus", [*flags, "--output-dir", str(tmp_path / "parts"), "--resume", str(tmp_path / "parts" / "last.pt")]
        )
    )
    expected = json.loads((tmp_path / "whole" / "history.json").read_text())
    got = json.loads((tmp_path / "parts" / "history.json").read_text())
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), (a, b)
    for level, values in whole["levels"].items():
        assert resumed["levels"][level] == pytest.approx(values, rel=1e-5, abs=1e-6), level


def test_resume_with_different_flags_is_refused(tmp_path, fundus_dir, capsys):
    flags = ["--data-dir", str(fundus_dir), *TINY_RUN, "--output-dir", str(tmp_path)]
    assert main("fundus", [*flags, "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main("fundus", [*flags, "--max-steps", "2", "--loss", "clip", "--resume", str(tmp_path / "last.pt")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: --resume {tmp_path / 'last.pt'}: saved with --loss 'mgll', this run has 'clip'"
    )
    checkpoint = str(tmp_path / "last.pt")
    assert main("fundus", [*flags, "--max-steps", "2", "--batch-size", "8", "--resume", checkpoint]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --resume {checkpoint}: saved with --batch-size 16, this run has 8"
    )
    assert main("fundus", [*flags, "--max-steps", "2", "--levels", "normality", "--resume", checkpoint]) == 2
    assert "saved with --levels None, this run has ['normality']" in capsys.readouterr().err
    copy = shutil.copytree(fundus_dir, tmp_path / "copy")  # the same records in another --data-dir
    assert main("fundus", [*flags, "--max-steps", "3", "--data-dir", str(copy), "--resume", checkpoint]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --resume {checkpoint}: made from --data-dir {str(fundus_dir.resolve())!r}, "
        f"this run has {str(copy.resolve())!r}"
    )
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    broken = str(tmp_path / "broken.pt")
    assert main("fundus", [*flags, "--output-dir", str(tmp_path / "other"), "--resume", broken]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main("fundus", [*flags, "--resume", broken]) == 2  # would overwrite last.pt
    assert capsys.readouterr().err.startswith(f"error: --output-dir {tmp_path}: holds the checkpoint of another run")


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
    return [
        {
            "ImageID": f"im{i}",
            "Disease": ["Normal, Healthy", "Abnormal, Glaucoma"][i % 2],
            "Description": ["No abnormality observed", "Enlarged optic cup"][i % 2],
        }
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda p: ["--data-dir", str(p / "missing")], r"--data-dir .*missing: no such directory"),
        (
            lambda p: [
                "--data-dir",
                str(_fundus_records(p, _records(3)[:2] + [{"ImageID": "x", "Disease": "Normal, Healthy"}])),
            ],
            r"train.json.*\[2\].*Description",
        ),
        (lambda p: ["--data-dir", str(_fundus_records(p, []))], r"train.json: no records"),
        (
            lambda p: ["--data-dir", str(_fundus_records(p, _records(40))), "--model", "NoSuchNet-B-99"],
            r"--model NoSuchNet-B-99: not an open_clip architecture",
        ),
        (
            lambda p: ["--data-dir", str(_fundus_records(p, _records(8))), "--batch-size", "16"],
            r"the training split has 8 samples, fewer than one global batch",
        ),
        (lambda p: ["--data-dir", str(_fundus_records(p, _records(40))), "--levels", "normality,grade"], r"grade"),
    ],
    ids=["missing-dir", "missing-field", "empty", "unknown-model", "too-small", "unknown-level"],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, make_args, message):
    code = main(
        "fundus", [*make_args(tmp_path), "--workers", "0", "--output-dir", str(tmp_path / "out"), "--max-steps", "1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "last.pt").exists()


def test_a_corrupt_image_stops_with_its_name_or_is_skipped_and_counted(tmp_path):
    data = _fundus_records(tmp_path / "data", _records(40))
    (data / "images" / "im7.npz").write_bytes(b"garbage")
    common = [
        "--data-dir",
        "data",
        "--output-dir",
        "out",
        "--batch-size",
        "8",
        "--max-steps",
        "5",
        "--checkpoint-every",
        "1",
        "--workers",
        "2",
    ]  # the error must cross from a DataLoader worker
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
    result = _script(
        "pretrain_fundus.py",
        "--synthetic",
        "--data-dir",
        "data",
        "--output-dir",
        "out",
        "--max-steps",
        "2",
        "--synthetic-size",
        "80",
        "--batch-size",
        "8",
        "--workers",
        "0",
        cwd=tmp_path,
        launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
    )
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


def test_compare_prints_runs_side_by_side(tmp_path, fundus_dir, monkeypatch, capsys):
    for loss in ("mgll", "clip"):
        run(
            parse_config(
                "fundus",
                [
                    "--data-dir",
                    str(fundus_dir),
                    *TINY_RUN,
                    "--max-steps",
                    "1",
                    "--loss",
                    loss,
                    "--output-dir",
                    str(tmp_path / loss),
                ],
            )
        )
    text = compare([tmp_path / "mgll", tmp_path / "clip"], tmp_path / "comparison.png")
    assert text.splitlines()[0].startswith("MGLL (1 steps") and "CLIP (1 steps" in text.splitlines()[0]
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    monkeypatch.setattr(sys, "argv", ["compare_runs.py", str(tmp_path / "mgll"), str(tmp_path / "clip")])
    capsys.readouterr()
    assert compare_runs.main() == 0  # without --plot: the tables only
    assert capsys.readouterr().out == text.rsplit("\nplot:", 1)[0] + "\n"
    twice = compare([tmp_path / "mgll", tmp_path / "mgll"])  # one loss twice: both tables
    assert twice.startswith("MGLL (1 steps") and f"MGLL {tmp_path / 'mgll'} (1 steps" in twice


# --- the data people have, and runs that are extended, not overwritten ----------------------------

NIH_FLAGS = [
    "--image-column",
    "Image Index",
    "--text-columns",
    "Finding Labels,View Position",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--max-steps",
    "1",
]


def test_nih_table_trains_with_its_findings_as_multi_label(tmp_path, capsys):
    files = write_nih_table(tmp_path / "nih", rows=24, test_rows=8)
    (tmp_path / "nih" / "00000005_000.png").unlink()  # left out when the records are loaded, and counted
    flags = [
        "--train-file",
        str(files["train"]),
        "--test-file",
        str(files["test"]),
        *NIH_FLAGS,
        "--multi-label",
        "Finding Labels=|",
        "--skip-bad-samples",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    config = parse_config("xray", flags)
    assert config.multi_label == {"Finding Labels": "|"}
    dataset = load_dataset(config)
    assert dataset.classes(0) == NIH_CLASSES  # 8 classes: the 7 findings and "No Finding", either order one set
    labels = level_labels(dataset, dataset.train)
    assert labels[0].dtype == torch.bool and labels[0].shape == (23, 8) and labels[1].dtype == torch.int64
    assert torch.equal(labels[0][0], labels[0][1])  # "Cardiomegaly|Effusion" and "Effusion|Cardiomegaly"
    report = run(config)
    assert list(report["levels"]) == ["Finding Labels", "View Position", "mean"]
    assert report["missing_images"] == 1 and report["skipped_samples"] == 0
    assert "left out 1 sample(s) whose image file does not exist" in capsys.readouterr().out
    saved = torch.load(tmp_path / "out" / "last.pt", weights_only=True)["config"]
    assert saved["multi_label"] == {"Finding Labels": "|"}


def test_authors_layouts_train_from_their_list_files(tmp_path, capsys):
    fundus = write_authors_fundus(tmp_path / "MGLL-Fundus", per_file=8)
    assert (
        main(
            "fundus",
            [
                "--data-dir",
                str(fundus),
                "--json-list",
                "2level_multi_disease_list",
                "--batch-size",
                "8",
                "--workers",
                "0",
                "--max-steps",
                "1",
                "--output-dir",
                str(tmp_path / "fundus"),
            ],
        )
        == 0
    )
    assert "fundus: 16 train / 4 held-out images, levels: normality, category, description" in capsys.readouterr().out
    report = json.loads((tmp_path / "fundus" / "metrics.json").read_text())
    assert report["steps"] == 1 and list(report["levels"]) == ["normality", "category", "description", "mean"]
    midrc = write_authors_midrc(tmp_path / "MIDRC", tmp_path / "dicom-npz", per_file=8)
    dataset = load_dataset(parse_config("xray", ["--data-dir", str(midrc), "--json-list", "MIDRC_list"]))
    assert (len(dataset.train), len(dataset.test)) == (8, 4) and dataset.missing_images == 0
    assert [level.name for level in dataset.levels] == ["modality", "study", "series"]


def test_help_shows_the_default_image_column():
    assert "the image path column (default: image)" in " ".join(build_parser("xray").format_help().split())


def _table_args(p: Path, image_column: str = "Image Index"):
    files = write_nih_table(p / "nih", rows=8, test_rows=2)
    return [
        "--train-file",
        str(files["train"]),
        "--test-file",
        str(files["test"]),
        "--image-column",
        image_column,
        "--text-columns",
        "Finding Labels",
        "--multi-label",
        "Finding Labels=|",
    ]


def _missing_images(p: Path):
    data = _fundus_records(p, _records(40))
    for name in ("im3", "im5", "im8"):
        (data / "images" / f"{name}.npz").unlink()
    return ["--data-dir", str(data)]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda p: _table_args(p, "image"),
            r"train\.csv: no column 'image' \(--image-column\); the file has: 'Image Index', 'Finding Labels', ",
        ),
        (
            lambda p: _table_args(p)[:-1] + ["Finding Label=|"],
            r"separator given for 'Finding Label', which is not a text column",
        ),
        (
            lambda p: ["--data-dir", str(_fundus_records(p, _records(4))), "--multi-label", "Disease=,"],
            r"--multi-label: only for the generic table format",
        ),
        (
            lambda p: _table_args(p) + ["--multi-label", "Finding Labels=;"],
            r"--multi-label: column 'Finding Labels' given twice",
        ),
        (
            lambda p: ["--data-dir", str(write_authors_fundus(p, per_file=2)), "--json-list", "MIDRC_list"],
            r"--json-list MIDRC_list: .*MIDRC_list_train\.txt: no such file "
            r"\(list names in .*: 2level_multi_disease_list",
        ),
        (
            lambda p: ["--synthetic", "--data-dir", str(p / "synthetic"), "--json-list", "x"],
            r"--json-list: .* not with --synthetic",
        ),
        (
            _missing_images,
            r"^error: 6 of 80 image files do not exist: train\.json\[3\]: .*im3, train\.json\[5\]: "
            r".*im5, train\.json\[8\]: .*im8 and 3 more \(--skip-bad-samples leaves them out\)$",
        ),
    ],
    ids=[
        "wrong-image-column",
        "multi-label-not-a-text-column",
        "multi-label-not-a-table",
        "multi-label-twice",
        "unknown-json-list",
        "json-list-synthetic",
        "missing-images",
    ],
)
def test_bad_layout_input_is_one_clear_line(tmp_path, capsys, make_args, message):
    test_bad_input_is_one_clear_line(tmp_path, capsys, make_args, message)


def test_multi_label_flag_needs_a_separator(capsys):
    with pytest.raises(SystemExit):
        parse_config("xray", ["--multi-label", "Finding Labels"])
    assert "expected COLUMN=SEPARATOR, e.g. 'Finding Labels=|', got 'Finding Labels'" in capsys.readouterr().err


def test_a_finished_run_is_extended_never_overwritten_or_silently_rewritten(tmp_path, fundus_dir, capsys):
    out = tmp_path / "run"
    flags = ["--data-dir", str(fundus_dir), *TINY_RUN, "--warmup-steps", "1", "--output-dir", str(out)]
    checkpoint = str(out / "last.pt")
    assert main("fundus", [*flags, "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main("fundus", [*flags, "--max-steps", "1"]) == 2  # a new run into the same directory
    assert capsys.readouterr().err.strip() == (
        f"error: --output-dir {out}: holds the checkpoint of another run ({checkpoint}); continue it with --resume "
        f"{checkpoint}, replace it with --overwrite, or pick another --output-dir"
    )

    assert main("fundus", [*flags, "--max-steps", "2", "--resume", checkpoint]) == 0  # a longer schedule
    assert (
        "resuming at step 1 with --epochs 10 --max-steps 2 (saved with --epochs 10 --max-steps 1): "
        "the learning-rate schedule is rebuilt for 2 steps from step 1"
    ) in capsys.readouterr().out
    history = torch.load(checkpoint, weights_only=True)["history"]
    assert [r["step"] for r in history] == [1, 2]
    assert history[1]["lr"] == pytest.approx(learning_rate(1, parse_config("fundus", [*flags, "--max-steps", "2"]), 2))
    metrics = (out / "metrics.json").read_bytes()
    assert json.loads(metrics)["steps"] == 2

    assert main("fundus", [*flags, "--max-steps", "2", "--resume", checkpoint]) == 2  # the same flags again
    assert capsys.readouterr().err.strip() == (
        f"error: --resume {checkpoint}: the run has finished (step 2 of 2): nothing left to train; "
        "pass a longer --max-steps or --epochs to train it further"
    )
    assert main("fundus", [*flags, "--max-steps", "1", "--resume", checkpoint]) == 2
    assert "checkpoint is at step 2, the schedule of --epochs 10 --max-steps 1 has 1 steps" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == metrics

    assert main("fundus", [*flags, "--epochs", "1", "--resume", checkpoint]) == 0  # 60 images / 16: 3 steps per epoch
    assert (
        "resuming at step 2 with --epochs 1 (saved with --epochs 10 --max-steps 2): the learning-rate schedule "
        "is rebuilt for 3 steps from step 2"
    ) in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3

    assert main("fundus", [*flags, "--max-steps", "1", "--overwrite"]) == 0  # replaced, on purpose
    assert torch.load(checkpoint, weights_only=True)["step"] == 1
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--lr", "-1", "finite positive"),
        ("--lr", "nan", "finite number"),
        ("--weight-decay", "-1", "non-negative"),
        ("--warmup-steps", "-5", "non-negative whole number"),
        ("--grad-clip", "-1", "non-negative"),
        ("--init-logit-bias", "nan", "finite number"),
        ("--level-weights", "1,x,2", "expected a number, got 'x'"),
    ],
)
def test_bad_flag_values_are_refused_by_the_parser(capsys, flag, value, message):
    with pytest.raises(SystemExit) as stop:
        main("fundus", ["--synthetic", flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: expected" in err and message in err, err
    assert "invalid _" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda: ["--backend", "triton", "--device", "cpu"], r"--backend triton: runs on CUDA devices only"),
        (lambda: ["--device", "cuda"], r"--device cuda: no CUDA device is available here"),
        (lambda: ["--device", "gpu0"], r"--device gpu0: not a device name"),
    ],
    ids=["triton-on-cpu", "cuda-missing", "bad-device"],
)
def test_a_device_or_backend_this_machine_lacks_is_one_clear_line(tmp_path, capsys, monkeypatch, make_args, message):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # conftest sets it for the kernel tests
    data = _fundus_records(tmp_path, _records(16))
    code = main(
        "fundus",
        [
            *("--data-dir", str(data), "--batch-size", "8", "--workers", "0"),
            *("--output-dir", str(tmp_path / "out"), "--max-steps", "1", *make_args()),
        ],
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
