"""Interleaved A/B of ``MGLLLoss()`` against the package at another git revision, in one process.

    python -m benchmarks.compare --against 3c0d02d --batches 1024 2048 --rounds 9 --threads 1 --cpu-time

The package at ``--against`` is exported with ``git archive`` into a temporary folder and imported
beside this one under another name, so both run on the same inputs, in the same process, in
alternating order each round, next to open_clip ``ClipLoss`` x G, the bare matmuls and the naive
formulas (:mod:`benchmarks.baselines`). Forward+backward, float32, class ids with duplicates (as
:func:`benchmarks.run.make_inputs`). ``--cpu-time`` measures the thread's CPU time
(``time.thread_time``) instead of the wall clock: on a shared, loaded machine it leaves out the
waiting for a core (use it with ``--threads 1``). Prints medians, the 20th-80th percentiles and
the ratios, the per-round ratio of this package to the other too.
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.run import make_inputs, method, step

BASELINES = ("clip", "gemms", "naive")


def import_revision(revision: str, folder: Path) -> object:
    """The ``mgll_loss`` package at git ``revision``, imported as ``mgll_loss_<revision>`` from ``folder``."""
    name = f"mgll_loss_{revision.replace('-', '_').replace('.', '_')}"
    archive = subprocess.run(["git", "archive", revision, "mgll_loss"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "mgll_loss"
    for source in package.rglob("*.py"):  # absolute imports of the package, if any, point to the copy
        text = source.read_text()
        source.write_text(text.replace("from mgll_loss", f"from {name}").replace("import mgll_loss", f"import {name}"))
    package.rename(folder / name)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="a git revision of this repository")
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true", help="thread CPU time instead of the wall clock")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    import mgll_loss

    with tempfile.TemporaryDirectory() as folder:
        other = import_revision(args.against, Path(folder))
        for batch in args.batches:
            images, texts, scale, labels = make_inputs(batch, args.dim, args.levels, "cpu", torch.float32)
            inputs = (images, texts, scale)
            fns: dict[str, Callable] = {
                "this": _mgll(mgll_loss.MGLLLoss(), labels),
                args.against: _mgll(other.MGLLLoss(), labels),  # type: ignore[attr-defined]
            }
            fns.update({name: method(name, labels) for name in args.baselines})
            for fn in fns.values():  # warm-up
                step(fn, inputs)
                step(fn, inputs)
            times: dict[str, list[float]] = {name: [] for name in fns}
            for index in range(args.rounds):
                order = list(fns) if index % 2 == 0 else list(fns)[::-1]
                for name in order:
                    start = clock()
                    step(fns[name], inputs)
                    times[name].append(1e3 * (clock() - start))
            _report(batch, times, args.against)


def _mgll(loss: Callable, labels: list) -> Callable:
    return lambda images, texts, scale: loss(images, texts, scale, labels=list(labels))


def _report(batch: int, times: dict[str, list[float]], other: str) -> None:
    median = {name: statistics.median(values) for name, values in times.items()}
    cells = []
    for name, values in times.items():
        low, *_, high = statistics.quantiles(values, n=5) if len(values) > 1 else (values[0], values[0])
        cells.append(f"{name} {median[name]:.2f} ms [{low:.2f}-{high:.2f}]")
    print(f"B={batch}: " + ", ".join(cells))
    per_round = [a / b for a, b in zip(times["this"], times[other], strict=True)]
    print(
        f"  this / {other}: {median['this'] / median[other]:.3f} "
        f"(per-round median {statistics.median(per_round):.3f}, range {min(per_round):.3f}-{max(per_round):.3f})"
    )
    for name in BASELINES:
        if name in median:
            ours, theirs = median["this"] / median[name], median[other] / median[name]
            print(f"  this / {name}: {ours:.3f}; {other} / {name}: {theirs:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
