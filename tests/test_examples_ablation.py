"""The loss ablation (``examples/ablation.py``): configurations, seeds, reuse, and the mean ± std table."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open_clip")
pytest.importorskip("sklearn")

from mgll_examples.ablation import COLUMNS, main, parse_seeds
from mgll_examples.data import ensure_synthetic

TINY_RUN = ["--synthetic-size", "80", "--batch-size", "16", "--workers", "0", "--max-steps", "2"]
HEADERS = [header for _, header in COLUMNS]


@pytest.fixture(scope="module")
def fundus_dir(tmp_path_factory) -> Path:
    return ensure_synthetic("fundus", tmp_path_factory.mktemp("fundus") / "data", num_train=60, num_test=20)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_ablation_trains_each_configuration_tabulates_and_reuses_finished_runs(tmp_path, fundus_dir, capsys):
    """One seed (``--seed``, default 0), as before --seeds: runs in <output-dir>/<key>, std left empty."""
    flags = [
        "--data-dir",
        str(fundus_dir),
        *TINY_RUN,
        "--output-dir",
        str(tmp_path),
        "--configs",
        "clip,mgll-missing30",
    ]
    assert main(flags) == 0
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert table[0].startswith("| configuration | seeds | linear-probe AUC |") and len(table) == 4
    assert table[2].startswith("| CLIP (joined captions) | 1 | 0.") and table[3].startswith(
        "| MGLL, 30% texts missing |"
    )
    assert "±" not in "".join(table)
    report = json.loads((tmp_path / "mgll-missing30" / "metrics.json").read_text())
    assert report["drop_texts"] == 0.3 and report["config"]["seed"] == 0
    rows = _rows(tmp_path / "ablation.csv")
    assert len(rows) == 2 and rows[0]["seeds"] == "0" and rows[0]["linear-probe AUC std"] == ""
    assert rows[0]["linear-probe AUC n"] == "1" and (tmp_path / "ablation.png").is_file()
    capsys.readouterr()
    assert main(flags) == 0
    assert capsys.readouterr().out.count("reusing its metrics") == 2
    assert main([*flags[:-1], "clip", "--lr", "0.5"]) == 2
    assert "holds a run with other flags" in capsys.readouterr().err
    assert main([*flags[:-1], "clip", "--seed", "3"]) == 2  # --seed still picks the seed of a one-seed ablation


def test_seeds_train_each_configuration_per_seed_and_tabulate_mean_and_std(tmp_path, capsys):
    seeds, keys = [3, 5, 8], ["clip", "sclip"]
    flags = ["--synthetic", *TINY_RUN, "--output-dir", str(tmp_path), "--configs", ",".join(keys)]
    assert main([*flags, "--seeds", "3,5,8"]) == 0
    metrics = {}
    for key in keys:
        for seed in seeds:
            report = json.loads((tmp_path / f"seed-{seed}" / key / "metrics.json").read_text())
            # each seed trains on its own synthetic set, written with that seed
            assert report["config"]["seed"] == seed
            assert report["config"]["data_dir"] == str(tmp_path / f"seed-{seed}" / "synthetic-fundus")
            metrics[key, seed] = [report["levels"]["mean"][name] for name, _ in COLUMNS]
    assert not (tmp_path / "clip").exists()
    assert metrics["sclip", 3] != metrics["sclip", 5]  # another seed, another run

    labels = {"clip": "CLIP (joined captions)", "sclip": "L_sCLIP only"}
    rows = {row["configuration"]: row for row in _rows(tmp_path / "ablation.csv")}
    columns = ["configuration", "seeds"] + [f"{h} {part}" for h in HEADERS for part in ("mean", "std", "n")]
    assert list(next(iter(rows.values()))) == columns and list(rows) == list(labels.values())
    per_seed = _rows(tmp_path / "ablation_seeds.csv")
    assert [(row["configuration"], int(row["seed"])) for row in per_seed] == [
        (labels[key], seed) for key in keys for seed in seeds
    ]
    table = {
        line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in (tmp_path / "ablation.md").read_text().splitlines()
    }
    for key in keys:
        values = np.array([metrics[key, seed] for seed in seeds])  # [seeds, columns]
        mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
        row = rows[labels[key]]
        assert row["seeds"] == "3 5 8"
        for k, header in enumerate(HEADERS):
            assert float(row[f"{header} mean"]) == pytest.approx(mean[k], abs=1e-6)
            assert float(row[f"{header} std"]) == pytest.approx(std[k], abs=1e-6)
            assert row[f"{header} n"] == "3"
            assert table[labels[key]][1 + k].strip(" |") == f"{mean[k]:.3f} ± {std[k]:.3f}"
        assert table[labels[key]][0] == "3"
        written = [row for row in per_seed if row["configuration"] == labels[key]]
        assert np.allclose([[float(row[h]) for h in HEADERS] for row in written], values, atol=1e-6)

    capsys.readouterr()
    assert main([*flags, "--seeds", "3,5,8"]) == 0  # every run finished: all reused
    assert capsys.readouterr().out.count("reusing its metrics") == len(keys) * len(seeds)
    assert main([*flags, "--seeds", "3,5", "--seed", "3"]) == 2
    assert "--seed and --seeds: pass one" in capsys.readouterr().err


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(" 7 ") == [7]
    for bad in ("", "0,0", "a,1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="seeds|whole numbers"):
            parse_seeds(bad)


def test_the_downstream_probe_is_reused_only_with_the_same_probe_settings(tmp_path, fundus_dir, capsys):
    flags = ["--data-dir", str(fundus_dir), *TINY_RUN, "--output-dir", str(tmp_path), "--configs", "sclip"]
    assert main([*flags, "--downstream"]) == 0
    done = tmp_path / "sclip" / "downstream" / "sclip" / "metrics.json"
    report = json.loads(done.read_text())
    assert report["patience"] == 30 and report["seed"] == 0
    row = _rows(tmp_path / "ablation_seeds.csv")[0]
    assert float(row["downstream probe AUC"]) == pytest.approx(report["test"]["macro"]["auc"], abs=1e-6)
    capsys.readouterr()
    assert main([*flags, "--downstream"]) == 0
    assert "running it again" not in capsys.readouterr().out
    done.write_text(json.dumps({**report, "patience": 0, "epochs": 60, "lr": 1e-3}))  # a probe of the old defaults
    assert main([*flags, "--downstream"]) == 0
    assert "a probe with other settings, running it again" in capsys.readouterr().out
    assert json.loads(done.read_text())["patience"] == 30
