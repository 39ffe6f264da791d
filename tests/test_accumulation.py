"""accumulate_step equals one backward of the whole effective batch (float64, 1e-9).

Loss and every parameter gradient (towers, logit scale, logit bias) are compared with a single
forward/backward of the concatenated micro-batches: for a tiny two-tower model, the tiny open_clip
and Hugging Face models through the adapters, uneven micro-batch sizes, multi-hot labels and text
masks, dropout (replayed), and DDP with 2 gloo ranks against one process holding the global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mgll_loss import MGLLLoss, SoftCLIPLoss, accumulate_step

from . import accumulation_workers as workers
from .accumulation_workers import (
    G,
    TwoTower,
    effective_batch,
    gradients,
    micro_batches,
)
from .helpers import SPLIT_BATCH_TOL

SPLITS = [[12], [4, 4, 4], [5, 1, 6], [1] * 12]


def _big_batch(model: nn.Module, loss_fn: Callable, batch: dict[str, Any], **loss_inputs: Any):
    """Reference: one forward of the whole effective batch (under the caller's autocast, if any), then the loss and
    its backward outside autocast."""
    model.zero_grad(set_to_none=True)
    features = model(**batch)
    with torch.autocast("cpu", enabled=False):
        loss = loss_fn(**features, **loss_inputs)
        loss.backward()
    return loss.detach(), gradients(model)


def _accumulated(model: nn.Module, loss_fn: Callable, batches: list[dict[str, Any]], **loss_inputs: Any):
    model.zero_grad(set_to_none=True)
    loss = accumulate_step(model, loss_fn, batches, **loss_inputs)
    return loss, gradients(model)


def _assert_same(got, expected, tol=SPLIT_BATCH_TOL) -> None:
    (loss, grads), (expected_loss, expected_grads) = got, expected
    torch.testing.assert_close(loss, expected_loss, **tol)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("sizes", SPLITS, ids=["1x12", "3x4", "5+1+6", "12x1"])
def test_two_tower_gradients_equal_the_full_batch(sizes):
    torch.manual_seed(0)
    model, loss_fn = TwoTower(), MGLLLoss(match="overlap")
    inputs = effective_batch(sum(sizes))
    loss_inputs = dict(labels=inputs["labels"], text_mask=inputs["mask"])
    expected = _big_batch(model, loss_fn, dict(images=inputs["images"], texts=inputs["texts"]), **loss_inputs)
    _assert_same(_accumulated(model, loss_fn, micro_batches(inputs, sizes), **loss_inputs), expected)
    assert expected[1]["logit_scale"].abs() > 1e-3 and expected[1]["logit_bias"].abs() > 1e-3  # both really tested


def test_naive_loss_accumulation_is_a_different_objective():
    """The comparison above can fail: summing micro-batch losses (each sees only its own negatives) differs."""
    torch.manual_seed(0)
    model, loss_fn = TwoTower(), MGLLLoss()
    inputs = effective_batch(8)
    expected = _big_batch(model, loss_fn, dict(images=inputs["images"], texts=inputs["texts"]))
    model.zero_grad(set_to_none=True)
    for batch in micro_batches(inputs, [4, 4]):
        (loss_fn(**model(**batch)) / 2).backward()
    assert not torch.allclose(gradients(model)["image_tower.0.weight"], expected[1]["image_tower.0.weight"], atol=1e-4)


def test_output_dict_returns_the_terms_and_backpropagates_their_sum():
    torch.manual_seed(0)
    model, loss_fn = TwoTower(), MGLLLoss()
    inputs = effective_batch(7)
    expected = _big_batch(
        model,
        lambda **f: sum(loss_fn(**f, output_dict=True).values()),
        dict(images=inputs["images"], texts=inputs["texts"]),
        labels=inputs["labels"],
    )
    model.zero_grad(set_to_none=True)
    terms = accumulate_step(model, loss_fn, micro_batches(inputs, [3, 4]), labels=inputs["labels"], output_dict=True)
    assert set(terms) == {"soft_clip_loss", "pointwise_loss", "smooth_kl_loss"}
    assert not any(t.requires_grad for t in terms.values())
    _assert_same((sum(terms.values()), gradients(model)), expected)


def test_gradients_accumulate_into_existing_grads_like_backward():
    torch.manual_seed(0)
    model, loss_fn = TwoTower(), MGLLLoss()
    inputs = effective_batch(6)
    _, once = _accumulated(model, loss_fn, micro_batches(inputs, [2, 4]))
    accumulate_step(model, loss_fn, micro_batches(inputs, [2, 4]))  # no zero_grad: adds to .grad
    for name, grad in gradients(model).items():
        torch.testing.assert_close(grad, 2 * once[name], **SPLIT_BATCH_TOL)


def test_single_level_loss_with_a_label_tensor():
    class OneLevel(TwoTower):
        def forward(self, images, texts):
            out = super().forward(images, texts)
            return {**out, "text_features": out["text_features"][0]}

    torch.manual_seed(0)
    model, loss_fn = OneLevel(), SoftCLIPLoss()
    inputs = effective_batch(9)
    labels, mask = inputs["labels"][0], inputs["mask"][0]
    expected = _big_batch(
        model, loss_fn, dict(images=inputs["images"], texts=inputs["texts"]), labels=labels, text_mask=mask
    )
    _assert_same(_accumulated(model, loss_fn, micro_batches(inputs, [4, 5]), labels=labels, text_mask=mask), expected)


def test_dropout_is_replayed_in_the_second_pass():
    """With dropout the reference is the big batch drawing the same masks: the micro-batches encoded in order
    with gradients kept, concatenated, one loss, one backward. The generator ends where that reference leaves it."""
    model, loss_fn = TwoTower(dropout=0.3), MGLLLoss()
    inputs = effective_batch(10)
    batches = micro_batches(inputs, [3, 3, 4])

    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    outputs = [model(**batch) for batch in batches]
    features = dict(
        outputs[0],
        image_features=torch.cat([o["image_features"] for o in outputs]),
        text_features=torch.cat([o["text_features"] for o in outputs], dim=1),
    )
    expected_loss = loss_fn(**features, labels=inputs["labels"])
    expected_loss.backward()
    expected = (expected_loss.detach(), gradients(model))
    expected_rng = torch.get_rng_state()

    torch.manual_seed(7)
    _assert_same(_accumulated(model, loss_fn, batches, labels=inputs["labels"]), expected)
    assert torch.equal(torch.get_rng_state(), expected_rng)

    model.eval()  # dropout really changes the result, so the equality above needs the replay
    without_dropout = _accumulated(model, loss_fn, batches, labels=inputs["labels"])
    assert not torch.allclose(
        without_dropout[1]["image_tower.0.weight"], expected[1]["image_tower.0.weight"], atol=1e-4
    )


def test_batch_norm_running_statistics_move_once_per_micro_batch():
    class Normed(TwoTower):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(7, dtype=torch.float64)

        def forward(self, images, texts):
            return super().forward(self.norm(images), texts)

    torch.manual_seed(0)
    model, loss_fn = Normed(), MGLLLoss()
    inputs = effective_batch(8)
    batches = micro_batches(inputs, [3, 5])
    expected = Normed()
    expected.load_state_dict(model.state_dict())
    with torch.no_grad():
        for batch in batches:  # one training-mode forward per micro-batch
            expected(**batch)
    accumulate_step(model, loss_fn, batches)
    for name, buffer in expected.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], buffer, **SPLIT_BATCH_TOL)
    assert int(model.norm.num_batches_tracked) == 2


def test_autocast_bf16_matches_the_big_batch_under_the_same_autocast():
    torch.manual_seed(0)
    model, loss_fn = TwoTower().float(), MGLLLoss()
    inputs = effective_batch(8)
    inputs["images"], inputs["texts"] = inputs["images"].float(), inputs["texts"].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _big_batch(
            model, loss_fn, dict(images=inputs["images"], texts=inputs["texts"]), labels=inputs["labels"]
        )
        got = _accumulated(model, loss_fn, micro_batches(inputs, [4, 4]), labels=inputs["labels"])
    # bf16 matmuls of 4 rows vs 8 rows round alike per row; what differs is the order of summation
    _assert_same(got, expected, tol=dict(rtol=2e-2, atol=2e-3))


def test_grad_scaler_recipe_scales_every_gradient():
    """fp16 recipe of the guide: scale inside loss_fn; gradients are the unscaled ones times the scale."""
    torch.manual_seed(0)
    model, loss_fn = TwoTower(), MGLLLoss()
    inputs = effective_batch(6)
    loss, plain = _accumulated(model, loss_fn, micro_batches(inputs, [2, 4]))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled_loss, scaled = _accumulated(model, lambda **f: scaler.scale(loss_fn(**f)), micro_batches(inputs, [2, 4]))
    torch.testing.assert_close(scaled_loss / scaler.get_scale(), loss, **SPLIT_BATCH_TOL)
    for name, grad in plain.items():
        torch.testing.assert_close(scaled[name], 1024.0 * grad, **SPLIT_BATCH_TOL)


def test_open_clip_adapter_with_bias_multi_hot_labels_and_text_mask():
    pytest.importorskip("open_clip")
    from mgll_loss.adapters.open_clip import MultiGranularOpenCLIP

    from .adapter_models import OPEN_CLIP_CONTEXT, tiny_open_clip

    torch.manual_seed(0)
    model = MultiGranularOpenCLIP(tiny_open_clip(logit_bias=-5.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    batch = 9
    images = torch.randn(batch, 3, 32, 32, generator=g, dtype=torch.float64)
    texts = torch.randint(1, 400, (G, batch, OPEN_CLIP_CONTEXT), generator=g)
    labels = [(torch.rand(batch, 3, generator=g) < 0.5).long(), torch.randint(0, 2, (batch,), generator=g), None]
    mask = torch.rand(G, batch, generator=g) > 0.2
    loss_fn = MGLLLoss(match="jaccard")
    expected = _big_batch(model, loss_fn, dict(images=images, texts=texts), labels=labels, text_mask=mask)
    batches = [dict(images=images[rows], texts=texts[:, rows]) for rows in (slice(0, 3), slice(3, 5), slice(5, 9))]
    _assert_same(_accumulated(model, loss_fn, batches, labels=labels, text_mask=mask), expected)


def test_hugging_face_adapter_with_attention_mask():
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers < 5 fills CLIP's causal mask in float32: a float64 model overflows there")
    from mgll_loss.adapters.hf import MultiGranularHFCLIP

    from .adapter_models import HF_VOCAB, tiny_hf_clip

    torch.manual_seed(0)
    model = MultiGranularHFCLIP(tiny_hf_clip().double())
    g = torch.Generator().manual_seed(2)
    batch, length = 6, 5
    pixels = torch.randn(batch, 3, 16, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(3, len(HF_VOCAB), (G, batch, length), generator=g)
    attention = (torch.arange(length) < torch.randint(2, length + 1, (G, batch, 1), generator=g)).long()
    labels = [torch.randint(0, 2, (batch,), generator=g)] * G
    loss_fn = MGLLLoss()
    expected = _big_batch(
        model, loss_fn, dict(pixel_values=pixels, input_ids=ids, attention_mask=attention), labels=labels
    )
    batches = [
        dict(pixel_values=pixels[rows], input_ids=ids[:, rows], attention_mask=attention[:, rows])
        for rows in (slice(0, 4), slice(4, 6))
    ]
    _assert_same(_accumulated(model, loss_fn, batches, labels=labels), expected)


def _spawn(worker, world_size: int, tmp_path) -> None:
    mp.spawn(worker, args=(world_size, str(tmp_path / "store"), str(tmp_path)), nprocs=world_size, join=True)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_ranks_equal_one_process_with_the_global_effective_batch(tmp_path):
    world_size = len(workers.RANK_SPLITS)
    _spawn(workers.ddp_accumulation_worker, world_size, tmp_path)
    per_rank = [torch.load(tmp_path / f"accum_rank{r}.pt") for r in range(world_size)]
    torch.manual_seed(0)
    model, loss_fn = TwoTower(), MGLLLoss()
    inputs = effective_batch(sum(sum(sizes) for sizes in workers.RANK_SPLITS))
    expected_loss, expected = _big_batch(
        model,
        loss_fn,
        dict(images=inputs["images"], texts=inputs["texts"]),
        labels=inputs["labels"],
        text_mask=inputs["mask"],
    )
    torch.testing.assert_close(torch.stack([r["loss"] for r in per_rank]).mean(), expected_loss, **SPLIT_BATCH_TOL)
    for rank, result in enumerate(per_rank):  # DDP averaged the ranks' gradients: every rank holds the global ones
        assert result["grads"].keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(
                result["grads"][name],
                expected[name],
                **SPLIT_BATCH_TOL,
                msg=lambda m, rank=rank, name=name: f"{rank} {name}: {m}",
            )
        assert result["reductions"] == 1, "one all-reduce (one bucket) per effective step, no_sync for the others"


# --- bad input -------------------------------------------------------------------------------


def _setup(batch: int = 6):
    torch.manual_seed(0)
    inputs = effective_batch(batch)
    return TwoTower(), MGLLLoss(), inputs


def test_empty_micro_batch_list_is_rejected():
    model, loss_fn, _ = _setup()
    with pytest.raises(ValueError, match="micro_batches: expected at least one micro-batch"):
        accumulate_step(model, loss_fn, [])


@pytest.mark.parametrize("bad", [{"images": torch.zeros(1, 7)}, [torch.zeros(1, 7)], "batch"])
def test_micro_batches_of_the_wrong_type_are_rejected(bad):
    model, loss_fn, _ = _setup()
    with pytest.raises(TypeError, match=r"micro_batches(\[0\])?: expected"):
        accumulate_step(model, loss_fn, bad)


def test_micro_batches_whose_number_of_levels_differs_are_rejected():
    model, loss_fn, inputs = _setup()
    batches = micro_batches(inputs, [3, 3])
    batches[1]["texts"] = batches[1]["texts"][:2]
    with pytest.raises(
        ValueError, match=r"text_features: .*\(3, 3, 6\).*micro-batch 0 and \[\(2, 3, 6\)\] from micro-batch 1"
    ):
        accumulate_step(model, loss_fn, batches)


@pytest.mark.parametrize("rows", [4, 8])
def test_labels_whose_length_is_not_the_effective_batch_are_rejected(rows):
    model, loss_fn, inputs = _setup()
    labels = [torch.zeros(rows, dtype=torch.long), None, None]
    with pytest.raises(
        ValueError, match=rf"labels\[0\]: expected 6 rows, the effective batch \(3 \+ 3 images.*got shape \({rows},\)"
    ):
        accumulate_step(model, loss_fn, micro_batches(inputs, [3, 3]), labels=labels)


def test_text_mask_of_one_micro_batch_is_rejected():
    model, loss_fn, inputs = _setup()
    with pytest.raises(ValueError, match=r"text_mask: expected 6 entries .* got shape \(3, 3\)"):
        accumulate_step(model, loss_fn, micro_batches(inputs, [3, 3]), text_mask=inputs["mask"][:, :3])


def test_a_logit_scale_that_depends_on_the_micro_batch_is_rejected():
    class DataScale(TwoTower):
        def forward(self, images, texts):
            return {**super().forward(images, texts), "logit_scale": 10.0 + images.sum()}

    _, loss_fn, inputs = _setup()
    with pytest.raises(ValueError, match="logit_scale: expected the same value from every micro-batch"):
        accumulate_step(DataScale(), loss_fn, micro_batches(inputs, [3, 3]))


def test_model_output_without_features_and_output_dict_mismatch_are_rejected():
    model, loss_fn, inputs = _setup()
    batches = micro_batches(inputs, [3, 3])
    with pytest.raises(
        TypeError, match=r"model\(\*\*micro_batches\[0\]\): expected keys .* missing \['text_features'\]"
    ):
        accumulate_step(
            lambda **b: {"image_features": model(**b)["image_features"], "logit_scale": 1.0}, loss_fn, batches
        )
    with pytest.raises(TypeError, match="loss_fn: with output_dict=True expected a dict"):
        accumulate_step(
            model, lambda **f: loss_fn(**{k: v for k, v in f.items() if k != "output_dict"}), batches, output_dict=True
        )


# --- the examples' --accum-steps -------------------------------------------------------------


def test_examples_train_with_accum_steps_record_it_and_resume_exactly(tmp_path, capsys):
    pytest.importorskip("open_clip")
    pytest.importorskip("sklearn")
    from mgll_examples.cli import main, run
    from mgll_examples.config import parse_config

    common = [
        "--synthetic",
        "--data-dir",
        str(tmp_path / "data"),
        "--synthetic-size",
        "40",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--max-steps",
        "2",
        "--checkpoint-every",
        "1",
        "--warmup-steps",
        "1",
    ]
    flags = [*common, "--accum-steps", "3"]  # 12 of the 30 training images per step
    whole = run(parse_config("fundus", [*flags, "--output-dir", str(tmp_path / "whole")]))
    assert "effective batch 12 per step: --batch-size 4 x --accum-steps 3 x 1 process(es)" in capsys.readouterr().out
    state = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert state["config"]["accum_steps"] == 3 and state["step"] == 2 == whole["steps"]

    parts = ["--output-dir", str(tmp_path / "parts")]
    run(parse_config("fundus", [*flags, *parts, "--stop-after", "1"]))
    run(parse_config("fundus", [*flags, *parts, "--resume", str(tmp_path / "parts" / "last.pt")]))
    expected = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["history"]
    resumed = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)["history"]
    assert [r["step"] for r in resumed] == [1, 2]
    for a, b in zip(resumed, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), (a, b)

    capsys.readouterr()
    assert main("fundus", [*common, "--accum-steps", "2", *parts, "--resume", str(tmp_path / "parts" / "last.pt")]) == 2
    assert "saved with --accum-steps 3, this run has 2" in capsys.readouterr().err


# --- the benchmark -----------------------------------------------------------------------------


def test_benchmark_probe_measures_one_configuration(capsys):
    pytest.importorskip("open_clip")
    import json

    from benchmarks import accumulation as bench

    threads = torch.get_num_threads()
    try:
        bench._probe(json.dumps(["accumulate", 2, 8, 2, 1]))
    finally:
        torch.set_num_threads(threads)  # the probe sets 1 thread for its own (subprocess) use
    probe = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(probe["times"]) == 2 and all(t > 0 for t in probe["times"]) and probe["peak_mb"] >= 0


@pytest.mark.slow  # a fresh subprocess per configuration
def test_benchmark_writes_csv_and_plot(tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("matplotlib")
    import csv

    from benchmarks import accumulation as bench

    rows = bench.main(["--batch", "8", "--splits", "2", "--repeats", "1", "--out", str(tmp_path)])
    assert [(r["method"], r["micro_batches"], r["micro_batch"]) for r in rows] == [
        ("full", 1, 8),
        ("accumulate", 2, 4),
        ("naive", 2, 4),
    ]
    with open(tmp_path / "accumulation.csv") as handle:
        saved = list(csv.DictReader(handle))
    assert list(saved[0]) == bench.FIELDS and len(saved) == 3
    assert all(float(r["peak_mb"]) >= 0 and float(r["median_ms"]) > 0 for r in saved)
    assert (tmp_path / "accumulation.png").stat().st_size > 10_000


def test_a_model_whose_outputs_carry_no_gradient_is_rejected():
    # a plain loss.backward() raises here; accumulate_step must not return a loss and leave every .grad None
    model, loss_fn, inputs = _setup()

    def frozen(**batch: Any) -> dict[str, Any]:
        with torch.no_grad():
            return {key: value.detach() for key, value in model(**batch).items()}  # the bias is a Parameter

    with pytest.raises(ValueError, match="model: its outputs carry no gradient"):
        accumulate_step(frozen, loss_fn, micro_batches(inputs, [3, 3]))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["model", "loss_fn"])
def test_a_model_or_loss_that_is_not_callable_is_rejected(name):
    model, loss_fn, inputs = _setup()
    arguments = {"model": model, "loss_fn": loss_fn, name: None}
    with pytest.raises(TypeError, match=f"{name}: expected a callable"):
        accumulate_step(arguments["model"], arguments["loss_fn"], micro_batches(inputs, [6]))
