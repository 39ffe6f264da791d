"""examples/export_vision_tower.py: every checkpoint layout, its refusals, and the downstream round trip."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("sklearn")
transformers = pytest.importorskip("transformers")

from mgll_examples.checkpoint_import import authors_model  # noqa: E402
from mgll_examples.cli import main as pretrain_main  # noqa: E402
from mgll_examples.data import ensure_synthetic  # noqa: E402
from mgll_examples.downstream import main as downstream_main  # noqa: E402
from mgll_examples.export import main as export_main  # noqa: E402
from mgll_examples.model import build_model  # noqa: E402
from tests.adapter_models import tiny_hf_clip  # noqa: E402


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    """A two-step MGLL pretraining run of the tiny ViT on the synthetic fundus set."""
    data = ensure_synthetic("fundus", tmp_path_factory.mktemp("fundus") / "data", num_train=60, num_test=20)
    output = tmp_path_factory.mktemp("vit-run")
    flags = ["--data-dir", str(data), "--model", "tiny-vit", "--synthetic-size", "80", "--batch-size", "16"]
    assert pretrain_main("fundus", [*flags, "--workers", "0", "--max-steps", "2", "--output-dir", str(output)]) == 0
    return output


@pytest.fixture(scope="module")
def exported(vit_run, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("export") / "vision-tower"
    assert export_main(["--checkpoint", str(vit_run / "last.pt"), "--output-dir", str(directory)]) == 0
    return directory


def test_last_pt_exports_to_a_directory_clip_vision_model_loads(exported, vit_run, capsys):
    metadata = json.loads((exported / "mgll_export.json").read_text())
    assert metadata["source"]["layout"] == "mgll-loss examples" and metadata["source"]["model"] == "tiny-vit"
    assert metadata["check"]["passed"] and metadata["hidden_act"] == "gelu"
    prep = metadata["preprocessing"]
    bundle = build_model("tiny-vit")  # the examples' transforms: the model's size, mean and std, squashed
    assert (prep["size"], prep["resize_mode"], prep["resample"]) == (bundle.image_size, "squash", "bilinear")
    assert prep["mean"] == pytest.approx(list(bundle.mean)) and prep["std"] == pytest.approx(list(bundle.std))
    tower = transformers.CLIPVisionModel.from_pretrained(exported)
    assert tower.config.image_size == 64 and tower.config.num_hidden_layers == 2
    # a second export needs --overwrite; a wrong activation fails the check and writes nothing
    assert export_main(["--checkpoint", str(vit_run / "last.pt"), "--output-dir", str(exported)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    wrong = exported.parent / "wrong"
    flags = ["--checkpoint", str(vit_run / "last.pt"), "--output-dir", str(wrong), "--hidden-act", "quick_gelu"]
    assert export_main(flags) == 1
    assert "check FAILED" in capsys.readouterr().err and not wrong.exists()


def test_the_downstream_probe_of_the_export_equals_that_of_the_checkpoint(exported, vit_run, tmp_path):
    flags = ["--synthetic", "--data-dir", str(tmp_path / "ds"), "--synthetic-size", "36", "--epochs", "3"]
    flags += ["--batch-size", "8", "--output-dir", str(tmp_path / "out")]
    assert downstream_main([*flags, "--checkpoint", str(vit_run / "last.pt"), "--checkpoint", str(exported)]) == 0
    original = json.loads((tmp_path / "out" / vit_run.name / "metrics.json").read_text())
    export = json.loads((tmp_path / "out" / exported.name / "metrics.json").read_text())
    assert export["source"] == "exported" and export["checkpoint_info"]["check"]["passed"]
    for ours, theirs in zip(export["history"], original["history"], strict=True):
        assert ours == pytest.approx(theirs, abs=1e-5)
    assert export["test"]["macro"] == pytest.approx(original["test"]["macro"], abs=1e-6)


def test_the_resnet_tiny_model_is_refused_with_a_pointer_to_tiny_vit(tmp_path, capsys):
    model = build_model("tiny").model
    torch.save({"config": {"model": "tiny"}, "step": 1, "model": model.state_dict()}, tmp_path / "last.pt")
    assert export_main(["--checkpoint", str(tmp_path / "last.pt"), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot export the ModifiedResNet image tower" in err and "--model tiny-vit" in err


def test_an_open_clip_train_checkpoint_needs_its_architecture(tmp_path, capsys):
    state = {f"module.{k}": v for k, v in build_model("tiny-vit").model.state_dict().items()}
    torch.save({"epoch": 1, "name": "run", "state_dict": state}, tmp_path / "epoch_1.pt")
    flags = ["--checkpoint", str(tmp_path / "epoch_1.pt"), "--output-dir", str(tmp_path / "out")]
    assert export_main(flags) == 2
    assert "--model: required for a checkpoint of layout 'open_clip_train'" in capsys.readouterr().err
    assert export_main([*flags, "--model", "tiny", "--no-check"]) == 2  # the wrong architecture is named
    err = capsys.readouterr().err
    assert "does not fit the model's" in err and "the given --model tiny does not match the checkpoint" in err
    assert export_main([*flags, "--model", "tiny-vit", "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2"]) == 0
    prep = json.loads((tmp_path / "out" / "mgll_export.json").read_text())["preprocessing"]
    assert prep["mean"] == [0.5] * 3 and prep["source"].endswith("overridden by flags")


def test_an_authors_checkpoint_exports_with_their_preprocessing(tmp_path):
    state = build_model("tiny-vit", custom_text=True).model.state_dict()
    payload = {"model": {f"clip.{k}": v for k, v in state.items()}, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}
    torch.save(payload, tmp_path / "checkpoint-3.pth")
    flags = ["--checkpoint", str(tmp_path / "checkpoint-3.pth"), "--output-dir", str(tmp_path / "out")]
    assert export_main([*flags, "--model", "tiny-vit"]) == 0
    metadata = json.loads((tmp_path / "out" / "mgll_export.json").read_text())
    assert metadata["source"]["layout"] == "MGLL authors" and metadata["check"]["passed"]
    assert metadata["preprocessing"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet's, not CLIP's


def test_the_authors_activation_follows_their_open_clip_layout():
    name, why = authors_model({"clip.text.token_embedding.weight": 0})
    assert name == "ViT-L-14" and "plain GELU" in why
    name, why = authors_model({"clip.transformer.resblocks.0.ln_1.weight": 0})
    assert name == "ViT-L-14-quickgelu" and "QuickGELU" in why


def test_a_hugging_face_directory_exports_with_its_own_or_given_preprocessing(tmp_path, capsys):
    tiny_hf_clip().save_pretrained(tmp_path / "trained")  # what MGLLTrainer.save_model writes
    flags = ["--checkpoint", str(tmp_path / "trained"), "--output-dir", str(tmp_path / "a")]
    assert export_main(flags) == 2
    assert "no preprocessor_config.json; pass --mean, --std, --resample, --resize-mode" in capsys.readouterr().err
    given = ["--mean", "0.4,0.4,0.4", "--std", "0.3,0.3,0.3", "--resample", "bicubic", "--resize-mode", "shortest"]
    assert export_main([*flags, *given]) == 0
    processor = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "a")
    assert processor.size["shortest_edge"] == 16 and processor.do_center_crop and int(processor.resample) == 3
    transformers.CLIPImageProcessor(
        size={"height": 16, "width": 16}, do_center_crop=False, image_mean=[0.1] * 3, image_std=[0.2] * 3
    ).save_pretrained(tmp_path / "trained")
    assert export_main(["--checkpoint", str(tmp_path / "trained"), "--output-dir", str(tmp_path / "b")]) == 0
    assert "check passed" in capsys.readouterr().out
    assert transformers.CLIPImageProcessor.from_pretrained(tmp_path / "b").image_mean == pytest.approx([0.1] * 3)


def test_a_hugging_face_directory_the_cli_cannot_read_is_one_line(tmp_path, capsys):
    tiny_hf_clip().save_pretrained(tmp_path / "trained")
    flags = ["--checkpoint", str(tmp_path / "trained"), "--output-dir", str(tmp_path / "out")]
    for kwargs in (
        dict(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}),
        dict(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, do_center_crop=False),
        dict(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, do_normalize=False),
    ):
        transformers.CLIPImageProcessor(**kwargs).save_pretrained(tmp_path / "trained")
        assert export_main(flags) == 2
        err = capsys.readouterr().err
        assert "error: --checkpoint" in err and "processor:" in err and "Traceback" not in err
    config = json.loads((tmp_path / "trained" / "config.json").read_text())
    del config["model_type"]
    (tmp_path / "trained" / "config.json").write_text(json.dumps(config))
    assert export_main(flags) == 2
    assert "not a readable Hugging Face directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_atol_is_refused_before_the_export(tmp_path, capsys):
    tiny_hf_clip().save_pretrained(tmp_path / "trained")
    transformers.CLIPImageProcessor(size={"height": 16, "width": 16}, do_center_crop=False).save_pretrained(
        tmp_path / "trained"
    )
    flags = ["--checkpoint", str(tmp_path / "trained"), "--output-dir", str(tmp_path / "out")]
    for atol in ("nan", "0", "-1"):
        assert export_main([*flags, "--atol", atol]) == 2
        assert "atol: expected a positive finite number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_last_pt_without_its_config_and_a_non_torch_file_are_named(tmp_path, capsys):
    state = build_model("tiny-vit").model.state_dict()
    torch.save({"step": 1, "model": state}, tmp_path / "last.pt")  # the config key removed
    assert export_main(["--checkpoint", str(tmp_path / "last.pt"), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "layout 'model state dict'" in err and "MGLL authors" not in err
    (tmp_path / "notes.pt").write_text("hello")
    assert export_main(["--checkpoint", str(tmp_path / "notes.pt"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "not a readable checkpoint (not a torch.save file)" in capsys.readouterr().err
