"""open_clip / Hugging Face CLIP image towers exported as CLIPVisionModel directories: exact, or refused."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from mgll_loss.export import (  # noqa: E402
    METADATA_FILE,
    ExportCheckError,
    ImagePreprocessing,
    check_export,
    export_vision_tower,
    load_open_clip_checkpoint,
    vision_state_dict,
)
from tests.adapter_models import tiny_hf_clip, tiny_siglip  # noqa: E402
from tests.export_models import open_clip_states, randomize, tiny_vit_clip  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def prep(size: int, **changes: object) -> ImagePreprocessing:
    values: dict = dict(size=size, mean=MEAN, std=STD, resample="bilinear", resize_mode="squash", source="test")
    return ImagePreprocessing(**{**values, **changes})


def pixels(size: int, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


CASES = {
    "gelu-32-proj": dict(quick_gelu=False, image_size=32),
    "quick_gelu-48-proj": dict(quick_gelu=True, image_size=48),
    "gelu-48-no-proj": dict(quick_gelu=False, image_size=48, projection=False),
    "quick_gelu-32-no-proj-layerscale": dict(quick_gelu=True, image_size=32, projection=False, ls_init_value=0.5),
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    case = dict(CASES[request.param])
    projection = case.pop("projection", True)
    model = tiny_vit_clip(**case)
    if not projection:
        model.visual.proj = None  # as open_clip's forward_intermediates(prune_head=True) leaves it
    directory = tmp_path_factory.mktemp("export") / "tower"
    report = export_vision_tower(model, directory, preprocessing=prep(case["image_size"]), source="tiny")
    return model, directory, report, case


def test_every_hidden_state_pooled_and_projected_output_match_open_clip(exported):
    model, directory, report, case = exported
    images = pixels(case["image_size"])
    states = open_clip_states(model.visual, images)
    tower = transformers.CLIPVisionModel.from_pretrained(directory).eval()
    with torch.no_grad():
        output = tower(pixel_values=images, output_hidden_states=True)
        expected = model.encode_image(images)
        embeds = transformers.CLIPVisionModelWithProjection.from_pretrained(directory)(pixel_values=images).image_embeds
    assert len(output.hidden_states) == len(states) == 3
    for actual, reference in zip(output.hidden_states, states, strict=True):
        torch.testing.assert_close(actual, reference, rtol=0, atol=1e-5)
    # what LLaVA takes: layer -2 without the class token
    torch.testing.assert_close(output.hidden_states[-2][:, 1:], states[-2][:, 1:], rtol=0, atol=1e-5)
    pooled = model.visual.ln_post(states[-1][:, 0])
    torch.testing.assert_close(output.pooler_output, pooled, rtol=0, atol=1e-5)
    projected = pooled if model.visual.proj is None else pooled @ model.visual.proj
    torch.testing.assert_close(projected, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(embeds, expected, rtol=0, atol=1e-5)
    config = json.loads((directory / "config.json").read_text())
    assert config["hidden_act"] == ("quick_gelu" if case["quick_gelu"] else "gelu")
    assert config["image_size"] == case["image_size"] and config["patch_size"] == 8
    assert config["projection_dim"] == (16 if model.visual.proj is not None else 32)


def test_the_check_is_reported_in_the_metadata(exported):
    model, directory, report, case = exported
    metadata = json.loads((directory / METADATA_FILE).read_text())
    assert report.check is not None and report.check.passed
    assert metadata["check"]["passed"] and set(metadata["check"]["max_abs_diff"]) == {
        "hidden_states[0]",
        "hidden_states[1]",
        "hidden_states[2]",
        "pooler_output",
        "image_embeds",
    }
    assert metadata["source"] == "tiny" and metadata["hidden_act"] == metadata["hidden_act_of_the_model"]
    assert metadata["preprocessing"]["mean"] == list(MEAN) and metadata["versions"]["open_clip"]
    folded = "ls_init_value" in case
    assert (metadata["tower"]["layer_scale"] is not None) == folded
    assert check_export(model, directory).passed


def test_the_image_processor_has_the_training_preprocessing(exported):
    _, directory, _, case = exported
    processor = transformers.CLIPImageProcessor.from_pretrained(directory)
    size = case["image_size"]
    assert tuple(processor.image_mean) == pytest.approx(MEAN) and tuple(processor.image_std) == pytest.approx(STD)
    assert processor.size["height"] == processor.size["width"] == size and not processor.do_center_crop
    assert int(processor.resample) == 2  # PIL bilinear
    image = (torch.rand(40, 70, 3) * 255).to(torch.uint8).numpy()
    assert tuple(processor(image, return_tensors="pt")["pixel_values"].shape) == (1, 3, size, size)
    back = ImagePreprocessing.from_image_processor(processor, source="reloaded")
    assert back == prep(size, source="reloaded")


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_an_export_forced_to_the_wrong_activation_fails_its_check(tmp_path, quick_gelu):
    model = tiny_vit_clip(quick_gelu=quick_gelu)
    wrong = "gelu" if quick_gelu else "quick_gelu"
    with pytest.raises(ExportCheckError, match=f"FAILED.*over atol: hidden_states.1.*forced to '{wrong}'") as info:
        export_vision_tower(model, tmp_path / "tower", preprocessing=prep(32), hidden_act=wrong)
    assert info.value.check.max_abs_diff["hidden_states[0]"] <= 1e-5  # the embeddings do not see the activation
    assert not (tmp_path / "tower").exists() and list(tmp_path.iterdir()) == []


def test_a_tiny_llava_built_on_the_exported_config_loads_the_tower(exported):
    model, directory, _, case = exported
    vision_config = transformers.CLIPVisionConfig.from_pretrained(directory)
    text_config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    config = transformers.LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_token_index=63,
    )
    llava = transformers.LlavaForConditionalGeneration(config).eval()
    inner = getattr(llava, "model", llava)  # transformers >= 4.52 keeps the tower and projector under .model
    tower = inner.vision_tower
    tower.load_state_dict(transformers.CLIPVisionModel.from_pretrained(directory).state_dict())
    images = pixels(case["image_size"], batch=2)
    with torch.no_grad():
        expected = inner.multi_modal_projector(open_clip_states(model.visual, images)[-2][:, 1:])
        if hasattr(llava, "get_image_features"):
            features = llava.get_image_features(
                images, vision_feature_layer=-2, vision_feature_select_strategy="default"
            )
        else:  # transformers < 4.45 computes them inside forward only
            hidden = tower(images, output_hidden_states=True).hidden_states[-2][:, 1:]
            features = inner.multi_modal_projector(hidden)
    features = getattr(features, "pooler_output", features)  # transformers >= 5: an output with per-image features
    features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)


def _layouts(model: nn.Module) -> dict[str, object]:
    state = model.state_dict()
    return {
        "open_clip_train (DDP)": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
        "open_clip_train": {"epoch": 3, "state_dict": state},
        "mgll-loss examples": {"config": {"model": "tiny-vit"}, "step": 2, "model": state, "optimizer": {}},
        "MGLL authors": {
            "model": {f"clip.{k}": v for k, v in state.items()},
            "epoch": 3,
            "args": argparse.Namespace(lr=1e-4),
        },
        "state dict": state,
    }


@pytest.mark.parametrize("layout", list(_layouts(nn.Linear(1, 1))))
def test_each_checkpoint_layout_loads_the_image_tower(tmp_path, layout):
    source = tiny_vit_clip(seed=1, custom_text=layout == "MGLL authors")  # the authors' model is a CustomTextCLIP
    torch.save(_layouts(source)[layout], tmp_path / "checkpoint.pt")
    target = tiny_vit_clip(seed=2)
    assert load_open_clip_checkpoint(target, tmp_path / "checkpoint.pt") == layout.replace(" (DDP)", "")
    for key, value in source.visual.state_dict().items():
        assert torch.equal(target.visual.state_dict()[key], value), key


def test_a_checkpoint_that_does_not_fit_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"no image tower weights .* its keys begin \['logit_scale'\]"):
        vision_state_dict({"state_dict": {"logit_scale": torch.zeros(())}})
    other = tiny_vit_clip(image_size=48).state_dict()
    with pytest.raises(ValueError, match=r"does not fit the model's \(other shapes 1 \(first: positional_embedding"):
        load_open_clip_checkpoint(tiny_vit_clip(), {"state_dict": other})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_open_clip_checkpoint(tiny_vit_clip(), tmp_path / "junk.pt")


def _swap_block(model: nn.Module) -> nn.Module:
    model.visual.transformer.resblocks[0] = nn.TransformerEncoderLayer(32, 2, batch_first=True)
    return model


def _swap_activation(model: nn.Module) -> nn.Module:
    model.visual.transformer.resblocks[1].mlp.gelu = nn.SiLU()
    return model


def _other_eps(model: nn.Module) -> nn.Module:
    model.visual.ln_post.eps = 1e-6
    return model


def _hf_siglip() -> nn.Module:
    return tiny_siglip()


UNSUPPORTED = {
    "ModifiedResNet": (
        lambda: open_clip.CLIP(
            16,
            dict(layers=(1, 1, 1, 1), width=16, image_size=32),
            dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
        ),
        "ModifiedResNet image tower",
    ),
    "timm trunk": (
        lambda: tiny_vit_clip(
            timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False, timm_pool="", timm_proj="linear"
        ),
        r"timm trunk \(e.g. BiomedCLIP's\)",
    ),
    "non-square": (lambda: tiny_vit_clip(image_size=(32, 48)), r"image size \(32, 48\)"),
    "no ln_pre": (lambda: tiny_vit_clip(no_ln_pre=True), "without ln_pre"),
    "attentional pooling": (
        lambda: tiny_vit_clip(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2),
        r"attentional pooling \(attn_pool\)",
    ),
    "average pooling": (lambda: tiny_vit_clip(pool_type="avg"), "pool_type='avg'"),
    "custom block": (lambda: _swap_block(tiny_vit_clip()), r"resblocks.0 \(TransformerEncoderLayer\)"),
    "activation": (lambda: _swap_activation(tiny_vit_clip()), r"resblocks.1.mlp.gelu \(SiLU\(\)\)"),
    "layer norm eps": (lambda: _other_eps(tiny_vit_clip()), r"different eps \[1e-06, 1e-05\]"),
}
if "qk_norm" in open_clip.CLIPVisionCfg.__dataclass_fields__:  # open_clip >= 3.0 builds custom blocks itself
    UNSUPPORTED["qk-norm"] = (lambda: tiny_vit_clip(qk_norm=True), r"resblocks.0 \(CustomResidualAttentionBlock\)")


@pytest.mark.parametrize("variant", list(UNSUPPORTED))
def test_each_unsupported_variant_is_refused_naming_the_part(tmp_path, variant):
    build, message = UNSUPPORTED[variant]
    if variant == "timm trunk":
        pytest.importorskip("timm")
    with pytest.raises(ValueError, match=f"cannot export .*{message}"):
        export_vision_tower(build(), tmp_path / "tower", preprocessing=prep(32))
    assert not (tmp_path / "tower").exists()


def test_a_hugging_face_clip_model_exports_its_tower_unchanged(tmp_path):
    torch.manual_seed(0)
    clip = tiny_hf_clip().eval()
    randomize_hf = [m for m in clip.vision_model.modules() if isinstance(m, nn.LayerNorm)]
    with torch.no_grad():
        for norm in randomize_hf:
            norm.weight.normal_(1, 0.5)
            norm.bias.normal_(0, 0.5)
    clip.save_pretrained(tmp_path / "trained")  # what MGLLTrainer.save_model writes
    trained = transformers.CLIPModel.from_pretrained(tmp_path / "trained")
    report = export_vision_tower(trained, tmp_path / "tower", preprocessing=prep(16), source=str(tmp_path / "trained"))
    assert report.check.passed and report.metadata["tower"]["framework"] == "transformers"
    images = pixels(16)
    tower = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "tower")
    with torch.no_grad():
        expected = trained.visual_projection(trained.vision_model(pixel_values=images).pooler_output)
        torch.testing.assert_close(tower(pixel_values=images).image_embeds, expected, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="expected a transformers CLIPModel or CLIPVisionModelWithProjection"):
        export_vision_tower(_hf_siglip(), tmp_path / "siglip", preprocessing=prep(16))


def test_bad_arguments_are_named(tmp_path):
    model = tiny_vit_clip()
    with pytest.raises(ValueError, match="preprocessing: size 64 with 3 channels, the model takes 32x32"):
        export_vision_tower(model, tmp_path / "a", preprocessing=prep(64))
    with pytest.raises(TypeError, match="preprocessing: expected an ImagePreprocessing"):
        export_vision_tower(model, tmp_path / "a", preprocessing={"size": 32})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the check compares in float32"):
        export_vision_tower(tiny_vit_clip().half(), tmp_path / "a", preprocessing=prep(32))
    with pytest.raises(ValueError, match="hidden_act: expected a transformers activation name .*got 'swishy'"):
        export_vision_tower(model, tmp_path / "a", preprocessing=prep(32), hidden_act="swishy")
    with pytest.raises(TypeError, match="pass the wrapped model"):
        export_vision_tower(nn.DataParallel(model), tmp_path / "a", preprocessing=prep(32))
    with pytest.raises(TypeError, match="model: expected an open_clip CLIP.*got str"):
        export_vision_tower("model.pt", tmp_path / "a", preprocessing=prep(32))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model: expected an open_clip model .*got str"):
        load_open_clip_checkpoint("model.pt", model.state_dict())  # type: ignore[arg-type]
    visual_only = export_vision_tower(model.visual, tmp_path / "visual", preprocessing=prep(32))
    assert visual_only.check.passed and check_export(model.visual, tmp_path / "visual").passed
    tampered = tiny_vit_clip()
    tampered.visual.image_size = (64, 64)
    with pytest.raises(ValueError, match="image_size 64 .* the positional embedding has 17 positions"):
        export_vision_tower(tampered, tmp_path / "a", preprocessing=prep(64))
    broken = tiny_vit_clip()
    with torch.no_grad():
        broken.visual.transformer.resblocks[1].ln_1.weight[0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf \(first: transformer.resblocks.1.ln_1.weight\)"):
        export_vision_tower(broken, tmp_path / "a", preprocessing=prep(32))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an export of this function"):
        export_vision_tower(model, tmp_path / "busy", preprocessing=prep(32))
    export_vision_tower(model, tmp_path / "a", preprocessing=prep(32))
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export_vision_tower(model, tmp_path / "a", preprocessing=prep(32))
    assert export_vision_tower(model, tmp_path / "a", preprocessing=prep(32), overwrite=True).check.passed
    for atol in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="atol: expected a positive finite number"):
            export_vision_tower(model, tmp_path / "c", preprocessing=prep(32), atol=atol)
        with pytest.raises(ValueError, match="atol: expected a positive finite number"):
            check_export(model, tmp_path / "a", atol=atol)
    assert not (tmp_path / "c").exists()
    for changes, message in (
        (dict(size=0), "size: expected a positive int"),
        (dict(std=(1.0, 0.0, 1.0)), "positive stds"),
        (dict(mean=(0.5,)), "one value per channel"),
        (dict(resample="cubic"), "resample: expected one of"),
        (dict(resize_mode="longest"), "resize_mode: expected one of"),
    ):
        with pytest.raises(ValueError, match=message):
            ImagePreprocessing(**{**prep(32).to_dict(), **changes})


def test_overwrite_replaces_only_an_exports_files(tmp_path):
    model = tiny_vit_clip()
    export_vision_tower(model, tmp_path / "a", preprocessing=prep(32), check=False)
    (tmp_path / "a" / "notes.txt").write_text("mine")
    (tmp_path / "a" / "runs").mkdir()
    with pytest.raises(FileExistsError, match=r"other entries \(notes.txt, runs\)"):
        export_vision_tower(model, tmp_path / "a", preprocessing=prep(32), check=False, overwrite=True)
    assert (tmp_path / "a" / "notes.txt").read_text() == "mine" and (tmp_path / "a" / "runs").is_dir()
    assert (tmp_path / "a" / "model.safetensors").is_file()


def test_an_image_processor_setting_an_export_cannot_write_is_refused():
    square = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert ImagePreprocessing.from_image_processor(transformers.CLIPImageProcessor(**square), "t").size == 32
    for change, named in (
        (dict(do_normalize=False), "do_normalize=False"),
        (dict(do_rescale=False), "do_rescale=False"),
        (dict(rescale_factor=1.0), "rescale_factor=1.0"),
        (dict(do_resize=False), "do_resize=False"),
    ):
        processor = transformers.CLIPImageProcessor(**square, **change)
        with pytest.raises(ValueError, match=f"processor: {named} is not supported"):
            ImagePreprocessing.from_image_processor(processor, "t")


def test_preprocessing_from_open_clip_reads_the_models_transform_config():
    from open_clip.model import set_model_preprocess_cfg

    model = tiny_vit_clip()
    with pytest.raises(ValueError, match="carries no open_clip preprocessing"):
        ImagePreprocessing.from_open_clip(model)
    cfg = dict(size=32, mode="RGB", mean=MEAN, std=STD, interpolation="bicubic", resize_mode="shortest", fill_color=0)
    set_model_preprocess_cfg(model, cfg)
    assert ImagePreprocessing.from_open_clip(model) == ImagePreprocessing(
        32, MEAN, STD, "bicubic", "shortest", "open_clip preprocess_cfg of the model"
    )
    kwargs = ImagePreprocessing.from_open_clip(model).image_processor_kwargs()
    assert kwargs["size"] == {"shortest_edge": 32} and kwargs["do_center_crop"] and kwargs["resample"] == 3
    set_model_preprocess_cfg(model, {**cfg, "resize_mode": "longest"})
    with pytest.raises(ValueError, match="resize_mode 'longest'"):
        ImagePreprocessing.from_open_clip(model)


def test_randomized_models_differ_from_the_defaults():
    """The test models carry no LayerNorm left at 1/0, so a swapped key shows."""
    model = tiny_vit_clip()
    randomize(model.visual)
    norms = [m for m in model.visual.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(not torch.allclose(n.weight, torch.ones_like(n.weight)) for n in norms)
