"""Every backend is GPU-shaped, proven on CPU: no host reads, operators that do not grow with the batch.

The CPU tensors run under :func:`mgll_loss.devices.accelerator_policy` (the policy and value
checks of CUDA tensors) inside :class:`benchmarks.host_reads.OperatorLog`, which sees every ATen
operator (a kernel launch each on a GPU). One step is a forward and a backward after a warm-up
call (the loss's first call checks that the features are unit-norm, once, on the host).

The documented exception: :class:`~mgll_loss.labels.LabelSets` (label ids without a vocabulary),
whose distinct ids are counted on the host (``torch.unique``) to lay out their multi-hot columns.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.host_reads import OperatorLog, host_read_reason
from mgll_loss import MGLLLoss
from mgll_loss.backends import LossInputs, LossTerms, resolve_backend
from mgll_loss.devices import accelerator_policy
from mgll_loss.labels import LabelSets
from mgll_loss.positives import LevelTargets, multi_hot_from_label_sets

from .helpers import unit_features

DIM = 8
LEVELS = 3
KINDS = (
    "class_ids",
    "none",
    "multi_hot_exact",
    "multi_hot_overlap",
    "multi_hot_jaccard",
    "targets",
    "text_mask",
    "bias",
)
BACKENDS = ("batched", "dense", "chunked", "triton")


def _triton_runs_here() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _skip_triton(backend):
    if backend == "triton" and not _triton_runs_here():
        pytest.skip("the triton backend runs on CPU tensors only under TRITON_INTERPRET=1")


def _case(kind: str, batch: int, seed: int = 0):
    """(images, texts, bias, call keywords, loss options) of one input kind: class ids have duplicates."""
    gen = torch.Generator().manual_seed(seed)
    images = unit_features(batch, DIM, generator=gen, requires_grad=True)
    texts = unit_features(LEVELS, batch, DIM, generator=gen, requires_grad=True)
    ids = torch.randint(0, max(batch // 4, 2), (batch,), generator=gen)
    hot = (torch.rand(batch, 5, generator=gen) < 0.4).long()
    call: dict = {}
    options: dict = {}
    bias = None
    if kind in ("class_ids", "bias"):
        call["labels"] = [ids, ids % 3, None]
        bias = torch.tensor(-1.0, requires_grad=True) if kind == "bias" else None
    elif kind.startswith("multi_hot"):
        call["labels"] = [hot, ids, None]
        options["match"] = kind.rsplit("_", 1)[1]
    elif kind == "targets":
        call["targets"] = [(ids[:, None] == ids[None]).float(), None, None]
    elif kind == "text_mask":
        call["labels"] = [ids, hot, None]
        call["text_mask"] = torch.rand(LEVELS, batch, generator=gen) < 0.8
    elif kind == "label_sets":
        call["labels"] = [LabelSets(torch.where(hot.bool(), torch.arange(5) * 7, -1)), None, None]
    return images, texts, bias, call, options


def _step_log(backend: str, kind: str, batch: int, chunk_size: int | None = None) -> OperatorLog:
    """The operators of one forward+backward of ``MGLLLoss`` under the accelerator policy (after a warm-up)."""
    images, texts, bias, call, options = _case(kind, batch)
    loss = MGLLLoss(backend=backend, chunk_size=chunk_size, **options)
    log = OperatorLog()
    with accelerator_policy():
        loss(images, texts, 10.0, bias, **call)
        with log:
            loss(images, texts, 10.0, bias, **call).backward()
    return log


def _local_problem(rows: int, world: int, kind: str = "class_ids") -> tuple[LossInputs, list[torch.Tensor]]:
    """The last rank's problem of a local loss: ``rows`` local rows against ``rows * world`` global columns."""
    batch = rows * world
    gen = torch.Generator().manual_seed(3)
    images = unit_features(batch, DIM, generator=gen, requires_grad=True)
    texts = unit_features(LEVELS * batch, DIM, generator=gen, requires_grad=True)
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-1.0, requires_grad=True)
    ids = torch.randint(0, max(batch // 4, 2), (batch,), generator=gen)
    hot = (torch.rand(batch, 4, generator=gen) < 0.4).long()
    targets = (
        LevelTargets(batch, batch, class_ids=ids),
        LevelTargets(batch, batch, multi_hot=hot, match="jaccard" if kind == "multi_hot" else "exact"),
        LevelTargets(batch, batch),
    )
    masks = (None, torch.rand(batch, generator=gen) < 0.8, None) if kind == "text_mask" else (None,) * LEVELS
    start = batch - rows
    problem = LossInputs(
        images,
        texts,
        (batch,) * LEVELS,
        scale,
        bias,
        targets,
        masks,
        torch.float32,
        row_range=slice(start, batch),
        column_ranges=(slice(start, batch),) * LEVELS,
    )
    return problem, [images, texts, scale, bias]


def _local_step_log(backend: str, rows: int, world: int, kind: str = "class_ids", chunk_size=None) -> OperatorLog:
    """The operators of a backend's sums of a local problem and their backward, under the accelerator policy."""
    problem, leaves = _local_problem(rows, world, kind)
    log = OperatorLog()
    with accelerator_policy(), log:
        sums = resolve_backend(backend, problem)(problem, LossTerms(), chunk_size)
        fields = (sums.soft_clip_rows, sums.soft_clip_cols, sums.pointwise, sums.smooth_kl)
        torch.autograd.backward([field.sum() for field in fields if field is not None])
    return log


# -------------------------------------------------------------------------------------------------
# no host reads
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_reads(backend, kind):
    _skip_triton(backend)
    log = _step_log(backend, kind, 24, chunk_size=10 if backend == "chunked" else None)
    assert log.total > 0 and log.host_reads == []


@pytest.mark.parametrize("kind", ["class_ids", "multi_hot", "text_mask"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_reads_in_a_local_loss(backend, kind):
    _skip_triton(backend)
    log = _local_step_log(backend, 8, 3, kind, chunk_size=5 if backend == "chunked" else None)
    assert log.total > 0 and log.host_reads == []


@pytest.mark.parametrize("backend", ["batched", "dense"])
def test_label_sets_read_the_host_only_to_lay_out_their_ids(backend):
    """The documented exception: LabelSets count their distinct ids, and nothing else reads the host."""
    images, texts, bias, call, options = _case("label_sets", 24)
    with OperatorLog() as layout:
        multi_hot_from_label_sets(call["labels"][0])
    log = _step_log(backend, "label_sets", 24)
    assert layout.host_reads and sorted(set(log.host_reads)) == sorted(set(layout.host_reads))


def test_the_cpu_policy_keeps_its_host_reads():
    """Outside the accelerator policy the dense backend gathers positive pairs (a host read on CPU, free there)."""
    images, texts, bias, call, options = _case("class_ids", 24)
    loss = MGLLLoss(backend="dense")
    loss(images, texts, 10.0, **call)
    with OperatorLog() as log:
        loss(images, texts, 10.0, **call).backward()
    assert ("repeat_interleave", "repeat_interleave without output_size") in log.host_reads


def test_host_read_reasons():
    x = torch.tensor([0.0, 2.0, 0.0])
    mask = x > 0
    with OperatorLog() as log:
        x.sum().item()
        x.nonzero()
        x[mask]
        x[torch.tensor([0, 2])]
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
        torch.repeat_interleave(torch.tensor([1, 2]))
        x.masked_fill(mask, 1.0)
        torch._assert_async(mask.any())
    names = [name for name, _ in log.host_reads]
    assert names == ["_local_scalar_dense", "nonzero", "index", "repeat_interleave"]
    assert host_read_reason(torch.ops.aten.add.Tensor, (x, x), {}) is None


# -------------------------------------------------------------------------------------------------
# operators that do not grow with the batch
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["batched", "dense"])
def test_operators_do_not_grow_with_the_batch(backend):
    counts = [_step_log(backend, "class_ids", batch).counts for batch in (512, 2048)]
    assert counts[0] == counts[1]


@pytest.mark.parametrize("backend", ["batched", "dense"])
def test_operators_of_a_local_loss_do_not_grow_with_the_batch(backend):
    """256 local rows against 2048 global columns (8 ranks) issue what 64 against 512 do."""
    counts = [_local_step_log(backend, rows, 8).counts for rows in (64, 256)]
    assert counts[0] == counts[1]


def test_chunked_operators_grow_with_the_chunks_only():
    """Operators = a + b * chunks, with the same a and b at B=512 and B=2048."""
    for batch in (512, 2048):
        totals = [_step_log("chunked", "class_ids", batch, chunk_size=batch // chunks).total for chunks in (1, 2, 4)]
        per_chunk = totals[1] - totals[0]
        assert per_chunk > 0 and totals[2] - totals[1] == 2 * per_chunk
        if batch == 512:
            expected = totals
        assert totals == expected


def test_chunked_local_operators_grow_with_the_chunks_only():
    totals = {
        (rows, chunks): _local_step_log("chunked", rows, 8, chunk_size=rows // chunks).total
        for rows in (64, 256)
        for chunks in (1, 2, 4)
    }
    for rows in (64, 256):
        one, two, four = (totals[rows, chunks] for chunks in (1, 2, 4))
        assert two - one > 0 and four - two == 2 * (two - one)
        assert (one, two, four) == tuple(totals[64, chunks] for chunks in (1, 2, 4))
