"""The benchmark entry point runs end to end (tiny sizes) and writes its CSV and plots.

Its baselines compute the loss.
"""

from __future__ import annotations

import csv
import subprocess

import pytest
import torch

from benchmarks import baselines, compare, operators, run
from mgll_loss import MGLLLoss


def test_quick_preset_writes_csv_and_plots(tmp_path, monkeypatch):
    preset = run.Preset(
        ((16, 8, 3), (12, 8, 2)), (16,), 8, ("naive", "gemms", "auto", "batched", "dense", "chunked"), repeats=2
    )
    monkeypatch.setitem(run.PRESETS, "quick", preset)
    run.main(["--preset", "quick", "--device", "cpu", "--out", str(tmp_path)])
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == run.FIELDS
    timed = {r["backend"] for r in rows if r["peak_mb"] == ""}
    measured = {r["backend"] for r in rows if r["peak_mb"] != ""}
    assert timed == {"naive", "gemms", "auto", "batched", "dense", "chunked"}
    assert measured == {"naive", "auto", "batched", "dense", "chunked"}
    assert {(r["B"], r["G"]) for r in rows if r["peak_mb"] == ""} == {("16", "3"), ("12", "2")}
    assert all(int(r["ops"]) > 0 for r in rows if r["peak_mb"] == "")
    assert all(float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"]) for r in rows)
    assert (tmp_path / "time.png").stat().st_size > 0 and (tmp_path / "memory.png").stat().st_size > 0


def test_naive_baseline_is_the_mgll_loss():
    images, texts, scale, labels = run.make_inputs(24, 8, 3, "cpu", torch.float64)
    labels[1] = None
    want = MGLLLoss()(images, texts, scale, labels=labels)
    torch.testing.assert_close(baselines.naive_mgll(labels)(images, texts, scale), want, rtol=1e-5, atol=1e-6)


def test_operators_table_runs_and_finds_no_host_reads(capsys):
    operators.main(["--batches", "16", "--chunk-size", "4"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0].strip() for row in rows] == list(operators.BACKENDS)
    assert all(int(row[2]) > 0 and int(row[3]) > 0 and row[4].strip() == "none" for row in rows)


def test_compare_against_a_revision_runs(capsys):
    if subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("needs a git checkout")
    compare.main(["--against", "HEAD", "--batches", "8", "--dim", "8", "--rounds", "2", "--baselines", "clip"])
    out = capsys.readouterr().out
    assert out.startswith("B=8: this ") and "this / HEAD:" in out and "this / clip:" in out
