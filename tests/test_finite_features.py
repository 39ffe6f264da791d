"""The finiteness check of the features is exact for every dtype and size (issue 21, item 1).

It used to sum every feature in the input dtype: finite float16 features whose sum passed 65504
(large chunked, accumulated or gathered batches) were refused as "NaN or inf", and on CUDA that
false check is a device-side assertion that ends the process. These tests pin the exact check:
no false positive where a naive sum overflows, no false negative for any mix of NaN and infinities,
and an error that names the argument holding them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgll_loss import MGLLLoss, SoftCLIPLoss
from mgll_loss import functional as MF
from mgll_loss.validation import check_finite_features

from .helpers import literal_regex, skip_without_triton, unit_features

BACKENDS = ["batched", "dense", "chunked", "triton"]


def _skip_without_triton(backend: str) -> None:
    if backend == "triton":
        skip_without_triton()


def _naive_sum_overflows(*tensors: torch.Tensor) -> bool:
    """What the old check computed: the sum of every feature in the input dtype."""
    return not bool(torch.isfinite(sum(t.sum() for t in tensors)))


def test_the_issue_example_fp16_at_a_large_batch_passes():
    """Unit-norm float16 features with outlier dimensions, as CLIP embeddings have, B=20000."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(20000, 512, generator=gen) * 0.02
    base[:, :4] += 0.5
    images = F.normalize(base, dim=-1).half()
    texts = F.normalize(base + 0.01 * torch.randn(20000, 512, generator=gen), dim=-1).half()
    assert _naive_sum_overflows(images, texts)  # the input that used to be refused
    check_finite_features(images, texts, texts)


@pytest.mark.parametrize(
    "dtype, value",
    [
        (torch.float16, 60000.0),  # float16 max 65504
        (torch.bfloat16, 3.0e38),  # bfloat16 max ~3.39e38
        (torch.float32, 3.0e38),
        (torch.float64, 1.5e308),
    ],
    ids=["float16", "bfloat16", "float32", "float64"],
)
def test_finite_features_whose_sum_overflows_pass(dtype, value):
    images = torch.full((3, 4), value, dtype=dtype)
    images[0, 0] = -value  # both signs: no overflow of a min or a max either
    texts = torch.full((2, 3, 4), value, dtype=dtype)
    assert _naive_sum_overflows(images, texts)
    check_finite_features(images, texts, texts.reshape(6, 4))
    check_finite_features(images, list(texts), texts.reshape(6, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "bad, counts",
    [
        ([float("nan")], "1 NaN and 0 inf"),
        ([float("inf")], "0 NaN and 1 inf"),
        ([float("-inf")], "0 NaN and 1 inf"),
        ([float("inf"), float("-inf")], "0 NaN and 2 inf"),  # +inf and -inf would cancel to NaN in a sum
        ([float("nan"), float("inf"), float("-inf")], "1 NaN and 2 inf"),
    ],
    ids=["nan", "inf", "-inf", "inf-and-minus-inf", "all"],
)
@pytest.mark.parametrize("where", ["image_features", "text_features[0]", "text_features[2]"])
def test_any_non_finite_value_is_found_and_named(dtype, bad, counts, where):
    images, texts = unit_features(5, 6, dtype=dtype, seed=1), list(unit_features(3, 5, 6, dtype=dtype, seed=2))
    target = images if where == "image_features" else texts[int(where[-2])]
    for k, value in enumerate(bad):
        target[1 + k, 2] = value
    stacked = torch.cat(texts)
    with pytest.raises(
        ValueError, match=literal_regex(where, "expected finite values, got", counts, "first at [1, 2]")
    ):
        check_finite_features(images, texts, stacked)


def test_every_culprit_is_named():
    images, texts = unit_features(4, 6, seed=1), unit_features(2, 4, 6, seed=2)
    images[3, 0] = float("nan")
    texts[1, 0, 5] = float("inf")
    with pytest.raises(ValueError) as error:
        check_finite_features(images, texts, texts.reshape(8, 6))
    assert str(error.value) == (
        "image_features: expected finite values, got 1 NaN and 0 inf (first at [3, 0]); "
        "text_features: expected finite values, got 0 NaN and 1 inf (first at [1, 0, 5])"
    )


def _large_finite(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Finite features of magnitude ~200: a few hundred of them overflow a float16 sum."""
    gen = torch.Generator().manual_seed(seed)
    return (200.0 + torch.randn(*shape, generator=gen)).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_backend_takes_finite_low_precision_features_whose_sum_overflows(backend, dtype):
    """Through the public functions, a list of text levels, every backend: the loss equals the float32 loss."""
    _skip_without_triton(backend)
    images = _large_finite(8, 64, dtype=dtype, seed=1)
    texts = [_large_finite(8, 64, dtype=dtype, seed=2 + g) for g in range(2)]
    if dtype == torch.float16:
        assert _naive_sum_overflows(images, *texts)
    scale = 1e-6  # logits of a few units from features of norm ~1600
    loss = MF.mgll_loss(images, texts, scale, backend=backend)
    expected = MF.mgll_loss(images.float(), [t.float() for t in texts], scale, backend=backend)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    single = MF.soft_clip_loss(images, texts[0], scale, backend=backend)
    torch.testing.assert_close(single, MF.soft_clip_loss(images.float(), texts[0].float(), scale, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_refuses_a_nan_in_a_list_of_levels(backend):
    _skip_without_triton(backend)
    images, texts = unit_features(4, 6, seed=1), list(unit_features(3, 4, 6, seed=2))
    texts[1][2, 3] = float("nan")
    with pytest.raises(ValueError, match=literal_regex("text_features[1]: expected finite values", "1 NaN")):
        MGLLLoss(backend=backend)(images, texts, 10.0)
    with pytest.raises(ValueError, match=literal_regex("text_features: expected finite values", "1 NaN")):
        SoftCLIPLoss(backend=backend)(images, texts[1], 10.0)
