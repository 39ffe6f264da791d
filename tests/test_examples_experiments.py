"""The paper's experiments as example commands.

Loss flags, missing texts, logit bias, downstream evaluation (the ablation: test_examples_ablation.py).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("sklearn")

from mgll_examples.checkpoint_import import load_pretrained
from mgll_examples.cli import main, run
from mgll_examples.config import parse_config
from mgll_examples.data import Sample, ensure_synthetic
from mgll_examples.downstream import main as downstream_main
from mgll_examples.downstream import parse_config as parse_downstream_config
from mgll_examples.downstream_data import load_downstream_csvs
from mgll_examples.errors import ExampleError
from mgll_examples.missing_texts import TextDropper, text_mask
from mgll_examples.model import build_model
from mgll_examples.own_prompts import own_form_scores
from mgll_loss.adapters.open_clip import MultiGranularOpenCLIP

TINY_RUN = ["--synthetic-size", "80", "--batch-size", "16", "--workers", "0", "--max-steps", "2"]


@pytest.fixture(scope="module")
def fundus_dir(tmp_path_factory) -> Path:
    return ensure_synthetic("fundus", tmp_path_factory.mktemp("fundus") / "data", num_train=60, num_test=20)


@pytest.fixture(scope="module")
def mgll_run(tmp_path_factory, fundus_dir) -> Path:
    """A tiny MGLL run with every loss flag changed, a bias, and 30% of the texts missing."""
    output = tmp_path_factory.mktemp("mgll-run")
    flags = [
        "--data-dir",
        str(fundus_dir),
        *TINY_RUN,
        "--output-dir",
        str(output),
        "--match",
        "overlap",
        "--soft-clip-weight",
        "0.7",
        "--pointwise-weight",
        "0.5",
        "--smooth-kl-weight",
        "0.25",
        "--level-weights",
        "1,2,0.5",
        "--normalization",
        "rows",
        "--pointwise-target",
        "row_normalized",
        "--kl-direction",
        "from_mean",
        "--drop-texts",
        "0.3",
        "--init-logit-scale",
        "10",
        "--init-logit-bias",
        "-10",
    ]
    assert main("fundus", flags) == 0
    return output


def test_loss_flags_reach_the_checkpoint_and_metrics(mgll_run):
    expected = {
        "match": "overlap",
        "soft_clip_weight": 0.7,
        "pointwise_weight": 0.5,
        "smooth_kl_weight": 0.25,
        "level_weights": [1.0, 2.0, 0.5],
        "normalization": "rows",
        "pointwise_target": "row_normalized",
        "kl_direction": "from_mean",
    }
    report = json.loads((mgll_run / "metrics.json").read_text())
    assert report["loss_options"] == expected
    assert report["drop_texts"] == 0.3 and report["init_logit_bias"] == -10.0 and report["init_logit_scale"] == 10.0
    state = torch.load(mgll_run / "last.pt", weights_only=True)
    assert {name: state["config"][name] for name in expected} == expected
    assert state["model"]["logit_bias"].item() != -10.0  # learnt: the bias reached the point-wise loss
    history = json.loads((mgll_run / "history.json").read_text())
    assert history[0]["logit_scale"] == pytest.approx(10.0, rel=1e-2) and "logit_bias" in history[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--level-weights", "1,2"], "--level-weights: expected 3 weights"),
        (["--loss", "clip", "--match", "jaccard"], "--match: MGLL loss options"),
        (["--soft-clip-weight", "0", "--pointwise-weight", "0", "--smooth-kl-weight", "0"], "all 0"),
    ],
)
def test_loss_flags_that_cannot_apply_are_refused(tmp_path, fundus_dir, capsys, flags, message):
    assert main("fundus", ["--data-dir", str(fundus_dir), *TINY_RUN, "--output-dir", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_bad_flag_values_are_refused_by_the_parser(capsys):
    for flags in (
        ["--drop-texts", "1.0"],
        ["--init-logit-scale", "0.5"],
        ["--match", "any"],
        ["--pointwise-weight", "-1"],
    ):
        with pytest.raises(SystemExit):
            parse_config("fundus", ["--synthetic", *flags])
    assert "expected a probability in [0, 1)" in capsys.readouterr().err


def test_text_mask_is_seeded_per_step_and_split_between_ranks():
    whole = text_mask(0.3, seed=1, step=7, num_levels=3, batch_size=8, rank=0)
    assert torch.equal(text_mask(0.3, 1, 7, 3, 8, 0), whole)
    assert not torch.equal(text_mask(0.3, 1, 8, 3, 8, 0), whole)
    halves = [text_mask(0.3, 1, 7, 3, 4, rank) for rank in (0, 1)]
    assert torch.equal(torch.cat(halves, dim=1), whole)
    many = text_mask(0.3, 0, 0, 3, 20_000, 0)
    assert abs(1 - many.float().mean().item() - 0.3) < 0.01
    assert text_mask(0.0, 0, 0, 3, 100, 0).all()


def test_the_clip_baseline_drops_the_same_parts_of_its_joined_caption():
    samples = [Sample(Path(f"{i}.png"), (f"n{i}", f"c{i}", f"d{i}"), "x") for i in range(6)]
    seen = []
    dropper = TextDropper(0.5, 3, samples, lambda texts: seen.extend(texts) or torch.zeros(len(texts), 4), True, ". ")
    index = torch.tensor([4, 1, 0])
    tokens, present = dropper(5, index, torch.zeros(3, 3, 4), rank=0)
    mask = text_mask(0.5, 3, 5, 3, 3, 0)
    assert tokens.shape == (1, 3, 4) and torch.equal(present, mask.any(dim=0))
    for caption, i, column in zip(seen, index.tolist(), mask.T.tolist(), strict=True):
        assert caption == ". ".join(text for text, keep in zip(samples[i].texts, column, strict=True) if keep)
    per_level = TextDropper(0.5, 3, samples, lambda texts: torch.zeros(len(texts), 4), False, ". ")
    unchanged, level_mask = per_level(5, index, tokens.new_ones(3, 3, 4), rank=0)
    assert torch.equal(level_mask, mask) and torch.equal(unchanged, tokens.new_ones(3, 3, 4))


def test_init_logit_scale_and_bias_build_a_model_whose_bias_reaches_the_loss():
    bundle = build_model("tiny", init_logit_scale=10.0, init_logit_bias=-10.0)
    outputs = MultiGranularOpenCLIP(bundle.model)(torch.randn(2, 3, 64, 64), torch.zeros(3, 2, 40, dtype=torch.long))
    assert outputs["logit_scale"].item() == pytest.approx(10.0) and outputs["logit_bias"].item() == -10.0
    assert "logit_bias" not in MultiGranularOpenCLIP(build_model("tiny").model)(
        torch.randn(2, 3, 64, 64), torch.zeros(1, 2, 40, dtype=torch.long)
    )


def test_own_form_scores_take_the_best_training_caption_of_each_class(fundus_dir):
    from mgll_examples.data import load_fundus

    dataset = load_fundus(fundus_dir)
    captions = {}

    def encode(model, tokenizer, texts, device):
        for text in texts:
            captions.setdefault(text, torch.nn.functional.normalize(torch.randn(8), dim=0))
        return torch.stack([captions[text] for text in texts])

    images = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    scores = own_form_scores(None, None, images, dataset, 1, True, torch.device("cpu"), encode)
    classes = dataset.classes(1)
    for c, name in enumerate(classes):
        joined = {". ".join(s.texts) for s in dataset.train if name in dataset.levels[1].labels(s.texts[1])}
        best = torch.stack([images @ captions[text] for text in joined]).max(dim=0).values if joined else None
        expected = best.numpy() if best is not None else np.full(5, -2.0)
        np.testing.assert_allclose(scores[:, c], expected, rtol=1e-6)


def _authors_checkpoint(path: Path) -> dict:
    """A tiny open_clip CustomTextCLIP saved in the layout of the authors' released checkpoints."""
    model = build_model("tiny", custom_text=True).model
    state = {f"clip.{key}": value for key, value in model.state_dict().items()}
    payload = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 3,
        "scaler": {"scale": 1.0},
        "args": argparse.Namespace(model="clip_vit", lr=1e-4, json_list="MGLL_list", output_dir="/out"),
    }
    torch.save(payload, path)
    return state


def test_the_authors_checkpoint_layout_loads_with_weights_only(tmp_path):
    state = _authors_checkpoint(tmp_path / "checkpoint-3.pth")
    loaded = load_pretrained(tmp_path / "checkpoint-3.pth", "tiny")
    assert loaded.source == "authors" and loaded.info["epoch"] == 3 and loaded.info["args"]["lr"] == 1e-4
    for key, value in loaded.bundle.model.state_dict().items():
        assert torch.equal(value, state[f"clip.{key}"]), key
    payload = torch.load(tmp_path / "checkpoint-3.pth", weights_only=False)
    del payload["model"]["clip.visual.attnpool.c_proj.bias"]
    payload["model"]["clip.extra"] = torch.zeros(1)
    torch.save(payload, tmp_path / "damaged.pth")
    message = "does not fit the tiny model .missing keys 1 .first: visual.attnpool.c_proj.bias.; unexpected keys 1"
    with pytest.raises(ExampleError, match=message):
        load_pretrained(tmp_path / "damaged.pth", "tiny")


class _Anything:  # a class weights_only must refuse to build
    pass


def test_a_checkpoint_holding_other_objects_is_refused(tmp_path):
    torch.save({"model": {}, "args": _Anything()}, tmp_path / "evil.pth")
    with pytest.raises(ExampleError, match="not a readable checkpoint"):
        load_pretrained(tmp_path / "evil.pth")
    torch.save({"weights": {}}, tmp_path / "other.pth")
    with pytest.raises(ExampleError, match="expected a dict with a 'model' state dict"):
        load_pretrained(tmp_path / "other.pth")


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_downstream_on_synthetic_data_scores_both_checkpoint_layouts(tmp_path, mgll_run, mode):
    (tmp_path / "authors").mkdir()
    _authors_checkpoint(tmp_path / "authors" / "checkpoint-3.pth")
    flags = [
        "--synthetic",
        "--data-dir",
        str(tmp_path / "ds"),
        "--synthetic-size",
        "36",
        "--mode",
        mode,
        "--checkpoint",
        str(mgll_run / "last.pt"),
        "--checkpoint",
        str(tmp_path / "authors" / "checkpoint-3.pth"),
        "--model",
        "tiny",
        "--epochs",
        "3",
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    # --model overrides the architecture of both checkpoints: both are tiny here
    assert downstream_main(flags) == 0
    names = [mgll_run.name, "authors"]
    for name in names:
        report = json.loads((tmp_path / "out" / name / "metrics.json").read_text())
        assert report["mode"] == mode and report["steps"] == 4 and 1 <= report["best_epoch"] <= 2
        assert list(report["test"]["per_class"]) == [
            "Disease_Risk",
            "MildNPDR",
            "ModerateNPDR",
            "SevereNPDR",
            "ARMD",
            "Glaucoma",
        ]
        assert set(report["test"]["macro"]) == {"auc", "acc", "map"}
        assert all(v is None or 0 <= v <= 1 for scores in report["test"]["per_class"].values() for v in scores.values())
    table = (tmp_path / "out" / "downstream.md").read_text()
    assert all(f"| {name} | {mode} |" in table for name in names)
    assert (tmp_path / "out" / "downstream.png").stat().st_size > 10_000
    assert len((tmp_path / "out" / "downstream.csv").read_text().splitlines()) == 1 + 2 * 7


def test_downstream_defaults_stop_early_on_the_validation_auc(tmp_path, mgll_run):
    """The documented defaults: at most 500 probe epochs, stopping 30 epochs after the best validation AUC."""
    flags = ["--synthetic", "--data-dir", str(tmp_path / "ds"), "--synthetic-size", "36", "--batch-size", "8"]
    flags += ["--checkpoint", str(mgll_run / "last.pt")]
    config = parse_downstream_config(flags)
    assert (config.epochs, config.patience, config.lr) == (500, 30, 1e-2)
    finetune = parse_downstream_config([*flags, "--mode", "finetune"])
    assert (finetune.epochs, finetune.patience, finetune.lr) == (30, 3, 1e-4)
    assert downstream_main([*flags, "--output-dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / mgll_run.name / "metrics.json").read_text())
    assert report["stopped_early"] and report["patience"] == 30
    assert report["epochs_run"] == len(report["history"]) == report["best_epoch"] + 30 < 500
    best = max(epoch["val_auc"] for epoch in report["history"])
    assert report["val_auc"] == best == report["history"][report["best_epoch"] - 1]["val_auc"]
    assert all(epoch["val_auc"] < best for epoch in report["history"][: report["best_epoch"] - 1])
    # --patience 0 trains every epoch (the fixed schedule before early stopping)
    assert downstream_main([*flags, "--patience", "0", "--epochs", "4", "--output-dir", str(tmp_path / "all")]) == 0
    report = json.loads((tmp_path / "all" / mgll_run.name / "metrics.json").read_text())
    assert report["epochs_run"] == 4 and not report["stopped_early"]
    assert downstream_main([*flags, "--patience", "-1"]) == 2


def _write_generic(folder: Path, rows: dict) -> dict:
    files = {}
    for split, labels in rows.items():
        lines = ["path,label"]
        for i, label in enumerate(labels):
            np.savez_compressed(folder / f"{split}{i}.npz", image=np.zeros((8, 8, 3), np.uint8))
            lines.append(f"{split}{i},{label}")
        files[split] = folder / f"{split}.csv"
        files[split].write_text("\n".join(lines) + "\n")
    return files


def test_generic_multiclass_csv_with_class_ids_and_its_errors(tmp_path):
    files = _write_generic(tmp_path, {"Train": [0, 2, 1], "Val": [1, 0], "Test": [2, 2]})
    data = load_downstream_csvs(files, tmp_path, "multiclass")
    assert (
        data.labels["Train"].tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
        and data.samples["Val"][1].image.name == "Val1.npz"
    )
    with pytest.raises(ExampleError, match="must hold 0 or 1"):
        load_downstream_csvs(files, tmp_path, "multilabel")
    with pytest.raises(ExampleError, match="no column 'nope'; the file has: path, label"):
        load_downstream_csvs(files, tmp_path, "multiclass", image_column="nope")
    (tmp_path / "Test1.npz").unlink()
    with pytest.raises(ExampleError, match=r"1 of 2 image files missing \(first: Test.csv\[1\]"):
        load_downstream_csvs(files, tmp_path, "multiclass")


def test_drop_texts_trains_the_clip_baseline_and_resumes_exactly(tmp_path, fundus_dir):
    flags = ["--data-dir", str(fundus_dir), *TINY_RUN[:-1], "3", "--loss", "clip", "--drop-texts", "0.5"]
    whole = run(parse_config("fundus", [*flags, "--output-dir", str(tmp_path / "whole")]))
    run(parse_config("fundus", [*flags, "--output-dir", str(tmp_path / "parts"), "--stop-after", "2"]))
    resumed = run(
        parse_config(
            "fundus", [*flags, "--output-dir", str(tmp_path / "parts"), "--resume", str(tmp_path / "parts" / "last.pt")]
        )
    )
    assert whole is not None and resumed is not None
    assert resumed["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-5)


def test_drop_texts_reaches_the_mgll_loss(tmp_path, fundus_dir):
    flags = ["--data-dir", str(fundus_dir), *TINY_RUN[:-1], "1", "--smooth-kl-weight", "0"]
    losses = {}
    for drop in ("0", "0.5"):
        run(parse_config("fundus", [*flags, "--drop-texts", drop, "--output-dir", str(tmp_path / drop)]))
        losses[drop] = json.loads((tmp_path / drop / "history.json").read_text())[0]
    # same model, batch and augmentation: only the missing texts differ
    assert losses["0"]["soft_clip_loss"] != pytest.approx(losses["0.5"]["soft_clip_loss"], rel=1e-3)


@pytest.mark.parametrize("loss", ["mgll", "clip"])
def test_drop_texts_reaches_the_loss_through_feature_cached_accumulation(tmp_path, fundus_dir, loss):
    # --accum-steps encodes 2 micro-batches of 8 and computes the loss of all 16 from cached features:
    # the text mask of the whole step must still reach it
    flags = ["--data-dir", str(fundus_dir), *TINY_RUN[:-1], "1", "--batch-size", "8", "--accum-steps", "2"]
    flags += ["--loss", loss]
    first = {}
    for drop in ("0", "0.5"):
        report = run(parse_config("fundus", [*flags, "--drop-texts", drop, "--output-dir", str(tmp_path / drop)]))
        assert report is not None and report["config"]["accum_steps"] == 2
        first[drop] = json.loads((tmp_path / drop / "history.json").read_text())[0]["loss"]
    assert all(math.isfinite(value) for value in first.values())
    assert first["0"] != pytest.approx(first["0.5"], rel=1e-3)
