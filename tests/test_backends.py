"""Every backend against the plain reference (values and gradients, per dtype and device), and backend selection.

The chunked backend runs with tiny chunks (1 and 3 rows) so that every problem spans several
chunks, and the dense backend with tiny blocks so that its block loop is exercised too. Each
parity test runs on every device of the ``device`` fixture (tests/conftest.py). The triton
backend runs natively on CUDA tensors and on CPU tensors under ``TRITON_INTERPRET=1`` (set by the
top-level conftest.py), with 16 x 16 tiles on CPU, so odd shapes leave partial tiles; the
interpreter is slow, so the B=70 cases are left to the other backends when it is in use.
"""

from __future__ import annotations

import os
import re
import sys
from types import SimpleNamespace

import pytest
import torch

import mgll_loss.backends as backends
import mgll_loss.backends.chunked as fused
import mgll_loss.backends.policy as policy
from mgll_loss import MGLLLoss
from mgll_loss import functional as MF
from mgll_loss.backends import LossTerms, TermWeights, batched_weighted_terms, resolve_backend
from mgll_loss.backends.batched import batched_level_sums
from mgll_loss.devices import accelerator_policy
from mgll_loss.dispatch import prepare
from mgll_loss.distributed import World
from mgll_loss.global_batch import DistributedOptions
from mgll_loss.reduction import terms_from_sums
from mgll_loss.targets import LevelTargets

from .helpers import (
    LOW_PRECISION,
    check_grads,
    check_value,
    same_dtype_tol,
    skip_without_triton,
    to_device,
    unit_features,
)
from .parity_cases import (
    BIAS_VALUE,
    MGLL_OPTIONS,
    MULTI_CASES,
    SCALES,
    SINGLE_CASES,
    leaves,
    multi_level_case,
    run_mgll,
    single_inputs,
)
from .reference import ref_mgll, ref_pointwise, ref_soft_clip

BACKENDS = {
    "batched": dict(backend="batched"),
    "dense": dict(backend="dense"),
    "dense-tiny-blocks": dict(backend="dense"),
    "chunked-1": dict(backend="chunked", chunk_size=1),
    "chunked-3": dict(backend="chunked", chunk_size=3),
    "dense-accelerator": dict(backend="dense"),
    "chunked-3-accelerator": dict(backend="chunked", chunk_size=3),
    "triton": dict(backend="triton"),
}
SLOW_UNDER_INTERPRETER = {"G3_B70", "B70_class_ids", "B70_multihot_overlap"}


@pytest.fixture(params=list(BACKENDS))
def backend(request, monkeypatch):
    """Keyword arguments selecting a backend configuration.

    ``-accelerator``: the CPU tensors take the policy of CUDA tensors (one block per chunk,
    positives from tiles compared from label keys; value checks as asynchronous asserts).
    """
    if request.param == "dense-tiny-blocks":
        monkeypatch.setattr(policy, "BLOCK_BYTES", 1)  # one row per block
    if request.param.endswith("-accelerator"):
        with accelerator_policy():
            yield BACKENDS[request.param]
    else:
        yield BACKENDS[request.param]


def _skip_unsupported(backend, device, case=None):
    """Skip what a backend cannot run here: triton without the package, on CPU without the
    interpreter, and the B=70 cases under the (slow) interpreter."""
    if backend["backend"] != "triton":
        return
    skip_without_triton()
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type == "cpu" and not interpreting:
        pytest.skip("the triton backend runs on CPU tensors only under TRITON_INTERPRET=1")
    if interpreting and case in SLOW_UNDER_INTERPRETER:
        pytest.skip("B=70 is slow under the Triton interpreter; covered by the other backends")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("opt_index", range(len(MGLL_OPTIONS)))
@pytest.mark.parametrize("case", MULTI_CASES)
def test_mgll_matches_reference(backend, device, case, opt_index, dtype):
    _skip_unsupported(backend, device, case)
    scale, bias = SCALES[(opt_index + len(case)) % 3], BIAS_VALUE if opt_index % 2 else None
    use_module = opt_index % 2 == 0
    lib, ref, out, want = run_mgll(case, MGLL_OPTIONS[opt_index], scale, bias, dtype, use_module, backend, device)
    for key in want:
        check_value(out[key], want[key], dtype, key)
    sum(out.values()).backward()
    sum(want.values()).backward()
    check_grads(lib, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", SINGLE_CASES)
def test_single_level_terms_match_reference(backend, device, case, dtype):
    _skip_unsupported(backend, device, case)
    image64, text64, labels, targets, mask, match = single_inputs(case)
    scale = SCALES[len(case) % 3]
    lib, ref = leaves(image64, text64, scale, BIAS_VALUE, dtype, device)
    kw = dict(labels=labels, targets=targets, text_mask=mask, match=match)
    on_device = to_device(kw, device)
    out = MF.soft_clip_loss(lib["image"], lib["text"], lib["scale"], lib["bias"], **on_device, **backend)
    out = out + MF.pointwise_loss(
        lib["image"], lib["text"], lib["scale"], lib["bias"], **on_device, pointwise_target="row_normalized", **backend
    )
    want = ref_soft_clip(ref["image"], ref["text"], ref["scale"], ref["bias"], **kw)
    want = want + ref_pointwise(
        ref["image"], ref["text"], ref["scale"], ref["bias"], **kw, pointwise_target="row_normalized"
    )
    check_value(out, want, dtype)
    out.backward()
    want.backward()
    check_grads(lib, ref, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "f16"])
def test_low_precision_inputs_are_computed_in_float32(backend, device, dtype):
    _skip_unsupported(backend, device)
    image64, texts64, labels, targets, mask = multi_level_case("G3_tensor_labels_mask")
    lib, ref = leaves(image64, texts64, 14.3, BIAS_VALUE, dtype, device)
    call = dict(labels=labels, text_mask=mask)
    out = MF.mgll_loss(lib["image"], lib["text"], lib["scale"], lib["bias"], **to_device(call, device), **backend)
    want = ref_mgll(ref["image"], ref["text"], ref["scale"], ref["bias"], **call)
    assert out.dtype == torch.float32
    check_value(out, sum(want.values()), dtype)
    out.backward()
    sum(want.values()).backward()
    check_grads(lib, ref, dtype)
    assert lib["image"].grad.dtype == dtype


def test_huge_logits_stay_finite(backend, device):
    _skip_unsupported(backend, device)
    gen = torch.Generator().manual_seed(3)
    images = unit_features(9, 8, generator=gen, device=device, requires_grad=True)
    texts = unit_features(3, 9, 8, generator=gen, device=device, requires_grad=True)
    labels = to_device([torch.arange(9) % 4, None, (torch.rand(9, 3, generator=gen) < 0.5)], device)
    text_mask = (torch.rand(3, 9, generator=gen) > 0.3).to(device)
    out = MGLLLoss(**backend)(images, texts, 1e4, 5.0, labels=labels, text_mask=text_mask)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(images.grad).all() and torch.isfinite(texts.grad).all()


def _local_problem(dtype, device):
    """Rank 1 of 2 under local_loss: rows 4..8 of 9 images against every text; columns 5..9 of 9 per level."""
    gen = torch.Generator().manual_seed(5)
    images = unit_features(9, 6, dtype=dtype, generator=gen, device=device, requires_grad=True)
    texts = unit_features(27, 6, dtype=dtype, generator=gen, device=device, requires_grad=True)
    scale = torch.tensor(7.0, dtype=dtype, device=device, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=dtype, device=device, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 2], device=device)
    targets = (
        LevelTargets(9, 9),
        LevelTargets(9, 9, class_ids=ids),
        LevelTargets(9, 9, multi_hot=(torch.rand(9, 3, generator=gen) < 0.5).to(device), match="jaccard"),
    )
    masks = (None, torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool, device=device), None)
    problem = backends.LossInputs(
        images,
        texts,
        (9, 9, 9),
        scale,
        bias,
        targets,
        masks,
        dtype,
        row_range=slice(4, 9),
        column_ranges=(slice(5, 9),) * 3,
    )
    return problem, (images, texts, scale, bias)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("direction", ["to_mean", "from_mean"])
def test_local_problem_matches_dense(backend, device, dtype, direction):
    _skip_unsupported(backend, device)
    request = LossTerms(kl_direction=direction, pointwise_target="row_normalized")
    results = []
    for kwargs in (dict(backend="dense"), backend):
        problem, inputs = _local_problem(dtype, device)
        sums = resolve_backend(kwargs["backend"], problem)(problem, request, kwargs.get("chunk_size"))
        values = [
            sums.soft_clip_rows,
            sums.soft_clip_row_count,
            sums.soft_clip_cols,
            sums.soft_clip_col_count,
            sums.pointwise,
            sums.smooth_kl.reshape(1),
        ]
        weighted = sum((v * (k + 1)).sum() for k, v in enumerate(values) if v.requires_grad)
        results.append((torch.cat(values), torch.autograd.grad(weighted, inputs)))
    (want, want_grads), (got, got_grads) = results
    tol = same_dtype_tol(dtype)
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, **tol)


def test_second_backward_through_a_retained_graph(backend, device):
    _skip_unsupported(backend, device)
    image64, texts64, labels, _, mask = multi_level_case("G3_tensor_labels_mask")
    lib, _ = leaves(image64, texts64, 14.3, BIAS_VALUE, torch.float64, device)
    call = to_device(dict(labels=labels, text_mask=mask), device)
    out = MF.mgll_loss(lib["image"], lib["text"], lib["scale"], lib["bias"], **call, **backend)
    first = torch.autograd.grad(out, lib["image"], retain_graph=True)[0]
    second = torch.autograd.grad(out, lib["image"])[0]
    torch.testing.assert_close(first, second, rtol=1e-12, atol=1e-12)


def test_chunked_never_builds_a_full_logit_matrix(monkeypatch):
    """With 4-row chunks no matmul output has more than 4 rows of logits."""
    seen = []
    original = fused._logits

    def recording(scaled_images, *rest):
        seen.append(scaled_images.shape[0])
        return original(scaled_images, *rest)

    monkeypatch.setattr(fused, "_logits", recording)
    images = unit_features(30, 8, seed=1, requires_grad=True)
    texts = unit_features(3, 30, 8, seed=2, requires_grad=True)
    MGLLLoss(backend="chunked", chunk_size=4)(images, texts, 10.0, labels=[torch.arange(30) % 7] * 3).backward()
    assert seen and max(seen) == 4 and sum(seen) == 2 * 30  # forward and recomputing backward


def test_default_chunk_fits_the_budget():
    rows = fused.chunk_rows(98304, torch.float32)
    assert rows * 98304 * 4 <= fused.CHUNK_BUDGET_BYTES < (rows + 1) * 98304 * 4


def _sized_problem(rows):
    return SimpleNamespace(
        row_range=slice(0, rows),
        level_sizes=(rows,) * 3,
        compute_dtype=torch.float32,
        image_features=torch.empty(0),
    )


@pytest.mark.parametrize(
    "rows, expected", [(8, "batched"), (512, "batched"), (513, "dense"), (1000, "dense"), (200_000, "chunked")]
)
def test_auto_on_cpu_picks_batched_then_dense_then_chunked(rows, expected):
    assert resolve_backend("auto", _sized_problem(rows)) is backends._BACKENDS[expected]


@pytest.mark.parametrize("rows, expected", [(8, "batched"), (2048, "batched"), (9459, "batched"), (9460, "chunked")])
def test_auto_on_accelerators_picks_batched_then_chunked(rows, expected):
    """Fewest launches and no host reads: batched while its logits fit 1 GiB (G=3, B=N=9459 in float32)."""
    with accelerator_policy():
        assert resolve_backend("auto", _sized_problem(rows)) is backends._BACKENDS[expected]


def test_device_policy_on_cpu_walks_cache_sized_blocks_and_gathers_pairs():
    cpu = torch.device("cpu")
    dense = policy.device_policy(cpu, num_rows=2048, num_columns=6144, dtype=torch.float32)
    assert (dense.chunk_rows, dense.block_rows, dense.value_dependent) == (2048, 85, True)
    chunked = policy.device_policy(
        cpu, num_rows=2048, num_columns=6144, dtype=torch.float32, chunked=True, chunk_size=300
    )
    assert (chunked.chunk_rows, chunked.block_rows) == (300, 85)


def test_device_policy_on_accelerators_walks_one_block_per_chunk():
    with accelerator_policy():
        dense = policy.device_policy(torch.device("cpu"), num_rows=2048, num_columns=6144, dtype=torch.float32)
        budget = policy.device_policy(
            torch.device("cpu"), num_rows=200_000, num_columns=98304, dtype=torch.float32, chunked=True
        )
    assert (dense.chunk_rows, dense.block_rows, dense.value_dependent) == (2048, 2048, False)
    assert budget.chunk_rows == budget.block_rows == policy.chunk_rows(98304, torch.float32) == 682
    cuda = policy.device_policy(torch.device("cuda"), num_rows=2048, num_columns=6144, dtype=torch.float32)
    assert cuda == dense


def test_triton_on_cpu_tensors_without_the_interpreter_raises(monkeypatch):
    skip_without_triton()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    images, texts = unit_features(4, 8, seed=1), unit_features(3, 4, 8, seed=2)
    with pytest.raises(ValueError, match="triton.*CUDA tensors.*cpu.*TRITON_INTERPRET=1"):
        MGLLLoss(backend="triton")(images, texts, 10.0)


def test_triton_without_the_package_raises_at_construction(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(ValueError, match=r'triton.*pip install "mgll-loss\[triton\]"'):
        MGLLLoss(backend="triton")


@pytest.mark.parametrize("version", ["2.1.0", "3.4.0", "unknown"])
def test_triton_older_than_3_5_raises_at_construction(monkeypatch, version):
    """Older triton rejects the kernels (non-constexpr tl.arange before 3.2, fp64 tl.dot before 3.5): a clear error."""
    monkeypatch.setitem(sys.modules, "triton", SimpleNamespace(__version__=version))
    expected = f"needs triton>=3.5 (which torch>=2.9 comes with), found triton {version}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        MGLLLoss(backend="triton")
    monkeypatch.setitem(sys.modules, "triton", SimpleNamespace(__version__="3.5.0"))
    assert MGLLLoss(backend="triton").backend == "triton"


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(level_weights=[1.0, 0.5, 2.0], soft_clip_weight=0.3),
        dict(normalization="rows", pointwise_target="row_normalized", kl_direction="from_mean"),
        dict(soft_clip_weight=0.0, level_weights=[0.0, 1.0, 3.0]),
        dict(pointwise_weight=0.0, smooth_kl_weight=0.0),
    ],
)
def test_batched_terms_weighted_in_its_node_equal_its_sums_weighted_outside(options):
    """The batched backend divides and weights in its autograd node; a local loss across ranks does it outside."""
    term_weights = tuple(
        options.get(name, 1.0) for name in ("soft_clip_weight", "pointwise_weight", "smooth_kl_weight")
    )
    request = LossTerms(
        soft_clip=term_weights[0] > 0,
        pointwise=term_weights[1] > 0,
        smooth_kl=term_weights[2] > 0,
        **{k: v for k, v in options.items() if k in ("normalization", "pointwise_target", "kl_direction")},
    )
    images = unit_features(7, 5, seed=1, dtype=torch.float64, requires_grad=True)
    texts = unit_features(3, 7, 5, seed=2, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    labels = [torch.tensor([0, 0, 1, 2, 2, 2, -1]), None, torch.tensor([1, 0, 1, 0, 1, 0, 1])]
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 2] = mask[2, 5] = False
    prepared = prepare(
        images, texts, scale, None, labels, None, mask, single_level=False, match="exact", request=request,
        backend="batched", chunk_size=None, distributed=DistributedOptions(), kl_hint="",
        level_weights=options.get("level_weights"),
    )  # fmt: skip
    weights = TermWeights(*term_weights, levels=prepared.level_weights)
    problem = prepared.problem
    results = []
    for terms in (
        batched_weighted_terms(problem, request, weights),
        terms_from_sums(batched_level_sums(problem, request), problem, request, weights, World(), False),
    ):
        present = [t for t in terms if t is not None]
        assert [t is None for t in terms] == [w == 0 for w in term_weights]
        total = sum(t * (k + 1) for k, t in enumerate(present))
        results.append((torch.stack(present), torch.autograd.grad(total, (images, texts, scale))))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
