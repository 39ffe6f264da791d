"""Operators (kernel launches on a GPU) and host reads of one forward+backward of ``MGLLLoss`` per backend.

    python -m benchmarks.operators                       # B = 32, 512, 2048; G=3; class ids with duplicates
    python -m benchmarks.operators --batches 512 2048 --chunk-size 256

Counted by :class:`benchmarks.host_reads.OperatorLog` (views left out: they launch nothing), after
a warm-up call, under the CPU policy and under the accelerator policy that CUDA tensors get
(:func:`mgll_loss.devices.accelerator_policy`); host reads are counted under the accelerator
policy. The counts do not depend on D, so D is small (8). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence

import torch

from benchmarks.host_reads import OperatorLog
from benchmarks.run import make_inputs
from mgll_loss import MGLLLoss
from mgll_loss.devices import accelerator_policy

BACKENDS = ("batched", "dense", "chunked")


def count(backend: str, batch: int, chunk_size: int | None, accelerator: bool) -> OperatorLog:
    """The operators of one forward+backward after a warm-up call."""
    images, texts, scale, labels = make_inputs(batch, 8, 3, "cpu", torch.float32)
    loss = MGLLLoss(backend=backend, chunk_size=chunk_size if backend == "chunked" else None)
    log = OperatorLog()
    with accelerator_policy() if accelerator else contextlib.nullcontext():
        loss(images, texts, scale, labels=labels)
        with log:
            loss(images, texts, scale, labels=labels).backward()
    return log


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 512, 2048])
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of the chunked backend")
    args = parser.parse_args(argv)
    print("| backend | B | operators (CPU policy) | operators (accelerator policy) | host reads (accelerator policy) |")
    print("|---|---:|---:|---:|---|")
    for backend in BACKENDS:
        for batch in args.batches:
            cpu = count(backend, batch, args.chunk_size, accelerator=False)
            device = count(backend, batch, args.chunk_size, accelerator=True)
            reads = ", ".join(sorted({name for name, _ in device.host_reads})) or "none"
            print(f"| {backend} | {batch} | {cpu.total} | {device.total} | {reads} |")


if __name__ == "__main__":
    main()
