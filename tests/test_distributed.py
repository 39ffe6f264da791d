"""Proof that the distributed losses equal the single-process loss of the global batch.

Ranks are spawned on CPU with gloo. Per-rank losses must average to the global loss, and the
per-rank gradients averaged as DDP does (parameters shared by every rank: the mean; each rank's
own feature rows: their gradient divided by world_size) must equal the single-process gradients,
in float64 to 1e-9.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from mgll_loss import MGLLLoss

from . import distributed_workers as workers
from .helpers import SPLIT_BATCH_TOL

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _spawn(worker, world_size: int, tmp_path) -> None:
    mp.spawn(worker, args=(world_size, str(tmp_path / "store"), str(tmp_path)), nprocs=world_size, join=True)


@pytest.fixture(scope="module", params=[2, 3], ids=["2_ranks", "3_ranks"])
def rank_results(request, tmp_path_factory):
    world_size = request.param
    tmp_path = tmp_path_factory.mktemp(f"world{world_size}")
    _spawn(workers.loss_worker, world_size, tmp_path)
    return world_size, [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]


@pytest.mark.parametrize("scenario", workers.SCENARIOS, ids=[s["name"] for s in workers.SCENARIOS])
def test_ranks_reproduce_the_single_process_loss_and_gradients(rank_results, scenario):
    world_size, per_rank = rank_results
    results = [r[scenario["name"]] for r in per_rank]
    sizes = workers.local_sizes(world_size, scenario.get("uneven", False))
    batch = workers.global_batch(scenario, sum(sizes))
    expected = workers.run_loss(scenario, batch, workers.build_loss(scenario, distributed=False))

    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), expected["loss"], **SPLIT_BATCH_TOL)
    for name in ("log_scale", "bias"):
        torch.testing.assert_close(torch.stack([r[name] for r in results]).mean(), expected[name], **SPLIT_BATCH_TOL)
    images = torch.cat([r["images"] for r in results]) / world_size
    texts = torch.cat([r["texts"] for r in results], dim=-2) / world_size
    torch.testing.assert_close(images, expected["images"], **SPLIT_BATCH_TOL)
    torch.testing.assert_close(texts, expected["texts"], **SPLIT_BATCH_TOL)


def test_distributed_data_parallel_gradients_match_single_process(tmp_path):
    world_size = 2
    _spawn(workers.ddp_worker, world_size, tmp_path)
    per_rank = [torch.load(tmp_path / f"ddp_rank{r}.pt") for r in range(world_size)]
    torch.manual_seed(0)
    model = workers.TinyTwoTower()
    sizes = workers.local_sizes(world_size, uneven=True)
    expected = workers.ddp_gradients(model, workers.ddp_inputs(sum(sizes)), MGLLLoss())
    for grads in per_rank:  # DDP has already averaged: every rank holds the same gradients
        assert grads.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(
                grads[name], expected[name], **SPLIT_BATCH_TOL, msg=lambda m, name=name: f"{name}: {m}"
            )


def test_open_clip_adapter_in_ddp_with_open_clip_flags_matches_single_process(tmp_path):
    pytest.importorskip("open_clip")
    world_size = 2
    _spawn(workers.adapter_ddp_worker, world_size, tmp_path)
    expected = workers.adapter_gradients(world_size)
    for rank in range(world_size):
        grads = torch.load(tmp_path / f"adapter_rank{rank}.pt")
        assert grads.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(
                grads[name], expected[name], **SPLIT_BATCH_TOL, msg=lambda m, name=name: f"{name}: {m}"
            )


def test_options_are_no_ops_without_a_process_group():
    images = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(3, 6, 4, dtype=torch.float64), dim=-1)
    plain = MGLLLoss()(images, texts, 10.0)
    assert torch.equal(MGLLLoss(local_loss=True, gather_with_grad=True)(images, texts, 10.0), plain)
    assert torch.equal(MGLLLoss(gather_with_grad=True, rank=0, world_size=1)(images, texts, 10.0), plain)


def test_local_loss_without_gather_with_grad_is_rejected():
    with pytest.raises(ValueError, match="local_loss=True needs gather_with_grad=True"):
        MGLLLoss(local_loss=True)


def test_world_size_without_process_group_is_rejected():
    images = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    with pytest.raises(ValueError, match="world_size: 2 ranks need an initialised torch.distributed process group"):
        MGLLLoss(world_size=2, rank=0)(images, images[None].expand(2, -1, -1), 10.0)


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 1), (0, 0)])
def test_invalid_rank_is_rejected(rank, world_size):
    images = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        MGLLLoss(rank=rank, world_size=world_size)(images, images[None].expand(2, -1, -1), 10.0)


def test_non_bool_distributed_flags_are_rejected():
    with pytest.raises(TypeError, match="local_loss"):
        MGLLLoss(local_loss=1)


def test_torchrun_example_runs_on_cpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(root / "examples" / "train_distributed_toy.py"),
        "--steps",
        "3",
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines() if "global-batch loss" in line]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_a_rank_with_bad_input_stops_every_rank_instead_of_hanging(tmp_path):
    world_size = 2
    _spawn(workers.failing_worker, world_size, tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"failing_rank{r}.pt") for r in range(world_size))
    assert rank1["bad_value_on_rank_1"].startswith("ValueError: targets[0]: target values must lie in [0, 1]")
    assert rank0["bad_value_on_rank_1"].startswith("ValueError: rank(s) [1] rejected their inputs")
    for outcome in (rank0["levels_differ"], rank1["levels_differ"]):
        assert "every rank must pass the same number of levels G, got G=[3, 2]" in outcome
    # the ranks stay in step: the next call runs everywhere and averages to a finite loss
    assert isinstance(rank0["valid_afterwards"], float) and isinstance(rank1["valid_afterwards"], float)
