"""The open_clip and Hugging Face adapters on tiny randomly initialised models (offline)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mgll_loss import MGLLLoss

from . import adapter_models as models

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

from mgll_loss.adapters import hf  # noqa: E402
from mgll_loss.adapters import open_clip as oc

LOSS_KEYS = set(inspect.signature(MGLLLoss.forward).parameters) - {"self"}
LEVELS = [
    ["normal", "abnormal", "abnormal", "normal"],
    ["healthy", "glaucoma", "mild retinopathy", "healthy"],
    ["no abnormality observed", "cup observed", "only microaneurysms observed", "no abnormality observed"],
]
LABELS = [torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 0])]


@dataclass
class Kind:
    """How to build, feed and check one adapter."""

    build: Callable[[], torch.nn.Module]  # the adapter around a fresh tiny model
    inputs: Callable[[int], dict[str, Any]]  # forward kwargs for a batch of B=4 images and LEVELS
    level_features: Callable[[Any, dict[str, Any], int], torch.Tensor]  # unbatched reference for level g
    text_tower: Callable[[Any], torch.nn.Module]  # module called once per text-tower call
    has_bias: bool


def _open_clip_inputs(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        images=torch.randn(4, 3, 32, 32, generator=g), texts=oc.tokenize_levels(models.open_clip_tokenizer(), LEVELS)
    )


def _hf_inputs(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        pixel_values=torch.randn(4, 3, 16, 16, generator=g), **hf.tokenize_levels(models.hf_tokenizer(), LEVELS)
    )


def _hf_level(wrapper, inputs, g):
    out = wrapper.model.get_text_features(input_ids=inputs["input_ids"][g], attention_mask=inputs["attention_mask"][g])
    return F.normalize(hf._pooled(out), dim=-1)


KINDS = {
    "open_clip": Kind(
        lambda: oc.MultiGranularOpenCLIP(models.tiny_open_clip()),
        _open_clip_inputs,
        lambda w, x, g: w.model.encode_text(x["texts"][g], normalize=True),
        lambda w: w.model.transformer,
        False,
    ),
    "open_clip_siglip": Kind(
        lambda: oc.MultiGranularOpenCLIP(models.tiny_open_clip(logit_bias=-10.0)),
        _open_clip_inputs,
        lambda w, x, g: w.model.encode_text(x["texts"][g], normalize=True),
        lambda w: w.model.transformer,
        True,
    ),
    "hf_clip": Kind(
        lambda: hf.MultiGranularHFCLIP(models.tiny_hf_clip()),
        _hf_inputs,
        _hf_level,
        lambda w: w.model.text_model,
        False,
    ),
    "hf_siglip": Kind(
        lambda: hf.MultiGranularHFCLIP(models.tiny_siglip()), _hf_inputs, _hf_level, lambda w: w.model.text_model, True
    ),
}


@pytest.fixture(params=list(KINDS))
def kind(request) -> Kind:
    torch.manual_seed(0)
    return KINDS[request.param]


def test_outputs_are_exactly_the_loss_keyword_arguments(kind):
    wrapper, inputs = kind.build(), kind.inputs(0)
    out = wrapper(**inputs)
    expected = {"image_features", "text_features", "logit_scale"} | ({"logit_bias"} if kind.has_bias else set())
    assert set(out) == expected and expected <= LOSS_KEYS
    batch, dim = out["image_features"].shape
    assert batch == 4 and out["text_features"].shape == (3, 4, dim)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(3, 4))
    torch.testing.assert_close(out["logit_scale"], wrapper.model.logit_scale.exp())
    terms = MGLLLoss()(**out, labels=LABELS, output_dict=True)
    assert set(terms) == {"soft_clip_loss", "pointwise_loss", "smooth_kl_loss"}
    assert all(torch.isfinite(v) for v in terms.values())


def test_all_levels_go_through_the_text_tower_in_one_call_and_match_per_level_encoding(kind):
    wrapper, inputs = kind.build(), kind.inputs(0)
    calls = []
    handle = kind.text_tower(wrapper).register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    out = wrapper(**inputs)
    handle.remove()
    assert len(calls) == 1
    for g in range(3):
        torch.testing.assert_close(
            out["text_features"][g], kind.level_features(wrapper, inputs, g), rtol=1e-5, atol=1e-5
        )


def test_a_sequence_of_levels_equals_the_stacked_tensor(kind):
    wrapper, inputs = kind.build(), kind.inputs(0)
    as_lists = {k: list(v) if v.dim() == 3 else v for k, v in inputs.items()}
    for key, value in wrapper(**as_lists).items():
        torch.testing.assert_close(value, wrapper(**inputs)[key])


def test_gradients_reach_both_towers_the_scale_and_the_bias(kind):
    wrapper, inputs = kind.build(), kind.inputs(0)
    MGLLLoss()(**wrapper(**inputs), labels=LABELS).backward()
    model = wrapper.model
    image_tower = model.visual if hasattr(model, "visual") else model.vision_model
    text_tower = kind.text_tower(wrapper)
    for tower in (image_tower, text_tower):
        grads = [p.grad for p in tower.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().sum() > 0
    if kind.has_bias:
        assert model.logit_bias.grad is not None and model.logit_bias.grad.abs().sum() > 0


def test_a_few_optimiser_steps_on_a_fixed_batch_reduce_the_loss(kind):
    wrapper, inputs = kind.build(), kind.inputs(0)
    loss_fn = MGLLLoss()
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = loss_fn(**wrapper(**inputs), labels=LABELS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        wrapper.clamp_logit_scale()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_clamp_logit_scale_bounds_the_model_parameter(kind):
    wrapper = kind.build()
    with torch.no_grad():
        wrapper.model.logit_scale.fill_(9.0)
    wrapper.clamp_logit_scale(max_value=50.0)
    torch.testing.assert_close(wrapper.model.logit_scale.exp().max(), torch.tensor(50.0))


def test_batch_mismatch_names_the_argument_and_shapes(kind):
    wrapper, inputs = kind.build(), kind.inputs(0)
    name = "texts" if "texts" in inputs else "input_ids"
    inputs[name] = inputs[name][:, :3]
    if "attention_mask" in inputs:
        inputs["attention_mask"] = inputs["attention_mask"][:, :3]
    with pytest.raises(ValueError, match=rf"{name}: expected \[G, B=4, L\].*\(3, 3, "):
        wrapper(**inputs)


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        ("not tokens", TypeError, r"texts: expected a \[G, B, L\] tensor"),
        (
            [torch.zeros(4, 12, dtype=torch.long), torch.zeros(4, 10, dtype=torch.long)],
            ValueError,
            r"one shape .*\(4, 12\), \(4, 10\)",
        ),
        (torch.zeros(4, 12, dtype=torch.long), ValueError, r"texts: expected shape \[G, B, L\], got \(4, 12\)"),
        ([torch.zeros(4, 12, dtype=torch.long), "x"], TypeError, r"texts\[1\]: expected a \[B, L\] tensor"),
    ],
)
def test_bad_texts_are_rejected_before_the_towers_run(texts, error, match):
    wrapper = oc.MultiGranularOpenCLIP(models.tiny_open_clip())
    with pytest.raises(error, match=match):
        wrapper(torch.randn(4, 3, 32, 32), texts)


def test_bad_images_and_masks_are_rejected():
    wrapper = hf.MultiGranularHFCLIP(models.tiny_hf_clip())
    inputs = _hf_inputs(0)
    with pytest.raises(ValueError, match=r"pixel_values: expected shape \[B >= 1, C, H, W\], got \(3, 16, 16\)"):
        wrapper(inputs["pixel_values"][0], inputs["input_ids"])
    with pytest.raises(ValueError, match=r"attention_mask: expected \[G, B=4, L\]"):
        wrapper(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"][:, :2])


def test_models_that_are_not_clip_or_are_ddp_wrapped_are_rejected():
    with pytest.raises(TypeError, match="model: expected an open_clip CLIP model with encode_image"):
        oc.MultiGranularOpenCLIP(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model: expected a CLIPModel/SiglipModel with get_image_features"):
        hf.MultiGranularHFCLIP(models.tiny_open_clip())
    fake_ddp = torch.nn.DataParallel(models.tiny_open_clip())
    with pytest.raises(TypeError, match="wrap the adapter in DistributedDataParallel"):
        oc.MultiGranularOpenCLIP(fake_ddp)


@pytest.mark.parametrize(
    ("module", "build", "extra"),
    [
        ("open_clip", lambda: oc.MultiGranularOpenCLIP(torch.nn.Linear(2, 2)), "open_clip"),
        ("transformers", lambda: hf.MultiGranularHFCLIP(torch.nn.Linear(2, 2)), "hf"),
        ("transformers", lambda: hf.MGLLTrainer, "hf"),
    ],
)
def test_a_missing_framework_names_the_extra_to_install(monkeypatch, module, build, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" raise ImportError
    hf._trainer_class.cache_clear()
    with pytest.raises(ImportError, match=rf'pip install "mgll-loss\[{extra}\]"'):
        build()
    hf._trainer_class.cache_clear()


def test_tokenize_levels_batches_every_level_in_one_call():
    calls = []
    tokenizer = models.open_clip_tokenizer()
    tokens = oc.tokenize_levels(lambda texts: calls.append(len(texts)) or tokenizer(texts), LEVELS)
    assert calls == [12] and tokens.shape == (3, 4, models.OPEN_CLIP_CONTEXT)
    torch.testing.assert_close(tokens[2], tokenizer(LEVELS[2]))
    encoded = hf.tokenize_levels(models.hf_tokenizer(), LEVELS)
    assert encoded["input_ids"].shape == encoded["attention_mask"].shape and encoded["input_ids"].shape[:2] == (3, 4)
    with pytest.raises(ValueError, match=r"same batch size B >= 1 in every level, got sizes \[4, 3\]"):
        oc.tokenize_levels(tokenizer, [LEVELS[0], LEVELS[1][:3]])
    with pytest.raises(TypeError, match=r"levels\[1\]\[0\]: expected a string"):
        hf.tokenize_levels(models.hf_tokenizer(), [["a"], [1]])


def test_create_loss_passes_the_open_clip_distributed_flags_through():
    args = SimpleNamespace(local_loss=True, gather_with_grad=True, rank=1, world_size=4, model="ViT-B-32", lr=1e-3)
    loss = oc.create_loss(args, soft_clip_weight=0.25, backend="chunked")
    assert (loss.distributed.local_loss, loss.distributed.gather_with_grad) == (True, True)
    assert (loss.distributed.rank, loss.distributed.world_size) == (1, 4)
    assert loss.soft_clip_weight == 0.25 and loss.backend == "chunked"
    defaults = oc.create_loss()
    assert defaults.distributed.local_loss is False and defaults.distributed.world_size is None


def test_collate_levels_builds_level_first_batches():
    features = [
        dict(
            pixel_values=torch.full((3, 16, 16), float(i)),
            input_ids=torch.full((3, 5), i),
            attention_mask=torch.ones(3, 5, dtype=torch.long),
            labels=[i % 2, i, torch.tensor([1, 0, i % 2])],
        )
        for i in range(4)
    ]
    batch = hf.collate_levels(features)
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 4, 5)
    torch.testing.assert_close(batch["input_ids"][1, :, 0], torch.arange(4))
    assert [tuple(t.shape) for t in batch["labels"]] == [(4,), (4,), (4, 3)]
    torch.testing.assert_close(batch["labels"][1], torch.arange(4))


def test_compute_mgll_loss_takes_labels_from_the_batch():
    torch.manual_seed(0)
    wrapper = hf.MultiGranularHFCLIP(models.tiny_hf_clip())
    inputs = _hf_inputs(0)
    loss_fn = MGLLLoss()
    expected = loss_fn(**wrapper(**inputs), labels=LABELS)
    torch.testing.assert_close(hf.compute_mgll_loss(wrapper, {**inputs, "labels": LABELS}, loss_fn), expected)
    stacked = torch.stack(LABELS)  # a level-first tensor [G, B] works too
    loss, features = hf.compute_mgll_loss(wrapper, {**inputs, "labels": stacked}, loss_fn, return_outputs=True)
    torch.testing.assert_close(loss, expected)
    assert set(features) == {"image_features", "text_features", "logit_scale"}
    with pytest.raises(ValueError, match=r"labels: expected G per-level entries"):
        hf.compute_mgll_loss(wrapper, {**inputs, "labels": LABELS[0]}, loss_fn)


class _LevelDataset(torch.utils.data.Dataset):
    def __init__(self) -> None:
        inputs = _hf_inputs(0)
        self.examples = [
            dict(
                pixel_values=inputs["pixel_values"][i],
                input_ids=inputs["input_ids"][:, i],
                attention_mask=inputs["attention_mask"][:, i],
                labels=[label[i] for label in LABELS],
            )
            for i in range(4)
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        return self.examples[index]


def test_mgll_trainer_trains_the_wrapped_model(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments

    torch.manual_seed(0)
    wrapper = hf.MultiGranularHFCLIP(models.tiny_hf_clip())
    before = [p.detach().clone() for p in wrapper.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    with torch.no_grad():
        wrapper.model.logit_scale.fill_(5.0)  # above log(100): the first step's clamp must bring it down
    trainer = hf.MGLLTrainer(
        model=wrapper,
        args=args,
        train_dataset=_LevelDataset(),
        data_collator=hf.collate_levels,
        mgll_loss=MGLLLoss(soft_clip_weight=1.0),
    )
    trainer.train()
    assert wrapper.model.logit_scale.exp().item() <= 100.0 + 1e-3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    assert any(not torch.equal(a, b) for a, b in zip(before, wrapper.parameters(), strict=True))
